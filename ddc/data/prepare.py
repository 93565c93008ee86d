"""From a config to the three arrays a run uses: source train, source validation, target."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ddc.config import Config
from ddc.data.align import align_domains, stratified_split
from ddc.data.domains import Domain, load_domain
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
    return Path(arg or os.environ.get("DDC_DATA_ROOT") or "data").expanduser()


def prepare_data(cfg: Config, data_root: Path, cache_dir: Path | None = None) -> RunData:
    """Loads, aligns and splits the configured domains.

    Raises:
        DataError: with the folder, file or key that is wrong, before any training.
    """
    d = cfg.data
    kw = dict(cache=d.cache, cache_dir=Path(d.cache_dir) if d.cache_dir else cache_dir,
              workers=d.decode_workers, skip_bad=d.skip_bad_files)
    source = load_domain(d.source, "data.source", data_root, d.image_size, d.channels, **kw)
    target = load_domain(d.target, "data.target", data_root, d.image_size, d.channels, **kw)
    source, target, names, dropped = align_domains(source, target, d.source.class_map,
                                                   d.target.class_map)
    train_idx, val_idx = stratified_split(source.labels, d.val_fraction, cfg.seed)
    train, val = source.subset(train_idx, "source_train"), source.subset(val_idx, "source_val")
    b = cfg.train.batch_size
    for part, key in ((train, "data.source (training split)"), (target, "data.target")):
        if len(part) < b:
            raise DataError(f"{key}: {len(part)} images, fewer than one batch "
                            f"(train.batch_size={b})")
    log.info("classes (%d): %s", len(names), ", ".join(names))
    log.info("source: %d train, %d validation; target: %d (unlabelled in training)",
             len(train), len(val), len(target))
    return RunData(train, val, target, names, dropped, source.skipped + target.skipped)
