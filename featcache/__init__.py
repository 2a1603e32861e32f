"""featcache: extraction and the Zarr v3 feature / result store of bobx.

>>> import featcache
>>> store = featcache.open_store("memory://doc")
>>> store.record(backbone="resnet50", task="classification", dataset="cifar100",
...              metric="top1", value=81.2).metric
'top1'
"""

from featcache.errors import (
    BobxError,
    DataError,
    IncompleteError,
    IntegrityError,
    InvalidNameError,
    ManifestError,
    ShapeError,
    StaleCacheError,
    StoreError,
    UnavailableError,
    UnknownNameError,
)
from featcache.records import Record, make_record
from featcache.store import FeatureSet, FeatureWriter, Store, open_store

__all__ = [
    "BobxError",
    "DataError",
    "FeatureSet",
    "FeatureWriter",
    "IncompleteError",
    "IntegrityError",
    "InvalidNameError",
    "ManifestError",
    "Record",
    "ShapeError",
    "StaleCacheError",
    "Store",
    "StoreError",
    "UnavailableError",
    "UnknownNameError",
    "make_record",
    "open_store",
]
