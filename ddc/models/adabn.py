"""AdaBN (Li et al. 2016, "Revisiting Batch Normalization For Practical Domain Adaptation")
for a frozen pretrained network: each domain's features through it with its BatchNorm
statistics recomputed on that domain's images (the source's on the source training images, the
target's on the target images) instead of the statistics it was pretrained with. (Adapting the
target alone, the source keeping the ImageNet statistics, puts the two on different scales:
36% against 52% on SIRI-WHU -> AID, frozen MobileNetV2 at 128 px, source only, seed 0.)

``target_statistics`` runs the target images through ``model`` once, in batches, each
BatchNormalization layer normalising with the statistics of its batch (as in training), and
returns each layer's per-channel mean and (biased) variance of its input over all the images:
the batches' means of ``x`` and ``x²`` pooled by batch size. With one batch holding every image
they are exactly the population statistics of each layer's input, the layers before it
normalised by theirs. ``statistics_applied`` sets them as the layers' moving statistics for the
duration of a ``with`` block and puts the pretrained ones back after it. ``cached_statistics``
keeps them on disk beside the feature cache, keyed by the model and the target images.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

log = logging.getLogger("ddc.models.adabn")


def batch_norm_layers(model: keras.Model) -> list:
    """The BatchNormalization layers of the functional ``model`` (its own layers), in order."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def target_statistics(model: keras.Model, preprocess, images, batch_size: int) -> list:
    """``[(mean, variance)]`` per ``batch_norm_layers(model)`` entry, float64 numpy, from
    ``images`` (uint8 [N, H, W, C]) through ``preprocess`` and ``model``; the model's weights
    are left as they were."""
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError(f"{model.name} has no BatchNormalization layer to adapt")
    if len(images) == 0:
        raise ValueError("no target images to compute the BatchNorm statistics on")
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    trainable = [layer.trainable for layer in layers]
    own = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]

    @tf.function(reduce_retracing=True)
    def moments(x):
        outs = probe(preprocess(x), training=True)   # each layer on its batch's statistics
        out = []
        for t in outs:
            t = tf.cast(t, tf.float32)
            axes = list(range(len(t.shape) - 1))
            out.append((tf.reduce_mean(t, axes), tf.reduce_mean(tf.square(t), axes)))
        return out

    sums = [[0.0, 0.0] for _ in layers]
    n = len(images)
    # a training-mode call also moves the moving statistics: statistics_applied puts them back
    with statistics_applied(model, own):
        try:
            for layer in layers:
                layer.trainable = True              # batch statistics in training mode
            for start in tqdm(range(0, n, batch_size), desc="AdaBN statistics", unit="batch",
                              leave=False, disable=None):
                x = np.asarray(images[start:start + batch_size])
                for acc, (m, m2) in zip(sums, moments(tf.convert_to_tensor(x))):
                    acc[0] = acc[0] + len(x) * m.numpy().astype(np.float64)
                    acc[1] = acc[1] + len(x) * m2.numpy().astype(np.float64)
        finally:
            for layer, flag in zip(layers, trainable):
                layer.trainable = flag
    return [(m / n, np.maximum(m2 / n - (m / n) ** 2, 0.0)) for m, m2 in sums]


@contextlib.contextmanager
def statistics_applied(model: keras.Model, stats: list):
    """``model``'s BatchNormalization layers with ``stats`` (``target_statistics``' output) as
    their moving mean and variance inside the block; their own values again after it."""
    layers = batch_norm_layers(model)
    if len(stats) != len(layers):
        raise ValueError(f"{len(stats)} statistics for {len(layers)} BatchNormalization layers")
    saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
    try:
        for layer, (mean, var) in zip(layers, stats):
            layer.moving_mean.assign(np.asarray(mean, layer.moving_mean.dtype))
            layer.moving_variance.assign(np.asarray(var, layer.moving_variance.dtype))
        yield model
    finally:
        for layer, (mean, var) in zip(layers, saved):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(var)


def cached_statistics(model: keras.Model, preprocess, images, batch_size: int,
                      folder: Path | None, key: str) -> list:
    """``target_statistics``, read from ``folder/<hash of key>.npz`` where a run stored them
    (``key`` names the model and the images, e.g. the feature cache's model key and the
    images' content hashes), else computed and stored there (atomically; an unwritable folder
    only costs the next run the pass)."""
    path = (Path(folder) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"
            if folder is not None else None)
    if path is not None and path.exists():
        with np.load(path) as z:
            return [(z[f"mean{i}"], z[f"var{i}"]) for i in range(len(z.files) // 2)]
    stats = target_statistics(model, preprocess, images, batch_size)
    if path is not None:
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, **{f"{k}{i}": v for i, (m, var) in enumerate(stats)
                               for k, v in (("mean", m), ("var", var))})
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot store the AdaBN statistics in %s (%s)", path.parent, e)
            tmp.unlink(missing_ok=True)
    return stats
