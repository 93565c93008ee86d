"""Deep CORAL (Sun & Saenko 2016): the distance between source and target feature covariances."""

from __future__ import annotations

import tensorflow as tf


def _covariance(f: tf.Tensor) -> tf.Tensor:
    n = tf.cast(tf.shape(f)[0], tf.float32)
    centred = f - tf.reduce_mean(f, axis=0, keepdims=True)
    # a batch of one (only reachable with a dynamic batch size) has no spread: dividing by
    # max(n - 1, 1) gives the zero matrix instead of 0 / 0
    return tf.matmul(centred, centred, transpose_a=True) / tf.maximum(n - 1.0, 1.0)


def coral(f_s, f_t) -> tf.Tensor:
    r"""CORAL loss between a source and a target batch of features::

        C_s = 1/(n-1) (F_s - 1 mean(F_s))^T (F_s - 1 mean(F_s))     [d, d]  (unbiased)
        C_t = 1/(m-1) (F_t - 1 mean(F_t))^T (F_t - 1 mean(F_t))     [d, d]
        CORAL = ||C_s - C_t||_F^2 / (4 d^2)

    Args:
      f_s: Source features [n, d], any float dtype (computed in float32).
      f_t: Target features [m, d].

    Returns:
      A float32 scalar tensor (>= 0; 0 for batches of equal covariance).

    Raises:
      ValueError: rank other than 2, differing widths, or a static batch of fewer than 2
        (a covariance needs two samples); the message gives both shapes.

    Example:
      >>> x = tf.random.normal([16, 4]); y = 3.0 * tf.random.normal([16, 4])
      >>> bool(coral(x, y) > coral(x, x))
      True
    """
    f_s = tf.cast(tf.convert_to_tensor(f_s), tf.float32)
    f_t = tf.cast(tf.convert_to_tensor(f_t), tf.float32)
    shapes = f"got f_s shape {f_s.shape} and f_t shape {f_t.shape}"
    if f_s.shape.rank != 2 or f_t.shape.rank != 2:
        raise ValueError(f"coral: f_s and f_t must be rank 2, [batch, features]; {shapes}")
    if None not in (f_s.shape[1], f_t.shape[1]) and f_s.shape[1] != f_t.shape[1]:
        raise ValueError(f"coral: f_s and f_t must have the same feature width; {shapes}")
    if any(n is not None and n < 2 for n in (f_s.shape[0], f_t.shape[0])):
        raise ValueError(f"coral: a covariance needs at least 2 samples per batch; {shapes}")
    d = tf.cast(tf.shape(f_s)[1], tf.float32)
    diff = _covariance(f_s) - _covariance(f_t)
    return tf.reduce_sum(tf.square(diff)) / (4.0 * d * d)
