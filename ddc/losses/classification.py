"""Cross-entropy on the labelled source batch."""

from __future__ import annotations

import tensorflow as tf


def source_cross_entropy(labels, logits, label_smoothing: float = 0.0) -> tf.Tensor:
    """Per-sample softmax cross-entropy in float32, against smoothed one-hot targets.

    The target of sample i is ``(1 - eps) * onehot(labels[i]) + eps / C`` (Szegedy et al. 2016;
    SHOT trains its source model with eps = 0.1), so the loss is ``(1 - eps) * CE(labels) +
    eps * mean_k(-log softmax_k)``; ``eps = 0`` is the plain cross-entropy.

    Args:
      labels: Integer class ids, shape [n].
      logits: Unnormalised scores, shape [n, C], any float dtype.
      label_smoothing: eps in [0, 1).

    Returns:
      A float32 tensor of shape [n].
    """
    logits = tf.cast(logits, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                        logits=logits)
    if not label_smoothing:
        return ce
    uniform = -tf.reduce_mean(tf.nn.log_softmax(logits), axis=-1)
    return (1.0 - label_smoothing) * ce + label_smoothing * uniform


def classification_loss(labels, logits, label_smoothing: float = 0.0) -> tf.Tensor:
    """Mean of ``source_cross_entropy``: a float32 scalar tensor."""
    return tf.reduce_mean(source_cross_entropy(labels, logits, label_smoothing))
