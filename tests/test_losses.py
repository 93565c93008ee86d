"""Tests for ddc.losses against a slow, obvious float64 reference."""

import math

import numpy as np
import pytest
import tensorflow as tf

from ddc.losses import classification_loss, mmd2

MULTS = (0.25, 0.5, 1.0, 2.0, 4.0)
GAUSSIAN = [("gaussian", "biased"), ("gaussian", "unbiased"), ("gaussian", "linear")]
ALL = GAUSSIAN + [("linear", "biased")]


# --------------------------------------------------------------------- reference
def _d2(a, b):
    return sum((float(a[c]) - float(b[c])) ** 2 for c in range(len(a)))


def ref_pairs(s, t):
    """The (a, b, sign) pairs of the linear-time estimator."""
    out = []
    for i in range(len(s) // 2):
        out += [(s[2 * i], s[2 * i + 1], 1), (t[2 * i], t[2 * i + 1], 1)]
        out += [(s[2 * i], t[2 * i + 1], -1), (s[2 * i + 1], t[2 * i], -1)]
    return out


def ref_base(s, t, estimator="biased"):
    if estimator == "linear":
        pairs = ref_pairs(s, t)
        return sum(_d2(a, b) for a, b, _ in pairs) / len(pairs)
    x = list(s) + list(t)
    big_n = len(x)
    total = sum(_d2(x[i], x[j]) for i in range(big_n) for j in range(big_n) if i != j)
    return total / (big_n * (big_n - 1))


def ref_mmd2(s, t, kernel="gaussian", estimator="biased", multipliers=MULTS, bandwidths=None):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    n, m, d = len(s), len(t), s.shape[1]
    if kernel == "linear":
        diff = [sum(s[i][c] for i in range(n)) / n - sum(t[j][c] for j in range(m)) / m for c in range(d)]
        return sum(v * v for v in diff)
    if bandwidths is None:
        base = ref_base(s, t, estimator)
        bandwidths = [mu * base for mu in multipliers]

    def k(a, b):
        dist = _d2(a, b)
        return sum(math.exp(-dist / (2.0 * sig2)) for sig2 in bandwidths) / len(bandwidths)

    if estimator == "linear":
        return sum(sign * k(a, b) for a, b, sign in ref_pairs(s, t)) / (n // 2)
    cross = sum(k(s[i], t[j]) for i in range(n) for j in range(m)) / (n * m)
    if estimator == "biased":
        k_ss = sum(k(s[i], s[j]) for i in range(n) for j in range(n)) / n**2
        k_tt = sum(k(t[i], t[j]) for i in range(m) for j in range(m)) / m**2
    else:
        k_ss = sum(k(s[i], s[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        k_tt = sum(k(t[i], t[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return k_ss + k_tt - 2.0 * cross


def _pair(n, m, d, shift=1.0, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, d)) * scale
    t = rng.normal(size=(m, d)) * scale + shift * scale
    return s.astype(np.float32), t.astype(np.float32)


def _value_and_grad(s, t, **kw):
    s, t = tf.constant(s), tf.constant(t)
    with tf.GradientTape() as tape:
        tape.watch([s, t])
        loss = mmd2(s, t, **kw)
    return loss, tape.gradient(loss, [s, t])


# ----------------------------------------------------------- against reference
@pytest.mark.parametrize(
    "kernel,estimator,n,m,d",
    [(k, e, n, m, d) for n, m, d in [(4, 4, 3), (6, 9, 5), (8, 8, 256)] for k, e in ALL if e != "linear" or n == m],
)
def test_matches_reference_float32(kernel, estimator, n, m, d):
    s, t = _pair(n, m, d, shift=0.3, seed=n + d)
    got = mmd2(s, t, kernel=kernel, estimator=estimator)
    assert got.dtype == tf.float32 and got.shape == ()
    want = ref_mmd2(s, t, kernel, estimator)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("kernel,estimator", ALL)
def test_low_precision_inputs_do_not_overflow(dtype, kernel, estimator):
    rng = np.random.default_rng(1)
    s = rng.uniform(-300, 300, size=(8, 256))
    t = rng.uniform(-300, 300, size=(8, 256)) + 60.0
    s_lo, t_lo = tf.cast(s, dtype), tf.cast(t, dtype)
    s64, t64 = (np.asarray(v.numpy()).astype(np.float64) for v in (s_lo, t_lo))
    # Precondition: squared norms and distances are far beyond the float16 max (65504).
    assert (s64**2).sum(1).min() > 100 * float(np.finfo(np.float16).max)
    got = float(mmd2(s_lo, t_lo, kernel=kernel, estimator=estimator))
    want = ref_mmd2(s64, t64, kernel, estimator)
    assert math.isfinite(got) and got != 0.0
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
def test_fixed_bandwidths_match_reference(estimator):
    s, t = _pair(6, 6, 4, shift=0.5, seed=3)
    bw = (0.5, 3.0, 12.0)
    got = mmd2(s, t, bandwidths=bw, estimator=estimator)
    np.testing.assert_allclose(float(got), ref_mmd2(s, t, "gaussian", estimator, bandwidths=bw), rtol=1e-5)


def test_multipliers_match_reference():
    s, t = _pair(5, 7, 3, seed=4)
    got = mmd2(s, t, multipliers=(1.0, 8.0))
    np.testing.assert_allclose(float(got), ref_mmd2(s, t, multipliers=(1.0, 8.0)), rtol=1e-5)


# ------------------------------------------------------------------ properties
@pytest.mark.parametrize("kernel,estimator", [("gaussian", "biased"), ("gaussian", "linear"), ("linear", "biased")])
def test_zero_for_identical_sets(kernel, estimator):
    x, _ = _pair(16, 16, 8, scale=5.0, seed=5)
    assert abs(float(mmd2(x, x, kernel=kernel, estimator=estimator))) < 1e-6


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("n,m,d,seed", [(4, 4, 3, 0), (6, 9, 5, 1), (32, 16, 2, 2)])
def test_biased_is_non_negative(kernel, n, m, d, seed):
    s, t = _pair(n, m, d, shift=0.0, seed=seed)
    assert float(mmd2(s, t, kernel=kernel)) >= 0.0


@pytest.mark.parametrize("bandwidths", [None, (2.0,)])
@pytest.mark.parametrize("kernel,estimator", ALL)
def test_grows_as_target_shifts_away(kernel, estimator, bandwidths):
    s, t = _pair(64, 64, 4, shift=0.0, seed=6)
    t = t - t.mean(0) + s.mean(0)  # same empirical mean: the linear kernel is exactly c² d
    vals = [float(mmd2(s, t + c, kernel=kernel, estimator=estimator, bandwidths=bandwidths)) for c in (0, 0.5, 1, 2)]
    assert all(b > a for a, b in zip(vals, vals[1:])), vals


@pytest.mark.parametrize("kernel,estimator", ALL)
def test_invariant_to_a_large_common_offset(kernel, estimator):
    s, t = _pair(8, 8, 64, shift=0.5, seed=13)
    near = float(mmd2(s, t, kernel=kernel, estimator=estimator))
    far = float(mmd2(s + 1000.0, t + 1000.0, kernel=kernel, estimator=estimator))
    np.testing.assert_allclose(far, near, rtol=1e-3, atol=1e-5)  # float32 inputs near 1000 round at 6e-5


@pytest.mark.parametrize("kernel,estimator", ALL)
def test_symmetric(kernel, estimator):
    s, t = _pair(8, 8, 6, seed=7)
    ab = float(mmd2(s, t, kernel=kernel, estimator=estimator))
    ba = float(mmd2(t, s, kernel=kernel, estimator=estimator))
    np.testing.assert_allclose(ab, ba, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kernel,estimator", ALL)
def test_gradient_step_lowers_loss(kernel, estimator):
    s, t = _pair(16, 16, 5, shift=1.0, seed=8)
    loss, (g_s, g_t) = _value_and_grad(s, t, kernel=kernel, estimator=estimator)
    assert np.isfinite(g_s.numpy()).all() and np.isfinite(g_t.numpy()).all()
    assert np.abs(g_t.numpy()).max() > 0
    stepped = mmd2(s, t - 0.5 * g_t.numpy(), kernel=kernel, estimator=estimator)
    assert float(stepped) < float(loss)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16])
@pytest.mark.parametrize("kernel,estimator", ALL)
def test_degenerate_input_is_exactly_zero_with_finite_gradient(dtype, kernel, estimator):
    row = np.random.default_rng(9).uniform(-300, 300, size=(1, 64))
    x = tf.cast(np.tile(row, (8, 1)), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = mmd2(x, x, kernel=kernel, estimator=estimator)
    grad = tape.gradient(loss, x)
    assert float(loss) == 0.0
    # All points coincide: a minimum, so the true gradient is 0.
    np.testing.assert_allclose(tf.cast(grad, tf.float32).numpy(), 0.0, atol=1e-6)


@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
def test_bandwidth_is_under_stop_gradient(estimator):
    s, t = _pair(8, 8, 3, shift=0.7, seed=10)
    base = ref_base(s.astype(np.float64), t.astype(np.float64), estimator)
    _, grad_auto = _value_and_grad(s, t, estimator=estimator)
    _, grad_fixed = _value_and_grad(s, t, estimator=estimator, bandwidths=[mu * base for mu in MULTS])
    for a, b in zip(grad_auto, grad_fixed):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kernel,estimator", ALL)
def test_graph_and_xla_match_eager(kernel, estimator):
    s, t = _pair(8, 8, 5, seed=11)

    def f(a, b):
        return mmd2(a, b, kernel=kernel, estimator=estimator)

    eager = float(f(s, t))
    np.testing.assert_allclose(float(tf.function(f)(s, t)), eager, rtol=1e-5)
    np.testing.assert_allclose(float(tf.function(f, jit_compile=True)(s, t)), eager, rtol=1e-5)
    spec = tf.TensorSpec([None, 5], tf.float32)  # unknown batch: static checks skipped
    np.testing.assert_allclose(float(tf.function(f, input_signature=[spec, spec])(s, t)), eager, rtol=1e-5)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "shape_s,shape_t,kw",
    [
        ((4,), (4, 3), {}),
        ((2, 4, 3), (4, 3), {}),
        ((4, 3), (4, 5), {}),
        ((4, 3), (4, 5), {"kernel": "linear"}),
        ((0, 3), (4, 3), {}),
        ((4, 3), (0, 3), {"kernel": "linear"}),
        ((1, 3), (4, 3), {"estimator": "unbiased"}),
        ((4, 3), (1, 3), {"estimator": "unbiased"}),
        ((5, 3), (5, 3), {"estimator": "linear"}),
        ((4, 3), (6, 3), {"estimator": "linear"}),
    ],
)
def test_bad_shapes_raise_with_shapes_in_message(shape_s, shape_t, kw):
    with pytest.raises(ValueError) as err:
        mmd2(tf.zeros(shape_s), tf.zeros(shape_t), **kw)
    assert str(tf.TensorShape(shape_s)) in str(err.value) and str(tf.TensorShape(shape_t)) in str(err.value)


def test_bad_shapes_raise_inside_tf_function():
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        tf.function(lambda a, b: mmd2(a, b, estimator="linear"))(tf.zeros([5, 3]), tf.zeros([5, 3]))


@pytest.mark.parametrize(
    "kw,allowed",
    [
        ({"kernel": "rbf"}, ["gaussian", "linear"]),
        ({"estimator": "quadratic"}, ["biased", "unbiased", "linear"]),
        ({"bandwidths": (1.0, 0.0)}, ["positive"]),
        ({"multipliers": ()}, ["positive"]),
    ],
)
def test_bad_options_raise(kw, allowed):
    with pytest.raises(ValueError) as err:
        mmd2(tf.zeros([4, 3]), tf.ones([4, 3]), **kw)
    assert all(word in str(err.value) for word in allowed)


# --------------------------------------------------------- classification loss
@pytest.mark.parametrize("dtype", [tf.float32, tf.float16])
def test_classification_loss_matches_numpy(dtype):
    rng = np.random.default_rng(12)
    logits = tf.cast(rng.normal(size=(6, 4)) * 3, dtype)
    labels = np.array([0, 3, 1, 2, 2, 0], np.int64)
    z = tf.cast(logits, tf.float64).numpy()
    log_softmax = z - z.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    want = -log_softmax[np.arange(6), labels].mean()
    got = classification_loss(labels, logits)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_bandwidth_base_matches_double_loop():
    from ddc.losses import bandwidth_base

    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(3, 4)) + 2.0
    x = np.concatenate([a, b])
    ref = np.mean([np.sum((x[i] - x[j]) ** 2) for i in range(8) for j in range(8) if i != j])
    np.testing.assert_allclose(float(bandwidth_base(a, b)), ref, rtol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_smoothed_cross_entropy_matches_numpy(eps):
    from ddc.losses import source_cross_entropy

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 4)) * 2
    labels = np.array([1, 0, 3, 3, 2])
    want = []
    for z, y in zip(logits, labels):  # one sample at a time, targets written out
        p = np.exp(z) / np.exp(z).sum()
        target = [(1 - eps) * (k == y) + eps / 4 for k in range(4)]
        want.append(-sum(t * np.log(pk) for t, pk in zip(target, p)))
    got = source_cross_entropy(labels, tf.constant(logits, tf.float32), eps)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
