"""Pieces of the adversarial methods (DANN, CDAN, MDD): gradient reversal and their losses."""

from __future__ import annotations

import math

import tensorflow as tf

from ddc.losses.entropy import per_sample_entropy


def gradient_reverse(x, coeff) -> tf.Tensor:
    """Identity forward; backward multiplies the incoming gradient by ``-coeff`` (Ganin &
    Lempitsky 2015). ``coeff``: a float32 scalar tensor, so a schedule can change it without
    retracing; it gets no gradient.

    Example:
      >>> x = tf.constant([1.0, 2.0])
      >>> with tf.GradientTape() as tape:
      ...     tape.watch(x); y = tf.reduce_sum(3.0 * gradient_reverse(x, tf.constant(0.5)))
      >>> tape.gradient(y, x).numpy().tolist()
      [-1.5, -1.5]
    """
    coeff = tf.convert_to_tensor(coeff, tf.float32)

    @tf.custom_gradient
    def reverse(x):
        def grad(dy):
            return -tf.cast(coeff, dy.dtype) * dy
        return tf.identity(x), grad

    return reverse(tf.convert_to_tensor(x))


def grl_warmup(progress) -> tf.Tensor:
    """DANN's schedule of the reversal coefficient: ``2 / (1 + exp(-10 p)) - 1``, p in [0, 1]
    the training progress (0 at the start, 0.987 at p = 0.5, ~1 at the end)."""
    p = tf.cast(progress, tf.float32)
    return 2.0 / (1.0 + tf.exp(-10.0 * p)) - 1.0


def binary_domain_loss(d_s, d_t, w_s=None, w_t=None) -> tf.Tensor:
    """Binary cross-entropy of domain logits, source labelled 1 and target 0, averaged over
    both batches: ``(sum_i w_i BCE(d_s,i, 1) + sum_j w_j BCE(d_t,j, 0)) / (n + m)``; each
    side's weights default to 1. ``d_s`` [n] or [n, 1], ``d_t`` [m] or [m, 1] logits, weights
    [n] / [m] (or [n, 1] / [m, 1]); float32."""
    d_s = tf.reshape(tf.cast(d_s, tf.float32), [-1])
    d_t = tf.reshape(tf.cast(d_t, tf.float32), [-1])
    l_s = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(d_s), logits=d_s)
    l_t = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros_like(d_t), logits=d_t)
    if w_s is not None:
        l_s = l_s * tf.reshape(tf.cast(w_s, tf.float32), [-1])
    if w_t is not None:
        l_t = l_t * tf.reshape(tf.cast(w_t, tf.float32), [-1])
    total = tf.cast(tf.size(d_s) + tf.size(d_t), tf.float32)
    return (tf.reduce_sum(l_s) + tf.reduce_sum(l_t)) / total


def domain_accuracy(d_s, d_t) -> tf.Tensor:
    """Share of the source and target samples the discriminator puts on their side of 0."""
    d_s, d_t = tf.reshape(d_s, [-1]), tf.reshape(d_t, [-1])
    right = tf.concat([tf.cast(d_s > 0, tf.float32), tf.cast(d_t <= 0, tf.float32)], axis=0)
    return tf.reduce_mean(right)


def multilinear_map(f, g) -> tf.Tensor:
    """CDAN's conditioning ``f ⊗ g``, flattened: out[b, i K + k] = f[b, i] g[b, k]; f [B, d],
    g [B, K] -> [B, d K]."""
    f, g = tf.cast(f, tf.float32), tf.cast(g, tf.float32)
    outer = f[:, :, None] * g[:, None, :]
    return tf.reshape(outer, [-1, f.shape[-1] * g.shape[-1]])


def randomized_multilinear_map(f, g, r_f, r_g) -> tf.Tensor:
    """CDAN's randomized map for large ``d K``: ``(f R_f) ⊙ (g R_g) / sqrt(r)``; f [B, d],
    g [B, K], fixed random R_f [d, r] and R_g [K, r] -> [B, r]. Its inner products approximate
    those of the full map in expectation (R's entries of unit variance)."""
    f, g = tf.cast(f, tf.float32), tf.cast(g, tf.float32)
    r_f, r_g = tf.cast(r_f, tf.float32), tf.cast(r_g, tf.float32)
    r = r_f.shape[-1]
    return tf.matmul(f, r_f) * tf.matmul(g, r_g) / math.sqrt(r)


def entropy_weights(logits) -> tf.Tensor:
    """CDAN+E's sample weights: ``w_i = 1 + exp(-H(softmax(z_i)))``, scaled to sum to the batch
    size B; under stop-gradient. logits [B, K] -> float32 [B]."""
    w = 1.0 + tf.exp(-per_sample_entropy(logits))
    b = tf.cast(tf.shape(w)[0], tf.float32)
    return tf.stop_gradient(b * w / tf.reduce_sum(w))


def mdd_loss(logits_s, logits_t, adv_s, adv_t, margin: float = 4.0) -> tf.Tensor:
    r"""The adversary's side of the margin disparity discrepancy (Zhang et al. 2019, eq. 29,
    as TLlib writes it), minimised by the adversarial head and, through gradient reversal,
    maximised by the features::

        yhat_s = argmax z_s,  yhat_t = argmax z_t          (main head, no gradient)
        L = gamma * 1/n sum_i CE(z'_s,i, yhat_s,i)
            - 1/m sum_j log(1 - softmax(z'_t,j)[yhat_t,j])  (the log clamped: log(min(x + 1e-6, 1)))

    so the adversarial head z' agrees with the main head on the source and disagrees with it
    on the target; ``-L`` estimates the disparity (up to constants).

    Args:
      logits_s, logits_t: main head logits [n, K], [m, K].
      adv_s, adv_t: adversarial head logits [n, K], [m, K] (on reversed features).
      margin: gamma > 0 (the paper's 4).

    Returns:
      A float32 scalar.
    """
    yhat_s = tf.stop_gradient(tf.argmax(logits_s, axis=-1, output_type=tf.int32))
    yhat_t = tf.stop_gradient(tf.argmax(logits_t, axis=-1, output_type=tf.int32))
    adv_s, adv_t = tf.cast(adv_s, tf.float32), tf.cast(adv_t, tf.float32)
    ce_s = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yhat_s, logits=adv_s)
    p_t = tf.gather(tf.nn.softmax(adv_t, axis=-1), yhat_t, axis=1, batch_dims=1)
    target = -tf.math.log(tf.minimum(1.0 - p_t + 1e-6, 1.0))
    return margin * tf.reduce_mean(ce_s) + tf.reduce_mean(target)
