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


def _files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` (any depth), skipping hidden folders such as
    ``.ipynb_checkpoints``; links are followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames]
    return out


def list_class_folders(root: Path, key: str) -> dict[str, list[Path]]:
    """Maps each class folder of ``root`` to its sorted image files.

    Files that are not images by name are ignored (counted in one INFO line); image files lying
    directly in ``root``, outside any class folder, are ignored with a warning.

    Raises:
        DataError: ``root`` is missing or not a folder, has no class folders, or a class folder
            holds no image file.
    """
    if not root.exists():
        raise DataError(f"{key}: data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{key}: expected a folder of class folders, got a file: {root}")
    classes, ignored = {}, {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _files_under(sub)
        classes[sub.name] = sorted(p for p in files if is_image_file(p))
        for p in files:
            if not is_image_file(p):
                ext = "hidden" if p.name.startswith(".") else (p.suffix.lower() or "no extension")
                ignored[ext] = ignored.get(ext, 0) + 1
    if ignored:
        log.info("%s: ignored %d files that are not images by name (%s)", key,
                 sum(ignored.values()), ", ".join(f"{k}: {v}" for k, v in sorted(ignored.items())))
    loose = [p for p in root.iterdir() if is_image_file(p)]
    if loose:
        log.warning("%s: ignoring %d image files outside any class folder in %s (e.g. %s)", key,
                    len(loose), root, sorted(loose)[0].name)
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
        try:
            st = f.stat()
            sig = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:  # a broken link: decoding reports it
            sig = "missing"
        h.update(f"{f.resolve()}|{sig}\n".encode())
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
    messages = [m for _, m in errors]
    _report_bad_files(messages, skip_bad, desc)
    keep = np.flatnonzero(ok)
    return out[keep] if len(keep) < len(files) else out, keep.tolist(), messages


def _report_bad_files(messages: list[str], skip_bad: bool, what: str) -> None:
    """Raises on unreadable files, or with ``skip_bad`` logs each one: never a silent drop."""
    if not messages:
        return
    if not skip_bad:
        more = len(messages) - 1
        raise DataError(messages[0] + (f" (and {more} more unreadable files; set "
                                       "data.skip_bad_files to skip them)" if more else
                                       " (set data.skip_bad_files to skip unreadable files)"))
    for msg in messages:
        log.warning("skipped: %s", msg)
    log.warning("%s: skipped %d unreadable files (data.skip_bad_files)", what, len(messages))


def folder_root(cfg: DomainConfig, data_root: Path) -> Path:
    """The domain's folder: ``cfg.root`` if absolute, else relative to the data root."""
    root = Path(cfg.root).expanduser()
    return root if root.is_absolute() else Path(data_root) / root


def load_folder(cfg: DomainConfig, key: str, data_root: Path, size: int, channels: int, *,
                cache: str, cache_dir: Path | None, workers: int, skip_bad: bool,
                classes: dict | None = None) -> Domain:
    root = folder_root(cfg, data_root)
    if classes is None:
        classes = list_class_folders(root, f"{key}.root")
    names, files, labels = sorted(classes), [], []
    for label, name in enumerate(names):
        chosen = classes[name][: cfg.max_per_class] if cfg.max_per_class else classes[name]
        files += chosen
        labels += [label] * len(chosen)
    npy = _cache_path(cache_dir, files, size, channels) if cache == "disk" and cache_dir else None
    cached = _read_cache(npy, len(files), key) if npy is not None else None
    if cached is not None:
        images, keep, skipped = cached
        # the entry may come from a run that allowed skipping: this run's switch decides again
        _report_bad_files(skipped, skip_bad, key)
    else:
        images, keep, skipped = decode_files(files, size, channels, workers=workers,
                                             skip_bad=skip_bad, desc=key)
        if npy is not None:
            _write_cache(npy, images, keep, skipped)
    labels = np.asarray(labels, np.int32)[keep]
    lost = [names[c] for c in range(len(names)) if not np.any(labels == c)]
    if lost:
        raise DataError(f"{key}.root: every image of class {lost[0]!r} in {root / lost[0]} is "
                        "unreadable (see the skipped files in the log)")
    return Domain(key, images, labels, names, [str(files[i]) for i in keep], skipped)


def _read_cache(npy: Path, n_files: int, key: str):
    """(images, keep, skipped) from a disk cache entry, or None when absent or unusable."""
    meta_path = npy.with_suffix(".json")
    if not (npy.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(npy, mmap_mode="r")
        keep, skipped = meta["keep"], meta["skipped"]
        if len(images) != len(keep) or (keep and max(keep) >= n_files):
            raise ValueError(f"{len(images)} images for {len(keep)} kept files")
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: ignoring unusable disk cache %s (%s); decoding again", key, npy, e)
        return None
    log.info("%s: decoded images from disk cache %s", key, npy)
    return images, keep, skipped


def _write_cache(npy: Path, images: np.ndarray, keep: list, skipped: list) -> None:
    """Writes the metadata, then the array, each under a temporary name renamed into place:
    an entry is complete or absent, even when the process is killed while writing it."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    meta_path = npy.with_suffix(".json")
    tmp_npy = npy.with_name(f".{npy.stem}.tmp{os.getpid()}.npy")
    tmp_meta = meta_path.with_name(f".{meta_path.name}.tmp{os.getpid()}")
    try:
        tmp_meta.write_text(json.dumps({"keep": keep, "skipped": skipped}))
        os.replace(tmp_meta, meta_path)
        np.save(tmp_npy, images)
        os.replace(tmp_npy, npy)
    except OSError as e:  # a full or read-only cache folder must not stop the run
        log.warning("cannot write the disk cache %s (%s); continuing without it", npy, e)
        for tmp in (tmp_meta, tmp_npy):
            tmp.unlink(missing_ok=True)


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
                skip_bad: bool = False, classes: dict | None = None) -> Domain:
    """Loads one domain as configured; ``key`` (e.g. ``data.source``) is used in messages.

    ``classes`` is the folder listing from :func:`list_class_folders` when the caller already
    has it (folder domains only).
    """
    if cfg.root:
        return load_folder(cfg, key, data_root, size, channels, cache=cache, cache_dir=cache_dir,
                           workers=workers, skip_bad=skip_bad, classes=classes)
    if cfg.tfds:
        return load_tfds(cfg, key, size, channels)
    from ddc.data.synthetic import make_domain

    return make_domain(cfg.synthetic, key, size, channels, max_per_class=cfg.max_per_class)
