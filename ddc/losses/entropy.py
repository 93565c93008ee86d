"""Prediction entropy (entropy minimisation) and SHOT's information maximisation."""

from __future__ import annotations

import tensorflow as tf


def _logits(logits) -> tf.Tensor:
    logits = tf.cast(tf.convert_to_tensor(logits), tf.float32)
    if logits.shape.rank != 2:
        raise ValueError(f"logits must be rank 2, [batch, classes]; got shape {logits.shape}")
    return logits


def per_sample_entropy(logits) -> tf.Tensor:
    """``H_i = -sum_k p_ik log p_ik`` with ``p_i = softmax(z_i)``, float32 [B] (natural log;
    from ``log_softmax``, so saturated logits give 0 * finite, never 0 * -inf)."""
    logits = _logits(logits)
    logp = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_sum(tf.exp(logp) * logp, axis=-1)


def entropy(logits) -> tf.Tensor:
    r"""Mean prediction entropy of a batch (Grandvalet & Bengio 2005; the target term of MCC's
    and SHOT's recipes)::

        entropy = 1/B sum_i H(softmax(z_i)),   H(p) = -sum_k p_k log p_k

    Args:
      logits: [B, K], any float dtype.

    Returns:
      A float32 scalar in [0, log K].
    """
    return tf.reduce_mean(per_sample_entropy(logits))


def information_maximization(logits) -> tf.Tensor:
    r"""SHOT's information-maximisation loss (Liang et al. 2020)::

        IM = 1/B sum_i H(p_i) - H(pbar),    p_i = softmax(z_i),  pbar = 1/B sum_i p_i

    Low when each prediction is confident (first term) and the batch's predictions are spread
    over the classes (the second term, the diversity term, is subtracted).

    Args:
      logits: [B, K], any float dtype.

    Returns:
      A float32 scalar in [-log K, log K].
    """
    logits = _logits(logits)
    p_bar = tf.reduce_mean(tf.nn.softmax(logits, axis=-1), axis=0)
    # xlogy(0, 0) = 0 and its gradient there is 0: an empty class gives no NaN
    diversity = -tf.reduce_sum(tf.math.xlogy(p_bar, p_bar))
    return tf.reduce_mean(per_sample_entropy(logits)) - diversity
