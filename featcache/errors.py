"""The one error hierarchy of bobx, re-exported for store and CLI code.

The hierarchy itself lives in :mod:`evaluators.errors`: the pure metric layer raises
these errors too, and it must not import the store package (data flows one way).
Importing from here keeps working for every user of ``featcache.errors``.
"""

from evaluators.errors import (
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
    suggest,
)

__all__ = [
    "BobxError",
    "DataError",
    "IncompleteError",
    "IntegrityError",
    "InvalidNameError",
    "ManifestError",
    "ShapeError",
    "StaleCacheError",
    "StoreError",
    "UnavailableError",
    "UnknownNameError",
    "suggest",
]
