"""Minimum Class Confusion (Jin et al. 2020)."""

from __future__ import annotations

import tensorflow as tf

from ddc.losses.entropy import per_sample_entropy


def mcc(logits, temperature: float = 2.5) -> tf.Tensor:
    r"""MCC loss of a (target) batch::

        Y   = softmax(Z / T)                                   [B, K]
        w_i = B (1 + exp(-H(Y_i))) / sum_j (1 + exp(-H(Y_j)))  [B]  (under stop-gradient)
        C   = Y^T diag(w) Y                                    [K, K]
        C~_ij = C_ij / sum_i' C_i'j                            (each column by its sum)
        MCC = (sum_ij C~_ij - trace C~) / K

    Confident samples (low entropy) weigh more; the loss is the mass of the normalised class
    confusion matrix off its diagonal, 0 when no two classes are ever predicted together.

    Args:
      logits: [B, K], any float dtype.
      temperature: T > 0 (the paper's 2.5).

    Returns:
      A float32 scalar in [0, (K - 1) / K] ((K - 1) / K for uniform predictions).
    """
    if not temperature > 0:
        raise ValueError(f"mcc: temperature must be > 0; got {temperature}")
    logits = tf.cast(tf.convert_to_tensor(logits), tf.float32)
    if logits.shape.rank != 2:
        raise ValueError(f"mcc: logits must be rank 2, [batch, classes]; got shape {logits.shape}")
    scaled = logits / temperature
    y = tf.nn.softmax(scaled, axis=-1)
    b = tf.cast(tf.shape(y)[0], tf.float32)
    k = tf.cast(tf.shape(y)[1], tf.float32)
    w = 1.0 + tf.exp(-per_sample_entropy(scaled))
    w = tf.stop_gradient(b * w / tf.reduce_sum(w))
    conf = tf.matmul(y * w[:, None], y, transpose_a=True)
    # column sums are sum_b w_b y_bj > 0; the floor only guards a softmax that underflowed
    conf = conf / tf.maximum(tf.reduce_sum(conf, axis=0, keepdims=True), 1e-12)
    return (tf.reduce_sum(conf) - tf.linalg.trace(conf)) / k
