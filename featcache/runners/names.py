"""Names as a user types them -> names as the store keeps them.

``bobx extract`` stores features and records under the catalogs' canonical names:
``--backbone random_resnet18`` writes ``rand_resnet18``, ``--dataset roxford`` writes
``roxford5k``. Every other command accepts the same spellings and resolves them here,
the way extraction does: a catalog alias becomes its canonical name (a suffix such as
``@block-4`` is kept), and a name the catalog does not know (features or results
imported under a name of your own) is used as given. A name the store already holds
wins over the catalog, so imported names that happen to be aliases keep working.
"""

from __future__ import annotations

from collections.abc import Sequence

from featcache.errors import UnknownNameError
from featcache.store import Store


def canonical_backbone(name: str) -> str:
    """``dino_vitb`` -> ``dino_vitb_in1k``, ``random_resnet18@block-2`` ->
    ``rand_resnet18@block-2``; names outside the catalog unchanged."""
    from featcache.backbones import get_backbone_spec

    base, at, suffix = name.partition("@")
    try:
        spec = get_backbone_spec(base)
    except UnknownNameError:
        return name
    return spec.name + at + suffix


def canonical_dataset(name: str) -> str:
    """``roxford`` -> ``roxford5k``, ``in1k`` -> ``imagenet``; names outside the catalog
    unchanged."""
    from featcache.datasets import get_dataset_spec

    try:
        return get_dataset_spec(name).name
    except UnknownNameError:
        return name


def stored_datasets(store: Store) -> list[str]:
    """Every dataset with at least one feature set in the store (any backbone, any state)."""
    found = {
        dataset
        for backbone in store.objects.list_groups("features")
        for dataset in store.objects.list_groups(f"features/{backbone}")
    }
    return sorted(found)


def resolve_dataset(store: Store, name: str) -> str:
    """The store's name for dataset ``name``: as given if the store holds it, else canonical."""
    if name in stored_datasets(store):
        return name
    return canonical_dataset(name)


def complete_backbones(store: Store, dataset: str) -> list[str]:
    """Backbones with at least one complete feature set of ``dataset``, sorted."""
    return sorted(
        backbone
        for backbone in store.objects.list_groups("features")
        if store.complete_splits(backbone, dataset)
    )


def resolve_backbones(
    store: Store, backbone: str | Sequence[str] | None, dataset: str
) -> list[str]:
    """The store's names for ``backbone`` (one name or several) on ``dataset``.

    ``None`` or ``"all"``: every backbone with complete features of ``dataset``. A name the
    store holds for ``dataset`` is used as is, any other through :func:`canonical_backbone`.
    """
    if backbone is None or backbone == "all" or (not isinstance(backbone, str) and not backbone):
        found = complete_backbones(store, dataset)
        if not found:
            raise UnknownNameError(
                "dataset",
                dataset,
                stored_datasets(store),
                hint="No backbone has complete features for it; run `bobx extract --backbone "
                f"B --dataset {dataset}` (or `bobx import-features`) first.",
            )
        return found
    names = [backbone] if isinstance(backbone, str) else list(backbone)
    present = set(store.objects.list_groups("features"))
    out: list[str] = []
    for name in names:
        if not (name in present and dataset in store.objects.list_groups(f"features/{name}")):
            name = canonical_backbone(name)
        if name not in out:
            out.append(name)
    return out


def with_canonical(names: Sequence[str] | None, kind: str) -> list[str] | None:
    """Record filters: each name as typed plus its canonical name (``kind`` is
    ``"backbone"`` or ``"dataset"``); None for no filter."""
    if not names:
        return None
    canonical = canonical_backbone if kind == "backbone" else canonical_dataset
    return list(dict.fromkeys(n for name in names for n in (name, canonical(name))))
