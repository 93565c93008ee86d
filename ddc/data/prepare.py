"""From a config to the three arrays a run uses: source train, source validation, target."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ddc import paths
from ddc.align import active_classes, needs_target
from ddc.config import Config
from ddc.data.align import align_domains, shared_classes, stratified_split
from ddc.data.domains import Domain, folder_root, list_class_folders, load_domain
from ddc.data.images import DataError

log = logging.getLogger(__name__)


@dataclass
class RunData:
    source_train: Domain
    source_val: Domain
    target: Domain          # all target images: unlabelled for training, labels for reports only
    class_names: list
    dropped: dict           # domain key -> classes dropped for lack of a counterpart
    skipped: list           # files skipped as unreadable (only with data.skip_bad_files)


def data_root_from(arg: str | None) -> Path:
    """The data root: ``--data-root``, else ``$DDC_DATA_ROOT``, else ``./data``."""
    return paths.data_root(arg)


def prepare_data(cfg: Config, data_root: Path, cache_dir: Path | None = None) -> RunData:
    """Loads, aligns and splits the configured domains.

    Raises:
        DataError: with the folder, file or key that is wrong, before any training.
    """
    d = cfg.data
    kw = dict(cache=d.cache, cache_dir=Path(d.cache_dir) if d.cache_dir else cache_dir,
              workers=d.decode_workers, skip_bad=d.skip_bad_files)
    listings = _check_folders(cfg, data_root)  # cheap checks first: decoding may take minutes
    source = load_domain(d.source, "data.source", data_root, d.image_size, d.channels,
                         classes=listings.get("data.source"), **kw)
    target = load_domain(d.target, "data.target", data_root, d.image_size, d.channels,
                         classes=listings.get("data.target"), **kw)
    source, target, names, dropped = align_domains(source, target, d.source.class_map,
                                                   d.target.class_map)
    train_idx, val_idx = stratified_split(source.labels, d.val_fraction, cfg.seed)
    train, val = source.subset(train_idx, "source_train"), source.subset(val_idx, "source_val")
    _check_batch(cfg, len(train), len(target))
    if d.val_fraction > 0 and not len(val):
        log.warning("data.val_fraction=%g leaves no source validation image (one image per "
                    "class stays in training); source validation accuracy will be null",
                    d.val_fraction)
    log.info("classes (%d): %s", len(names), ", ".join(names))
    log.info("source: %d train, %d validation; target: %d (unlabelled in training)",
             len(train), len(val), len(target))
    return RunData(train, val, target, names, dropped, source.skipped + target.skipped)


def _check_batch(cfg: Config, n_train: int, n_target: int) -> None:
    """A training stream needs one full batch (batches drop their remainder)."""
    b = cfg.train.batch_size
    parts = [(n_train, "data.source (training split)")]
    if needs_target(active_classes(cfg.align)):  # else no target stream exists
        parts.append((n_target, "data.target"))
    for n, key in parts:
        if n < b:
            raise DataError(f"{key}: {n} images, fewer than one batch (train.batch_size={b})")


def _check_folders(cfg: Config, data_root: Path) -> dict:
    """Lists folder domains and checks roots, class maps, shared classes and the batch size by
    name and count, before any image is decoded. Returns the listings by domain key."""
    d = cfg.data
    listings = {key: list_class_folders(folder_root(dom, data_root), f"{key}.root")
                for key, dom in (("data.source", d.source), ("data.target", d.target))
                if dom.root}
    if len(listings) < 2:
        return listings
    src, tgt = listings["data.source"], listings["data.target"]
    src_n = {c: min(len(f), d.source.max_per_class or len(f)) for c, f in src.items()}
    tgt_n = {c: min(len(f), d.target.max_per_class or len(f)) for c, f in tgt.items()}
    shared = shared_classes(sorted(src), sorted(tgt), d.source.class_map, d.target.class_map,
                            str(folder_root(d.source, data_root)),
                            str(folder_root(d.target, data_root)))
    per_class: dict = {}
    for c, n in src_n.items():
        merged = d.source.class_map.get(c, c)
        per_class[merged] = per_class.get(merged, 0) + n
    n_train = 0
    for c in shared:  # the stratified split keeps at least one image of each class
        n = per_class[c]
        n_train += n - min(int(round(d.val_fraction * n)), n - 1)
    n_target = sum(n for c, n in tgt_n.items() if d.target.class_map.get(c, c) in shared)
    _check_batch(cfg, n_train, n_target)
    return listings
