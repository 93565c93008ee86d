"""Self-training on confident target predictions, with class-balanced selection."""

from __future__ import annotations

import tensorflow as tf


def pseudo_label_mask(logits, threshold: float, class_fraction: float = 0.0) -> tf.Tensor:
    r"""Which target samples get a pseudo-label, float32 [B] in {0, 1}::

        c_i = argmax_k p_ik,   m_i = [max_k p_ik >= threshold]  or  [r_i < ceil(f * n_{c_i})]

    where ``n_c`` is the number of samples of the batch predicted as class c and ``r_i`` the
    rank of sample i's confidence among them (0 for the most confident; ties broken by index).
    ``f = class_fraction`` keeps the most confident fraction of every predicted class whatever
    its confidence (class-balanced selection, as CBST's per-class thresholds), so a class whose
    predictions are all below ``threshold`` still gets pseudo-labels; 0 keeps the threshold alone.
    """
    logits = tf.cast(logits, tf.float32)
    p = tf.nn.softmax(logits, axis=-1)
    conf = tf.reduce_max(p, axis=-1)
    cls = tf.argmax(p, axis=-1)
    mask = conf >= threshold
    if class_fraction > 0:
        same = tf.equal(cls[:, None], cls[None, :])                          # [i, j]
        idx = tf.range(tf.shape(conf)[0])
        ahead = (conf[None, :] > conf[:, None]) | (
            tf.equal(conf[None, :], conf[:, None]) & (idx[None, :] < idx[:, None]))
        rank = tf.reduce_sum(tf.cast(same & ahead, tf.float32), axis=1)
        n_c = tf.reduce_sum(tf.cast(same, tf.float32), axis=1)
        mask |= rank < tf.math.ceil(class_fraction * n_c)
    return tf.stop_gradient(tf.cast(mask, tf.float32))


def pseudo_label_loss(logits, threshold: float = 0.9, class_fraction: float = 0.0):
    r"""Cross-entropy of the target logits against their own hard pseudo-labels::

        L = 1/B sum_i m_i * CE(z_i, argmax_k p_ik)

    with ``m`` from ``pseudo_label_mask`` and the labels and mask under stop-gradient (the
    gradient is the cross-entropy's, towards the current argmax). Returns (loss float32 scalar,
    the fraction of the batch pseudo-labelled).
    """
    logits = tf.cast(logits, tf.float32)
    mask = pseudo_label_mask(logits, threshold, class_fraction)
    labels = tf.stop_gradient(tf.argmax(logits, axis=-1, output_type=tf.int32))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(mask * ce), tf.reduce_mean(mask)
