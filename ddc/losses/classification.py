"""Cross-entropy on the labelled source batch."""

from __future__ import annotations

import tensorflow as tf


def classification_loss(labels, logits) -> tf.Tensor:
    """Mean sparse softmax cross-entropy, computed in float32.

    Args:
      labels: Integer class ids, shape [n].
      logits: Unnormalised scores, shape [n, C], any float dtype.

    Returns:
      A float32 scalar tensor.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )
