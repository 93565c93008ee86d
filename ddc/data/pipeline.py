"""tf.data streams for training: infinite, fixed-shape, zipped source and target batches.

Each stream is the classic ``shuffle -> repeat -> batch(drop_remainder=True)`` over a decoded
array, written so that batch ``s`` is a pure function of ``(seed, s)``: epoch ``e = s // (N // B)``
uses the permutation drawn from ``default_rng([seed, stream, e])`` and the flips (or D4 views,
``ddc.data.views``) from ``default_rng([seed, stream, s, ...])``. A resumed run therefore
continues with exactly the batches the uninterrupted run would have seen (no shuffle buffer
state to lose). Batches are gathered in parallel (``num_parallel_calls=AUTOTUNE``, order kept),
zipped, and prefetched.

Images stay uint8 in the pipeline; the model converts and preprocesses them.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from ddc.data.views import apply_views, augment_mode, augment_views

SOURCE_STREAM, TARGET_STREAM = 0, 1


class BatchSampler:
    """Batch ``step`` of an epoch-shuffled, repeated, drop-remainder stream over ``n`` items.

    With ``balance_labels`` (one label per item), an epoch is instead ``n`` draws with
    replacement, each item drawn with probability proportional to one over the size of its
    class: every class is drawn equally often in expectation, whatever the class sizes.
    """

    def __init__(self, n: int, batch_size: int, seed: int, stream: int,
                 balance_labels: np.ndarray | None = None):
        if n < batch_size:
            raise ValueError(f"{n} items cannot fill one batch of {batch_size}")
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self.steps_per_epoch = n // batch_size
        self.p = None
        if balance_labels is not None:
            labels = np.asarray(balance_labels)
            if labels.shape != (n,):
                raise ValueError(f"balance_labels: expected {n} labels, got shape {labels.shape}")
            _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
            weights = 1.0 / counts[inverse]
            self.p = weights / weights.sum()

    @functools.lru_cache(maxsize=2)
    def _perm(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.stream, epoch])
        if self.p is not None:
            return rng.choice(self.n, size=self.n, replace=True, p=self.p)
        return rng.permutation(self.n)

    def indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        return self._perm(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]

    def flips(self, step: int) -> np.ndarray:
        """[B, 2] booleans: flip left-right, flip up-down."""
        return np.random.default_rng([self.seed, self.stream, int(step), 7]).random(
            (self.batch_size, 2)) < 0.5

    def d4(self, step: int) -> np.ndarray:
        """[B] D4 view indices, uniform over 0..7 (``ddc.data.views``)."""
        return np.random.default_rng([self.seed, self.stream, int(step), 8]).integers(
            0, 8, self.batch_size)

    def views(self, step: int, augment) -> np.ndarray:
        """[B] the D4 view of each item of batch ``step`` under ``data.augment = augment``."""
        mode = augment_mode(augment)
        if mode is None:
            return np.zeros(self.batch_size, np.int64)
        if mode == "d4":
            return self.d4(step)
        f = self.flips(step).astype(np.int64)
        return np.asarray(augment_views(mode))[f[:, 0] + 2 * f[:, 1]]


def _stream(images: np.ndarray, labels: np.ndarray | None, sampler: BatchSampler,
            augment, start_step: int, shards: tuple[int, int, int],
            views: tuple | None = None) -> tf.data.Dataset:
    """Element k is slice ``first + k % local`` (of ``replicas`` equal slices) of global batch
    ``start_step + k // local``; one replica: element k is batch ``start_step + k``.

    ``views``: ``images`` is ``[N, V, ...]``, precomputed views (their D4 indices, in axis-1
    order) of which each item's drawn view is picked; else the drawn view is applied to the
    images ``[N, H, W, C]``."""
    replicas, first, local = shards
    per = sampler.batch_size // replicas
    lookup = None
    if views is not None:
        missing = sorted(set(augment_views(augment)) - set(views))
        if missing or images.ndim < 2 or images.shape[1] != len(views):
            raise ValueError(f"precomputed views {tuple(views)} (axis 1 of {images.shape}) do "
                             f"not hold the views {tuple(augment_views(augment))} drawn for "
                             f"augment={augment!r}")
        lookup = np.full(8, -1, np.int64)
        lookup[list(views)] = np.arange(len(views))
    shape = (per,) + tuple(images.shape[2 if views is not None else 1:])

    def get(k):
        step, r = divmod(int(k), local)
        step += start_step
        part = slice((first + r) * per, (first + r + 1) * per)
        idx = sampler.indices(step)[part]
        drawn = sampler.views(step, augment)[part]
        if lookup is not None:
            x = np.asarray(images[idx, lookup[drawn]])
        else:
            x = apply_views(np.asarray(images[idx]), drawn)
        y = labels[idx] if labels is not None else np.zeros(len(idx), np.int32)
        return x, y.astype(np.int32)

    def fetch(k):
        x, y = tf.numpy_function(get, [k], [tf.as_dtype(images.dtype), tf.int32], stateful=False)
        x.set_shape(shape)
        y.set_shape(shape[:1])
        return x, y

    ds = tf.data.Dataset.range(np.iinfo(np.int64).max)
    return ds.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_dataset(source_images, source_labels, target_images, *, batch_size: int, seed: int,
                  augment=False, start_step: int = 0, use_target: bool = True,
                  shards: tuple[int, int, int] = (1, 0, 1), balance_source: bool = False,
                  source_views: tuple | None = None,
                  target_views: tuple | None = None) -> tf.data.Dataset:
    """Zipped infinite stream of ``(x_s [B,H,W,C], labels_s int32 [B], x_t [B,H,W,C])``.

    Images are uint8 (or float32 cached features [B, F] in feature-extractor mode).
    Target labels never enter this stream. With ``use_target=False`` (source-only runs) the
    target element is an empty [0, H, W, C] batch so the step signature stays the same.
    ``shards = (replicas, first replica of this input pipeline, replicas it feeds)`` splits each
    global batch of ``batch_size`` into per-replica slices (``tf.distribute``); the union of the
    slices of one step is exactly the one-replica batch of that step. ``balance_source``
    draws source batches class-balanced (``BatchSampler``'s ``balance_labels``).

    ``augment`` is ``data.augment`` (false, true/"flips", "d4"; ``ddc.data.views``): each item
    of step ``s`` is seen in a view drawn from ``(seed, stream, s)``. ``source_views`` /
    ``target_views``: that stream's array is ``[N, V, ...]``, V precomputed views (their D4
    indices), and the drawn view is picked from it (mode "features") instead of applied.
    """
    replicas = shards[0]
    if batch_size % replicas:
        raise ValueError(f"batch size {batch_size} is not a multiple of {replicas} replicas")
    src = _stream(source_images, source_labels,
                  BatchSampler(len(source_images), batch_size, seed, SOURCE_STREAM,
                               source_labels if balance_source else None), augment,
                  start_step, shards, source_views)
    if use_target:
        tgt = _stream(target_images, None,
                      BatchSampler(len(target_images), batch_size, seed, TARGET_STREAM), augment,
                      start_step, shards, target_views).map(lambda x, y: x)
    else:
        item = target_images.shape[2 if target_views is not None else 1:]
        empty = np.zeros((0,) + tuple(item), target_images.dtype)
        tgt = tf.data.Dataset.from_tensors(empty).repeat()
    ds = tf.data.Dataset.zip(src, tgt).map(lambda s, t: (s[0], s[1], t))
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_batches(images: np.ndarray, batch_size: int):
    """Yields (start, batch) over ``images`` in order; the last batch is zero-padded to full size
    so that one traced predict function serves every batch."""
    n = len(images)
    for start in range(0, n, batch_size):
        x = np.asarray(images[start:start + batch_size])
        if len(x) < batch_size:
            pad = np.zeros((batch_size - len(x),) + x.shape[1:], x.dtype)
            x = np.concatenate([x, pad])
        yield start, x
