"""The frozen part's output for each image and view, computed once per machine, kept on disk.

In mode "features" the frozen start of the backbone is a pure function of its weights and one
image (inference mode, per-image ops), so its output is stored under the cache folder
(``data.cache_dir``, else ``$DDC_CACHE_DIR``, else ``~/.cache/ddc``) in
``features/<model key>/``, where the model key hashes everything that determines the output:
the backbone name and width, the weights file's content (or "imagenet", or none), the cut
layer, the image size and channels, the preprocessing mode, the precision policy, the Keras and
TensorFlow versions, and the frozen part's weights as loaded (which also covers random inits).
Inside, each entry is keyed by a hash of the decoded image (its uint8 bytes and shape) and the
D4 view (``ddc.data.views``): a changed weights file is a new folder, a changed image a new
entry; nothing stale is ever served.

Entries are written in chunks, each a features file then a keys file, each under a temporary
name renamed into place; a chunk counts only once its keys file exists and matches its features
file, so a run killed at any point leaves complete chunks (which the next run reuses) and
nothing a later run trusts half-written. Chunks are flushed every few seconds during extraction
and when it stops on an error or Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from ddc.data.views import apply_views

log = logging.getLogger(__name__)

FLUSH_SECONDS = 20.0     # a killed extraction loses at most this much work
FLUSH_ENTRIES = 4096
EXTRACT_MEMORY = 1 << 30  # activation budget that sets the automatic extraction batch


def weights_identity(weights: str | None) -> str:
    """``model.weights`` as resolved (None, "imagenet" or a file) as a content identity."""
    if weights in (None, "imagenet"):
        return weights or "none"
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def model_key(bottom: keras.Model, preprocess, describe: dict | None = None) -> str:
    """Hash of what determines ``bottom(preprocess(image))``: ``describe`` (e.g. backbone,
    weights identity, cut layer), the preprocessing, shapes, policy, versions and every weight."""
    info = {"describe": describe or {}, "name": bottom.name,
            "input": list(bottom.input.shape[1:]), "output": list(bottom.output.shape[1:]),
            "preprocess": getattr(preprocess, "mode", getattr(preprocess, "__qualname__",
                                                              type(preprocess).__name__)),
            "policy": keras.mixed_precision.global_policy().name,
            "versions": [keras.__version__, tf.__version__]}
    h = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode())
    for w in bottom.weights:
        h.update(getattr(w, "path", w.name).encode())
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()[:32]


def image_keys(images) -> list[str]:
    """A content hash of each decoded image (its bytes, shape and dtype)."""
    out = []
    for row in images:
        row = np.ascontiguousarray(row)
        h = hashlib.blake2b(f"{row.shape}|{row.dtype}".encode(), digest_size=16)
        h.update(row.tobytes())
        out.append(h.hexdigest())
    return out


def extraction_batch_size(bottom: keras.Model, budget: int = EXTRACT_MEMORY) -> int:
    """The largest power-of-two batch (16..512) whose biggest activation fits ``budget`` bytes
    a few times over (input, output and workspace of the widest layer)."""
    peak = 1
    for layer in bottom.layers:
        for t in keras.tree.flatten(layer.output):
            peak = max(peak, int(np.prod([d or 1 for d in t.shape[1:]])))
    b = max(1, budget // (peak * 4 * 4))
    return int(np.clip(2 ** int(np.log2(b)), 16, 512))


class FeatureCache:
    """The frozen part ``bottom`` (after ``preprocess``) over images and views, cached in
    ``root/features/<model key>/`` (``root`` None: computed, never stored).

    Counters (summed over calls): ``extracted`` views computed, ``reused`` views read from the
    cache, ``compute_s`` seconds in the backbone, ``total_s`` seconds in :meth:`features`.
    """

    def __init__(self, bottom: keras.Model, preprocess, root: Path | None = None,
                 describe: dict | None = None, batch_size: int | None = None):
        self.bottom, self.preprocess = bottom, preprocess
        self.batch_size = batch_size or extraction_batch_size(bottom)
        self.item_shape = tuple(int(d) for d in bottom.output.shape[1:])
        self.key = model_key(bottom, preprocess, describe)
        self.folder = Path(root) / "features" / self.key if root is not None else None
        self.extracted = self.reused = 0
        self.compute_s = self.total_s = 0.0
        self.writable = self.folder is not None
        self._index: dict = {}      # entry key -> (chunk name, row)
        self._chunks: dict = {}     # chunk name -> features (memmap)
        self._fn = None
        if self.folder is not None:
            self._open(describe)

    # ------------------------------------------------------------------ disk
    def _open(self, describe) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            meta = self.folder / "meta.json"
            if not meta.exists():
                tmp = self.folder / f".meta.tmp{os.getpid()}"
                tmp.write_text(json.dumps({"describe": describe, "item_shape": self.item_shape},
                                          indent=1, default=str))
                os.replace(tmp, meta)
        except OSError as e:
            log.warning("cannot use the feature cache %s (%s); extracting without it",
                        self.folder, e)
            self.writable = False
        if not self.folder.is_dir():
            return
        now = time.time()
        for p in self.folder.iterdir():  # leftovers of killed runs: never read, swept when old
            orphan = p.name.endswith(".f.npy") and not p.with_name(
                p.name[:-len(".f.npy")] + ".k.npy").exists()
            if (p.name.startswith(".") or orphan) and p.name != "meta.json":
                try:
                    if now - p.stat().st_mtime > 3600:
                        p.unlink()
                except OSError:
                    pass
        for kp in sorted(self.folder.glob("*.k.npy")):
            self._load_chunk(kp.name[:-len(".k.npy")])

    def _load_chunk(self, name: str) -> None:
        try:
            keys = np.load(self.folder / f"{name}.k.npy")
            feats = np.load(self.folder / f"{name}.f.npy", mmap_mode="r")
            if (feats.shape != (len(keys),) + self.item_shape or feats.dtype != np.float32
                    or keys.dtype.kind != "U"):
                raise ValueError(f"{feats.shape} {feats.dtype} for {len(keys)} keys "
                                 f"{keys.dtype}, expected {self.item_shape} float32")
        except (OSError, ValueError) as e:
            log.warning("feature cache: ignoring unusable chunk %s (%s)", self.folder / name, e)
            return
        self._chunks[name] = feats
        for row, k in enumerate(keys.tolist()):
            self._index.setdefault(k, (name, row))

    def _write_chunk(self, keys: list[str], feats: np.ndarray) -> None:
        if not self.writable or not keys:
            return
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmps = []
        try:
            for suffix, arr in ((".f.npy", feats), (".k.npy", np.asarray(keys))):
                tmp = self.folder / f".{name}{suffix}.tmp"
                tmps.append(tmp)
                with open(tmp, "wb") as f:
                    np.save(f, arr)
                os.replace(tmp, self.folder / f"{name}{suffix}")  # keys last: the commit
        except OSError as e:  # a full or read-only disk must not stop the run
            log.warning("cannot write the feature cache %s (%s); continuing without it",
                        self.folder, e)
            self.writable = False
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
            return
        self._load_chunk(name)

    # ------------------------------------------------------------------ compute
    def _compute(self, x: np.ndarray) -> np.ndarray:
        """``bottom(preprocess(x))`` of one uint8 batch in inference mode (traced once)."""
        if self._fn is None:
            bottom, preprocess = self.bottom, self.preprocess

            @tf.function(reduce_retracing=True)
            def fn(x):
                return tf.cast(bottom(preprocess(x), training=False), tf.float32)
            self._fn = fn
        return self._fn(tf.convert_to_tensor(x)).numpy()

    def features(self, images, views=(0,), desc: str = "features") -> np.ndarray:
        """float32 ``[N, len(views), *item_shape]``: view ``views[j]`` of image ``i`` at [i, j]."""
        t0 = time.perf_counter()
        views = tuple(int(v) for v in views)
        ikeys = image_keys(images)
        out = np.zeros((len(ikeys), len(views)) + self.item_shape, np.float32)
        todo: dict = {}  # entry key -> (view, [positions in out])
        for i, ik in enumerate(ikeys):
            for j, v in enumerate(views):
                k = f"{ik}:{v}"
                hit = self._index.get(k)
                if hit is not None:
                    out[i, j] = self._chunks[hit[0]][hit[1]]
                    self.reused += 1
                else:
                    todo.setdefault(k, (v, []))[1].append((i, j))
        if todo:
            self._extract(images, todo, out, desc)
        self.total_s += time.perf_counter() - t0
        return out

    def _extract(self, images, todo: dict, out: np.ndarray, desc: str) -> None:
        """Full batches of any mix of images and views (only the last one padded)."""
        keys = list(todo)
        b = min(self.batch_size, -(-len(keys) // 8) * 8)
        pending_keys, pending, last = [], [], time.perf_counter()
        bar = tqdm(total=len(keys), desc=f"{desc} (extract)", unit="view", leave=False,
                   disable=None)

        def flush():
            nonlocal pending_keys, pending, last
            if pending_keys:
                self._write_chunk(pending_keys, np.concatenate(pending))
            pending_keys, pending, last = [], [], time.perf_counter()

        try:
            for start in range(0, len(keys), b):
                part = keys[start:start + b]
                idx = [todo[k][1][0][0] for k in part]
                x = apply_views(np.asarray(images[idx]), np.array([todo[k][0] for k in part]))
                if len(x) < b:
                    x = np.concatenate([x, np.zeros((b - len(x),) + x.shape[1:], x.dtype)])
                t = time.perf_counter()
                f = self._compute(np.ascontiguousarray(x))[:len(part)]
                self.compute_s += time.perf_counter() - t
                self.extracted += len(part)
                for k, row in zip(part, f):
                    for i, j in todo[k][1]:
                        out[i, j] = row
                pending_keys += part
                pending.append(f)
                bar.update(len(part))
                if (len(pending_keys) >= FLUSH_ENTRIES
                        or time.perf_counter() - last > FLUSH_SECONDS):
                    flush()
        finally:  # an error or Ctrl-C keeps the batches already computed
            flush()
            bar.close()

    def stats(self) -> dict:
        return {"extracted": self.extracted, "from_cache": self.reused,
                "extract_compute_s": round(self.compute_s, 3),
                "extract_total_s": round(self.total_s, 3),
                "extract_images_per_s": (round(self.extracted / self.compute_s, 1)
                                         if self.extracted and self.compute_s > 0 else None),
                "extract_batch_size": self.batch_size,
                "folder": str(self.folder) if self.folder is not None else None}


def cached_features(bottom: keras.Model, preprocess, images, *, cache_dir: Path | None,
                    views=(0,), describe: dict | None = None, batch_size: int | None = None,
                    desc: str = "features") -> np.ndarray:
    """One-call form of :class:`FeatureCache`: float32 ``[N, len(views), ...]`` features of
    ``images`` (uint8 [N, H, W, C]) through ``bottom(preprocess(.))``, read from
    ``cache_dir/features/`` where present, extracted and stored where not."""
    return FeatureCache(bottom, preprocess, cache_dir, describe, batch_size).features(
        images, views, desc)
