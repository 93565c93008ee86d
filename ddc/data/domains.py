"""Loading a domain (class folders, TFDS or synthetic) into decoded arrays, once.

Every image is decoded and resized once, in parallel threads with a progress bar, into one
uint8 array ``[N, size, size, channels]`` kept in memory or as a ``.npy`` file on disk
(``data.cache``). Training then reads batches from that array (see ``pipeline.py``), so the
decode cost is paid once per run (or once per machine with the disk cache), and every bad file
is found before the first training step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ddc.config import DomainConfig
from ddc.data.images import DataError, decode_image, is_image_file, to_channels, to_float255

log = logging.getLogger(__name__)


@dataclass
class Domain:
    """Decoded images of one domain.

    Attributes:
        images: uint8 [N, H, W, C] (a numpy array or a read-only memmap).
        labels: int32 [N], indices into ``class_names``.
        class_names: the domain's class names after its class map.
        paths: the file of each image (or ``tfds:name/split#i``), for reports.
        skipped: files that could not be decoded and were skipped (only with skip_bad_files).
    """
    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list
    paths: list
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "Domain":
        idx = np.asarray(idx)
        return Domain(name or self.name, self.images[idx], self.labels[idx], self.class_names,
                      [self.paths[i] for i in idx], self.skipped)


def list_class_folders(root: Path, key: str) -> dict[str, list[Path]]:
    """Maps each class folder of ``root`` to its sorted image files."""
    if not root.is_dir():
        raise DataError(f"{key}: data folder not found: {root}")
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[sub.name] = sorted(p for p in sub.rglob("*") if is_image_file(p))
    if not classes:
        raise DataError(f"{key}: no class folders in {root} (expected {root}/<class>/<image>)")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(f"{key}: class folder without images: {root / empty[0]}"
                        + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""))
    return classes


def _cache_path(cache_dir: Path, files: list[Path], size: int, channels: int) -> Path:
    h = hashlib.sha1(json.dumps([size, channels]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return cache_dir / f"images_{h.hexdigest()[:16]}.npy"


def decode_files(files: list[Path], size: int, channels: int, *, workers: int, skip_bad: bool,
                 desc: str) -> tuple[np.ndarray, list[int], list[str]]:
    """Decodes ``files`` in parallel; returns (images, indices kept, skipped file messages)."""
    out = np.zeros((len(files), size, size, channels), np.uint8)
    ok = np.zeros(len(files), bool)
    errors: list[tuple[int, str]] = []

    def work(i):
        try:
            out[i] = decode_image(files[i], size, channels)
            ok[i] = True
        except DataError as e:
            errors.append((i, str(e)))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(tqdm(pool.map(work, range(len(files))), total=len(files), desc=desc, unit="img",
                  leave=False, disable=None))
    errors.sort()
    if errors and not skip_bad:
        raise DataError(errors[0][1] + (f" (and {len(errors) - 1} more bad files; set "
                                        "data.skip_bad_files to skip them)" if len(errors) > 1 else
                                        " (set data.skip_bad_files to skip unreadable files)"))
    for _, msg in errors:
        log.warning("skipped: %s", msg)
    keep = np.flatnonzero(ok)
    return out[keep] if len(keep) < len(files) else out, keep.tolist(), [m for _, m in errors]


def load_folder(cfg: DomainConfig, key: str, data_root: Path, size: int, channels: int, *,
                cache: str, cache_dir: Path | None, workers: int, skip_bad: bool) -> Domain:
    root = Path(cfg.root)
    root = root if root.is_absolute() else data_root / root
    classes = list_class_folders(root, f"{key}.root")
    names, files, labels = sorted(classes), [], []
    for label, name in enumerate(names):
        chosen = classes[name][: cfg.max_per_class] if cfg.max_per_class else classes[name]
        files += chosen
        labels += [label] * len(chosen)
    npy = _cache_path(cache_dir, files, size, channels) if cache == "disk" and cache_dir else None
    if npy is not None and npy.exists():
        log.info("%s: decoded images from disk cache %s", key, npy)
        meta = json.loads(npy.with_suffix(".json").read_text())
        images, keep, skipped = np.load(npy, mmap_mode="r"), meta["keep"], meta["skipped"]
    else:
        images, keep, skipped = decode_files(files, size, channels, workers=workers,
                                             skip_bad=skip_bad, desc=f"decode {root.name}")
        if npy is not None:
            npy.parent.mkdir(parents=True, exist_ok=True)
            tmp = npy.with_name(npy.name + f".tmp{os.getpid()}.npy")
            np.save(tmp, images)
            npy.with_suffix(".json").write_text(json.dumps({"keep": keep, "skipped": skipped}))
            os.replace(tmp, npy)
    labels = np.asarray(labels, np.int32)[keep]
    return Domain(key, images, labels, names, [str(files[i]) for i in keep], skipped)


def load_tfds(cfg: DomainConfig, key: str, size: int, channels: int) -> Domain:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        ds, info = tfds.load(cfg.tfds, split=cfg.split, as_supervised=True, with_info=True)
    except Exception as e:
        raise DataError(f"{key}.tfds: cannot load {cfg.tfds!r} split {cfg.split!r} ({e})") from None
    names = list(info.features["label"].names)
    images, labels = [], []
    counts = np.zeros(len(names), int)
    for img, label in tqdm(tfds.as_numpy(ds), desc=f"load {cfg.tfds}", leave=False, disable=None):
        if cfg.max_per_class and counts[label] >= cfg.max_per_class:
            continue
        counts[label] += 1
        arr = to_channels(to_float255(np.asarray(img)), channels)
        if arr.shape[:2] != (size, size):
            arr = tf.image.resize(arr, (size, size), antialias=True).numpy()
        images.append(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        labels.append(int(label))
    if not images:
        raise DataError(f"{key}.tfds: {cfg.tfds!r} split {cfg.split!r} holds no examples")
    paths = [f"tfds:{cfg.tfds}/{cfg.split}#{i}" for i in range(len(images))]
    return Domain(key, np.stack(images), np.asarray(labels, np.int32), names, paths)


def load_domain(cfg: DomainConfig, key: str, data_root: Path, size: int, channels: int, *,
                cache: str = "memory", cache_dir: Path | None = None, workers: int = 8,
                skip_bad: bool = False) -> Domain:
    """Loads one domain as configured; ``key`` (e.g. ``data.source``) is used in messages."""
    if cfg.root:
        return load_folder(cfg, key, data_root, size, channels, cache=cache, cache_dir=cache_dir,
                           workers=workers, skip_bad=skip_bad)
    if cfg.tfds:
        return load_tfds(cfg, key, size, channels)
    from ddc.data.synthetic import make_domain

    return make_domain(cfg.synthetic, key, size, channels, max_per_class=cfg.max_per_class)
