"""Cross-domain class alignment and the seeded stratified source split."""

from __future__ import annotations

import logging

import numpy as np

from ddc.data.domains import Domain
from ddc.data.images import DataError

log = logging.getLogger(__name__)


def mapped_names(names: list, class_map: dict, key: str, where: str = "") -> list:
    """The sorted class names after ``class_map``.

    Raises:
        DataError: the map names a class that is not in ``names``.
    """
    missing = sorted(set(class_map) - set(names))
    if missing:
        raise DataError(f"{key}.class_map: class {missing[0]!r} not found in {where or key} "
                        f"(its classes: {', '.join(names)})")
    return sorted({class_map.get(c, c) for c in names})


def shared_classes(source_names: list, target_names: list, source_map: dict, target_map: dict,
                   source_where: str = "", target_where: str = "") -> list:
    """The classes both domains have after their class maps, checked by name only (so a
    folder tree can be checked before any image is decoded).

    Raises:
        DataError: a map names a class the domain lacks, a target map value is not a source
            class, or the domains share no class.
    """
    src = mapped_names(source_names, source_map, "data.source", source_where)
    unknown = sorted(set(target_map.values()) - set(src))
    if unknown:
        raise DataError(f"data.target.class_map: maps onto {unknown[0]!r}, which is not a source "
                        f"class (source classes: {', '.join(src)})")
    tgt = mapped_names(target_names, target_map, "data.target", target_where)
    shared = sorted(set(src) & set(tgt))
    if not shared:
        raise DataError(f"no class shared by {source_where or 'data.source'} ({', '.join(src)}) "
                        f"and {target_where or 'data.target'} ({', '.join(tgt)}); "
                        "set data.target.class_map")
    return shared


def apply_class_map(domain: Domain, class_map: dict, key: str) -> Domain:
    """Renames a domain's classes by ``class_map`` (many-to-one allowed), merging labels.

    Raises:
        DataError: the map names a class the domain does not have.
    """
    mapped_names(domain.class_names, class_map, key, domain.name)
    mapped = [class_map.get(c, c) for c in domain.class_names]
    names = sorted(set(mapped))
    remap = np.array([names.index(m) for m in mapped], np.int32)
    return Domain(domain.name, domain.images, remap[domain.labels], names, domain.paths,
                  domain.skipped)


def _restrict(domain: Domain, names: list) -> Domain:
    keep_old = [domain.class_names.index(n) for n in names]
    lut = np.full(len(domain.class_names), -1, np.int32)
    lut[keep_old] = np.arange(len(names), dtype=np.int32)
    new = lut[domain.labels]
    idx = np.flatnonzero(new >= 0)
    sub = domain.subset(idx)
    sub.labels = new[idx]
    sub.class_names = list(names)
    return sub


def align_domains(source: Domain, target: Domain, source_map: dict, target_map: dict):
    """Maps both domains onto their shared classes.

    Classes present in only one domain are dropped from both and logged. A class map value
    must name a class of the source domain (after the source's own map).

    Returns:
        (source, target, class_names, dropped) where ``dropped`` maps a domain key to the
        class names removed from it.
    """
    shared = shared_classes(source.class_names, target.class_names, source_map, target_map,
                            source.name, target.name)
    source = apply_class_map(source, source_map, "data.source")
    target = apply_class_map(target, target_map, "data.target")
    dropped = {
        "data.source": sorted(set(source.class_names) - set(shared)),
        "data.target": sorted(set(target.class_names) - set(shared)),
    }
    for key, names in dropped.items():
        if names:
            log.warning("%s: dropping classes without a counterpart: %s", key, ", ".join(names))
    return _restrict(source, shared), _restrict(target, shared), shared, dropped


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (train, held-out) with ``fraction`` of each class held out.

    Each class keeps at least one training image; the split depends only on ``seed``.
    """
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        k = min(k, len(idx) - 1)
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))
