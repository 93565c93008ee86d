"""MMD² between feature batches (DDC, DAN) and JAN's joint MMD² over several layers.

``mmd2`` estimates the squared maximum mean discrepancy between a source batch
and a target batch of features, with a multi-bandwidth Gaussian kernel (DAN
style) or the linear kernel of the original DDC paper.

Traps this module avoids on purpose:

* It returns MMD² itself. MMD² is already a squared distance; squaring it again
  (or taking a square root) changes its scale and its gradients.
* The Gaussian bandwidths come from the batch (the mean squared pairwise
  distance) under ``tf.stop_gradient``, so the network cannot lower the loss by
  inflating the bandwidth, i.e. by blowing up its features.
* Inputs of any float dtype are cast to float32 before any arithmetic, so sums
  of squares from float16 features (max 65504) cannot overflow to inf.
* Squared distances come from a single Gram matrix of the centred, concatenated
  batch, clamped at 0 with an exact-zero diagonal; no square root is taken, so
  identical inputs give a loss of exactly 0 with finite gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

KERNELS = ("gaussian", "linear")
ESTIMATORS = ("biased", "unbiased", "linear")

# A bandwidth base below this means all points coincide (at float32 precision for
# features of ordinary scale). Every squared distance is then ~0, so any positive
# bandwidth yields the same kernel values; base 1 keeps 1 / sigma^2 and the
# gradients small instead of dividing by ~0.
_MIN_BASE = 1e-20


def _positive(name: str, values: Sequence[float]) -> tf.Tensor:
    vals = [float(v) for v in values]
    if not vals or min(vals) <= 0.0:
        raise ValueError(f"mmd2: {name} must be a non-empty sequence of positive values; got {vals}")
    return tf.constant(vals, tf.float32)


def _check_shapes(f_s: tf.Tensor, f_t: tf.Tensor, kernel: str, estimator: str) -> None:
    """Raises ValueError on static shapes that cannot work; unknown dims are skipped."""

    def fail(why: str) -> ValueError:
        return ValueError(f"mmd2: {why}; got f_s shape {f_s.shape} and f_t shape {f_t.shape}")

    if (f_s.shape.rank is not None and f_s.shape.rank != 2) or (
        f_t.shape.rank is not None and f_t.shape.rank != 2
    ):
        raise fail("f_s and f_t must be rank 2, [batch, features]")
    if f_s.shape.rank is None or f_t.shape.rank is None:
        return
    (n, d_s), (m, d_t) = f_s.shape.as_list(), f_t.shape.as_list()
    if d_s is not None and d_t is not None and d_s != d_t:
        raise fail("f_s and f_t must have the same feature width")
    if n == 0 or m == 0:
        raise fail("batches must not be empty")
    if kernel != "gaussian":
        return
    if estimator == "unbiased" and ((n is not None and n < 2) or (m is not None and m < 2)):
        raise fail("the unbiased estimator needs at least 2 samples per batch")
    if estimator == "linear" and n is not None and m is not None and (n != m or n % 2):
        raise fail("the linear estimator needs equal, even batch sizes")


def _gaussian(d2: tf.Tensor, sigma2: tf.Tensor) -> tf.Tensor:
    """Mean over bandwidths of exp(-d2 / (2 sigma2_k)); d2 of any shape, sigma2 [K]."""
    scale = 1.0 / (2.0 * sigma2)
    return tf.reduce_mean(tf.exp(-d2[..., None] * scale), axis=-1)


def _sigma2(base: tf.Tensor, multipliers, bandwidths) -> tf.Tensor:
    if bandwidths is not None:
        return _positive("bandwidths", bandwidths)
    base = tf.stop_gradient(base)
    base = tf.where(base > _MIN_BASE, base, tf.ones_like(base))
    return _positive("multipliers", multipliers) * base


def _offdiag_mean(k: tf.Tensor) -> tf.Tensor:
    n = tf.cast(tf.shape(k)[0], tf.float32)
    return tf.reduce_sum(tf.linalg.set_diag(k, tf.zeros_like(k[:, 0]))) / (n * (n - 1.0))


def mmd2(
    f_s,
    f_t,
    *,
    kernel: str = "gaussian",
    multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    bandwidths: Sequence[float] | None = None,
    estimator: str = "biased",
) -> tf.Tensor:
    r"""Squared maximum mean discrepancy between source and target features.

    With the Gaussian kernel
    ``k(a, b) = (1/K) sum_k exp(-||a - b||^2 / (2 sigma_k^2))`` (so ``k(a, a) = 1``),
    source ``s_1..s_n`` and target ``t_1..t_m``:

    * ``"biased"`` (V-statistic, always >= 0)::

        MMD² = 1/n² sum_{i,j} k(s_i, s_j) + 1/m² sum_{i,j} k(t_i, t_j)
               - 2/(nm) sum_{i,j} k(s_i, t_j)

    * ``"unbiased"`` (U-statistic; can be slightly negative)::

        MMD² = 1/(n(n-1)) sum_{i!=j} k(s_i, s_j) + 1/(m(m-1)) sum_{i!=j} k(t_i, t_j)
               - 2/(nm) sum_{i,j} k(s_i, t_j)

    * ``"linear"`` (Gretton et al. 2012, as in DAN; n = m even, O(n) cost;
      can be negative, it is only unbiased)::

        MMD² = 2/n sum_{i<n/2} [k(s_2i, s_2i+1) + k(t_2i, t_2i+1)
                                - k(s_2i, t_2i+1) - k(s_2i+1, t_2i)]

    Bandwidths: ``sigma_k² = multipliers[k] * base``, where ``base`` is the mean
    squared distance over all pairs of distinct points of ``[f_s; f_t]``
    (sum of the (n+m)x(n+m) squared-distance matrix / ((n+m)(n+m-1))); for the
    linear estimator, the mean over the 2n pairs it evaluates. ``base`` is under
    ``tf.stop_gradient``; if it is ~0 (all points coincide) the result is 0.

    With ``kernel="linear"`` the loss is the original DDC distance
    ``||mean_i s_i - mean_j t_j||²`` and ``estimator`` is ignored.

    Args:
      f_s: Source features, shape [n, d], any float dtype.
      f_t: Target features, shape [m, d], any float dtype.
      kernel: One of "gaussian", "linear".
      multipliers: Bandwidth multipliers of ``base``, shape [K], all > 0.
      bandwidths: Fixed ``sigma_k²`` values, shape [K], all > 0; replaces
        ``multipliers * base`` when given.
      estimator: One of "biased", "unbiased", "linear" (Gaussian kernel only).

    Returns:
      A float32 scalar tensor, computed in float32 whatever the input dtype.

    Raises:
      ValueError: On an unknown kernel or estimator, non-positive bandwidths or
        multipliers, or static shapes that do not fit (rank != 2, differing
        feature widths, empty batches, n or m < 2 for "unbiased", n != m or odd
        n for "linear"); the message gives both shapes.

    Example:
      >>> x = tf.random.normal([8, 16])
      >>> y = tf.random.normal([8, 16]) + 3.0
      >>> bool(mmd2(x, y) > mmd2(x, x + 0.1))
      True
      >>> mmd2(x, y, estimator="linear").dtype
      tf.float32
    """
    if kernel not in KERNELS:
        raise ValueError(f"mmd2: kernel must be one of {KERNELS}; got {kernel!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"mmd2: estimator must be one of {ESTIMATORS}; got {estimator!r}")
    f_s = tf.cast(tf.convert_to_tensor(f_s), tf.float32)
    f_t = tf.cast(tf.convert_to_tensor(f_t), tf.float32)
    _check_shapes(f_s, f_t, kernel, estimator)

    if kernel == "linear":
        delta = tf.reduce_mean(f_s, axis=0) - tf.reduce_mean(f_t, axis=0)
        return tf.reduce_sum(tf.square(delta))

    if estimator == "linear":
        s0, s1, t0, t1 = f_s[0::2], f_s[1::2], f_t[0::2], f_t[1::2]
        a = tf.concat([s0, t0, s0, s1], axis=0)
        b = tf.concat([s1, t1, t1, t0], axis=0)
        d2 = tf.reduce_sum(tf.square(a - b), axis=1)  # [2n]: the only pairs evaluated
        k = tf.reshape(_gaussian(d2, _sigma2(tf.reduce_mean(d2), multipliers, bandwidths)), [4, -1])
        return tf.reduce_mean(k[0] + k[1] - k[2] - k[3])

    return _quadratic(_joint_kernel(f_s, f_t, multipliers, bandwidths), tf.shape(f_s)[0], estimator)


def _joint_kernel(f_s, f_t, multipliers, bandwidths) -> tf.Tensor:
    """The multi-bandwidth Gaussian kernel matrix of ``[f_s; f_t]``, [n+m, n+m]."""
    x = tf.concat([f_s, f_t], axis=0)
    x = x - tf.reduce_mean(x, axis=0, keepdims=True)  # translation-invariant, less cancellation
    gram = tf.matmul(x, x, transpose_b=True)
    sq = tf.linalg.diag_part(gram)
    d2 = tf.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    d2 = tf.linalg.set_diag(d2, tf.zeros_like(sq))  # [n+m, n+m]
    total = tf.cast(tf.shape(x)[0], tf.float32)
    base = tf.reduce_sum(d2) / (total * (total - 1.0))
    return _gaussian(d2, _sigma2(base, multipliers, bandwidths))


def _quadratic(k: tf.Tensor, n, estimator: str) -> tf.Tensor:
    """MMD² from the kernel matrix of ``[source (n); target]``: biased or unbiased."""
    k_ss, k_tt, k_st = k[:n, :n], k[n:, n:], k[:n, n:]
    if estimator == "biased":
        return tf.reduce_mean(k_ss) + tf.reduce_mean(k_tt) - 2.0 * tf.reduce_mean(k_st)
    return _offdiag_mean(k_ss) + _offdiag_mean(k_tt) - 2.0 * tf.reduce_mean(k_st)


def jmmd(layers_s: Sequence, layers_t: Sequence, *, estimator: str = "biased",
         multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> tf.Tensor:
    r"""Joint MMD² of JAN (Long et al. 2017) over L layers.

    With ``z_i = (z_i^1, ..., z_i^L)`` the activations of sample i in each layer, the joint
    kernel is the product of each layer's multi-bandwidth Gaussian kernel of :func:`mmd2`::

        k(z_i, z_j) = prod_l (1/K) sum_k exp(-||z_i^l - z_j^l||² / (2 sigma_lk²))
        sigma_lk²   = multipliers[k] * base_l   (base_l of layer l's batch, as in mmd2,
                                                 under stop-gradient)

    and the estimate is ``mmd2``'s biased or unbiased estimator with that kernel. With one
    layer it equals ``mmd2(layers_s[0], layers_t[0], estimator=..., multipliers=...)``.

    Args:
      layers_s: L source tensors, layer l of shape [n, d_l], any float dtype.
      layers_t: L target tensors, layer l of shape [m, d_l].
      estimator: "biased" or "unbiased".
      multipliers: Bandwidth multipliers, shape [K], all > 0.

    Returns:
      A float32 scalar tensor.

    Raises:
      ValueError: no layers, differing layer counts, an unknown estimator, or shapes that do
        not fit (as in ``mmd2``; the message gives the shapes).
    """
    if estimator not in ("biased", "unbiased"):
        raise ValueError(f"jmmd: estimator must be 'biased' or 'unbiased'; got {estimator!r}")
    if not layers_s or len(layers_s) != len(layers_t):
        raise ValueError(f"jmmd: need the same number (>= 1) of source and target layers; got "
                         f"{len(layers_s)} and {len(layers_t)}")
    n_s = {tf.convert_to_tensor(f).shape[0] for f in layers_s} - {None}
    n_t = {tf.convert_to_tensor(f).shape[0] for f in layers_t} - {None}
    if len(n_s) > 1 or len(n_t) > 1:
        raise ValueError(f"jmmd: every layer needs the same batch; got source shapes "
                         f"{[tf.convert_to_tensor(f).shape for f in layers_s]} and target shapes "
                         f"{[tf.convert_to_tensor(f).shape for f in layers_t]}")
    k = None
    for f_s, f_t in zip(layers_s, layers_t):
        f_s = tf.cast(tf.convert_to_tensor(f_s), tf.float32)
        f_t = tf.cast(tf.convert_to_tensor(f_t), tf.float32)
        _check_shapes(f_s, f_t, "gaussian", estimator)
        k_l = _joint_kernel(f_s, f_t, multipliers, None)
        k = k_l if k is None else k * k_l
    return _quadratic(k, tf.shape(tf.convert_to_tensor(layers_s[0]))[0], estimator)


def bandwidth_base(f_s, f_t) -> tf.Tensor:
    """The Gaussian kernel's bandwidth ``base`` of ``mmd2`` (quadratic estimators): the mean
    squared distance between distinct points of ``[f_s; f_t]``, float32, no gradient.

    Logged during training: with the bandwidth under stop-gradient, MMD² also falls when every
    feature shrinks, which shows up as a falling base and feature norm.
    """
    x = tf.concat([tf.cast(f_s, tf.float32), tf.cast(f_t, tf.float32)], axis=0)
    x = tf.stop_gradient(x - tf.reduce_mean(x, axis=0, keepdims=True))
    total = tf.cast(tf.shape(x)[0], tf.float32)
    # sum_{i,j} ||x_i - x_j||^2 = 2 N sum_i ||x_i||^2 for centred x
    return 2.0 * total * tf.reduce_sum(tf.square(x)) / (total * (total - 1.0))
