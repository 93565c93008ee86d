"""Tests for the alignment losses of ddc.losses (CORAL, entropy, IM, MCC, JMMD, adversarial pieces)
against slow, obvious float64 references written with Python loops from the formulas of the spec."""

import math
import zlib

import numpy as np
import pytest
import tensorflow as tf

from ddc.losses import (binary_domain_loss, coral, domain_accuracy, entropy, entropy_weights,
                        gradient_reverse, grl_warmup, information_maximization, jmmd, mcc, mdd_loss,
                        mmd2, multilinear_map, randomized_multilinear_map)

MULTS = (0.25, 0.5, 1.0, 2.0, 4.0)


# --------------------------------------------------------------------- references (float64, loops)
def softmax(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def H(p):
    return -sum(v * math.log(v) for v in p if v > 0)


def argmax(row):
    return max(range(len(row)), key=lambda c: row[c])


def ref_coral(s, t):
    def cov(f):
        n, d = len(f), len(f[0])
        mu = [sum(f[i][a] for i in range(n)) / n for a in range(d)]
        return [[sum((f[i][a] - mu[a]) * (f[i][b] - mu[b]) for i in range(n)) / (n - 1)
                 for b in range(d)] for a in range(d)]
    cs, ct, d = cov(s), cov(t), len(s[0])
    return sum((cs[a][b] - ct[a][b]) ** 2 for a in range(d) for b in range(d)) / (4 * d * d)


def ref_entropy(z):
    return sum(H(softmax(row)) for row in z) / len(z)


def ref_im(z):
    p = [softmax(row) for row in z]
    p_bar = [sum(q[k] for q in p) / len(p) for k in range(len(p[0]))]
    return sum(H(q) for q in p) / len(p) - H(p_bar)


def ref_entropy_weights(z, temperature=1.0):
    raw = [1.0 + math.exp(-H(softmax([v / temperature for v in row]))) for row in z]
    return [len(z) * r / sum(raw) for r in raw]


def ref_mcc(z, temperature=2.5, w=None):
    y = [softmax([v / temperature for v in row]) for row in z]
    w = ref_entropy_weights(z, temperature) if w is None else w
    b, k = len(y), len(y[0])
    c = [[sum(w[i] * y[i][p] * y[i][q] for i in range(b)) for q in range(k)] for p in range(k)]
    col = [sum(c[p][q] for p in range(k)) for q in range(k)]
    c = [[c[p][q] / col[q] for q in range(k)] for p in range(k)]
    return (sum(map(sum, c)) - sum(c[j][j] for j in range(k))) / k


def d2(a, b):
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))


def ref_base(x):
    big_n = len(x)
    return sum(d2(x[i], x[j]) for i in range(big_n) for j in range(big_n) if i != j) / (big_n * (big_n - 1))


def ref_jmmd(layers_s, layers_t, estimator="biased", mults=MULTS, bases=None):
    xs = [list(s) + list(t) for s, t in zip(layers_s, layers_t)]
    bases = [ref_base(x) for x in xs] if bases is None else bases

    def k(i, j):
        out = 1.0
        for x, base in zip(xs, bases):
            out *= sum(math.exp(-d2(x[i], x[j]) / (2 * mu * base)) for mu in mults) / len(mults)
        return out

    def within(idx):
        pairs = [(i, j) for i in idx for j in idx if estimator == "biased" or i != j]
        return sum(k(i, j) for i, j in pairs) / len(pairs)

    n, m = len(layers_s[0]), len(layers_t[0])
    src, tgt = range(n), range(n, n + m)
    return within(src) + within(tgt) - 2.0 * sum(k(i, j) for i in src for j in tgt) / (n * m)


def ref_bce(d_s, d_t, w_s=None, w_t=None):
    def bce(z, y):
        sig = 1.0 / (1.0 + math.exp(-z))
        return -(y * math.log(sig) + (1 - y) * math.log(1 - sig))
    d_s, d_t = np.ravel(d_s), np.ravel(d_t)
    w_s = [1.0] * len(d_s) if w_s is None else w_s
    w_t = [1.0] * len(d_t) if w_t is None else w_t
    total = sum(w * bce(z, 1) for w, z in zip(w_s, d_s)) + sum(w * bce(z, 0) for w, z in zip(w_t, d_t))
    return total / (len(d_s) + len(d_t))


def ref_mdd(l_s, l_t, a_s, a_t, margin=4.0, labels=None):
    y_s, y_t = labels or ([argmax(r) for r in l_s], [argmax(r) for r in l_t])
    src = sum(-math.log(softmax(a)[y]) for a, y in zip(a_s, y_s)) / len(a_s)
    tgt = sum(-math.log(min(1.0 - softmax(a)[y] + 1e-6, 1.0)) for a, y in zip(a_t, y_t)) / len(a_t)
    return margin * src + tgt


def ref_multilinear(f, g):
    b, d, k = len(f), len(f[0]), len(g[0])
    out = np.zeros((b, d * k))
    for n, i, c in np.ndindex(b, d, k):
        out[n, i * k + c] = f[n][i] * g[n][c]
    return out


def ref_randomized(f, g, r_f, r_g):
    r = len(r_f[0])
    return np.array([[sum(f[n][i] * r_f[i][j] for i in range(len(f[0])))
                      * sum(g[n][c] * r_g[c][j] for c in range(len(g[0]))) / math.sqrt(r)
                      for j in range(r)] for n in range(len(f))])


def fd_grad(fn, arrays, eps=1e-4):
    """Central finite differences of the scalar fn(*arrays) (float64 arrays, perturbed in place)."""
    grads = [np.zeros_like(a) for a in arrays]
    for a, g in zip(arrays, grads):
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            hi = fn(*arrays)
            a[idx] = old - eps
            g[idx] = (hi - fn(*arrays)) / (2 * eps)
            a[idx] = old
    return grads


# ------------------------------------------------- cases: fn, reference, frozen reference, inputs
# "fixed"(*x) returns the reference with its stop-gradient pieces evaluated once, at the point x
def _frozen_mcc(temperature):
    def frozen(z):
        w = ref_entropy_weights(z, temperature)  # MCC's sample weights
        return lambda x: ref_mcc(x, temperature, w=w)
    return frozen


def _frozen_mdd(*a):
    labels = ([argmax(r) for r in a[0]], [argmax(r) for r in a[1]])  # argmax of the main logits
    return lambda *b: ref_mdd(*b, labels=labels)


def _jmmd_case(estimator):
    def split(a):
        return list(a[:len(a) // 2]), list(a[len(a) // 2:])

    def frozen(*a):
        bases = [ref_base(list(s) + list(t)) for s, t in zip(*split(a))]  # the bandwidth bases
        return lambda *b: ref_jmmd(*split(b), estimator, bases=bases)

    return dict(fn=lambda *a: jmmd(*split(a), estimator=estimator), ref=lambda *a: ref_jmmd(*split(a), estimator),
                fixed=frozen, lo_scale=100.0, shapes=[(4, 4, (3, 2)), (5, 7, (2, 3)), (6, 3, (4,))],
                make=lambda r, n, m, dims: ([r.normal(size=(n, d)) for d in dims]
                                            + [r.normal(size=(m, d)) + 0.5 for d in dims]))


def _logits(fn, ref, fixed=None, shapes=((1, 4), (4, 3), (7, 5)), **kw):
    return dict(fn=fn, ref=ref, fixed=fixed, shapes=shapes, make=lambda r, b, k: [2.0 * r.normal(size=(b, k))], **kw)


CASES = {
    "coral": dict(fn=coral, ref=ref_coral, lo_scale=100.0, shapes=[(4, 4, 3), (5, 8, 2), (9, 6, 4)],
                  make=lambda r, n, m, d: [r.normal(size=(n, d)), 1.5 * r.normal(size=(m, d)) + 0.3]),
    "entropy": _logits(entropy, ref_entropy),
    "information_maximization": _logits(information_maximization, ref_im, shapes=[(2, 4), (7, 5)]),  # B=1: 0
    "mcc": _logits(mcc, ref_mcc, _frozen_mcc(2.5), shapes=[(2, 4), (4, 3), (7, 5)]),  # B=1: constant
    "mcc_T1": _logits(lambda z: mcc(z, temperature=1.0), lambda z: ref_mcc(z, 1.0), _frozen_mcc(1.0),
                      shapes=[(5, 4)]),
    "entropy_weights": _logits(entropy_weights, ref_entropy_weights, shapes=[(4, 3), (6, 5)], nograd=True),
    "jmmd_biased": _jmmd_case("biased"),
    "jmmd_unbiased": _jmmd_case("unbiased"),
    "grl_warmup": dict(fn=grl_warmup, ref=lambda p: [2 / (1 + math.exp(-10 * v)) - 1 for v in p],
                       shapes=[(6,)], make=lambda r, n: [r.uniform(0, 1, size=n)]),
    "multilinear_map": dict(fn=multilinear_map, ref=ref_multilinear, shapes=[(3, 4, 2), (2, 3, 5)],
                            make=lambda r, b, d, k: [r.normal(size=(b, d)), r.normal(size=(b, k))]),
    "randomized_multilinear_map": dict(  # lowp: only f, g in low precision (R is a fixed float32 matrix)
        fn=randomized_multilinear_map, ref=ref_randomized, lowp=(0, 1), shapes=[(3, 4, 2, 6), (2, 3, 5, 4)],
        make=lambda r, b, d, k, n_r: [r.normal(size=(b, d)), r.normal(size=(b, k)),
                                      r.normal(size=(d, n_r)), r.normal(size=(k, n_r))]),
    "binary_domain_loss": dict(fn=binary_domain_loss, ref=ref_bce, lowp=(0, 1), shapes=[(3, 5), (6, 2)],
                               make=lambda r, n, m: [2 * r.normal(size=n), 2 * r.normal(size=m),
                                                     r.uniform(0, 2, size=n), r.uniform(0, 2, size=m)]),
    "binary_domain_loss_nx1": dict(fn=binary_domain_loss, ref=ref_bce, shapes=[(4, 3)],
                                   make=lambda r, n, m: [r.normal(size=(n, 1)), r.normal(size=(m, 1))]),
    "domain_accuracy": dict(fn=domain_accuracy, nograd=True, shapes=[(5, 4), (8, 8)],  # with exact zeros
                            ref=lambda s, t: (sum(v > 0 for v in s) + sum(v <= 0 for v in t)) / (len(s) + len(t)),
                            make=lambda r, n, m: [r.normal(size=n) * (r.random(n) > 0.3),
                                                  r.normal(size=m) * (r.random(m) > 0.3)]),
    "mdd_loss": dict(fn=mdd_loss, ref=ref_mdd, fixed=_frozen_mdd, shapes=[(4, 4, 3), (5, 3, 6)],
                     make=lambda r, n, m, k: [2 * r.normal(size=(n, k)), 2 * r.normal(size=(m, k)),
                                              2 * r.normal(size=(n, k)), 2 * r.normal(size=(m, k))]),
}
VALUE_CASES = [(name, shape) for name, case in CASES.items() for shape in case["shapes"]]


def _inputs(name, shape):
    rng = np.random.default_rng(zlib.crc32(repr((name, shape)).encode()))
    return [np.asarray(x, np.float32) for x in CASES[name]["make"](rng, *shape)]


# --------------------------------------------------------------------- every case
@pytest.mark.parametrize("name,shape", VALUE_CASES)
def test_value_matches_loop_reference(name, shape):
    """float32 value and shape equal the float64 loop reference's; CORAL >= 0."""
    case, xs = CASES[name], _inputs(name, shape)
    got = case["fn"](*[tf.constant(x) for x in xs])
    want = np.asarray(case["ref"](*[x.astype(np.float64) for x in xs]))
    assert got.dtype == tf.float32 and got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert name != "coral" or float(got) >= 0.0


@pytest.mark.parametrize("name,shape", VALUE_CASES)
def test_gradient_matches_finite_differences(name, shape):
    """Autodiff gradient (arbitrary upstream gradient) equals central differences of the reference with
    its stop-gradient pieces frozen (MCC weights, JMMD bandwidths, MDD labels: zero gradient there);
    entropy_weights (stop-gradient) and domain_accuracy pass no gradient at all."""
    case, xs = CASES[name], _inputs(name, shape)
    ts = [tf.constant(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(ts)
        out = case["fn"](*ts)
    u = np.random.default_rng(1).uniform(0.5, 1.5, size=out.shape)
    grads = tape.gradient(out, ts, output_gradients=tf.constant(u, tf.float32))
    if case.get("nograd"):
        assert all(g is None or not np.any(g.numpy()) for g in grads)
        return
    x64 = [x.astype(np.float64) for x in xs]
    frozen = (case.get("fixed") or (lambda *a: case["ref"]))(*x64)
    fd = fd_grad(lambda *a: float(np.sum(u * np.asarray(frozen(*a)))), x64)
    scale = max(np.abs(g).max() for g in fd)
    assert scale > 1e-4  # not a vacuous comparison
    for g, want in zip(grads, fd):  # None (no gradient path) must mean a zero reference gradient
        np.testing.assert_allclose(np.zeros_like(want) if g is None else g.numpy(), want,
                                   rtol=2e-3, atol=2e-3 * scale)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_low_precision_inputs_give_the_float32_result(name, dtype):
    """float16/bfloat16 inputs (x100 for CORAL/JMMD, so float16 sums of squares would overflow) give a
    finite float32 result equal to the float32 result on the same rounded inputs."""
    case = CASES[name]
    xs = [x * case.get("lo_scale", 1.0) for x in _inputs(name, case["shapes"][-1])]
    lo = [tf.cast(x, dtype) if i in case.get("lowp", range(len(xs))) else tf.constant(x) for i, x in enumerate(xs)]
    got, want = case["fn"](*lo), case["fn"](*[tf.cast(x, tf.float32) for x in lo])
    assert got.dtype == tf.float32 and np.isfinite(got.numpy()).all()
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- degenerate inputs, properties
@pytest.mark.parametrize("shape_s,shape_t", [((1, 3), (4, 3)), ((4, 3), (1, 3))])
def test_coral_static_batch_of_one_raises_with_shapes(shape_s, shape_t):
    """A static batch of one has no covariance: ValueError naming both shapes."""
    with pytest.raises(ValueError) as err:
        coral(tf.zeros(shape_s), tf.ones(shape_t))
    assert str(tf.TensorShape(shape_s)) in str(err.value) and str(tf.TensorShape(shape_t)) in str(err.value)


def test_coral_dynamic_batch_of_one_is_finite():
    """A batch of one behind a [None, d] signature gives a finite float32 loss and finite gradients."""
    spec = tf.TensorSpec([None, 3], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def value_and_grad(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = coral(a, b)
        return loss, tape.gradient(loss, [a, b])

    rng = np.random.default_rng(2)
    for n, m in [(1, 5), (5, 1), (1, 1)]:
        loss, grads = value_and_grad(*(rng.normal(size=(b, 3)).astype(np.float32) for b in (n, m)))
        assert loss.dtype == tf.float32 and np.isfinite(loss.numpy())
        assert all(np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize("b,k", [(1, 2), (5, 4)])
@pytest.mark.parametrize("fn,want", [(entropy, lambda z: math.log(z.shape[1])),
                                     (information_maximization, lambda z: 0.0), (mcc, ref_mcc)])
def test_uniform_logits(fn, want, b, k):
    """All-zero logits: entropy = log K, IM = 0, MCC = its reference; finite gradients."""
    z = tf.zeros([b, k])
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = fn(z)
    np.testing.assert_allclose(float(loss), want(np.zeros((b, k))), rtol=1e-6, atol=1e-7)
    assert np.isfinite(tape.gradient(loss, z).numpy()).all()


@pytest.mark.parametrize("fn,kind", [(coral, "same"), (coral, "coincident"),
                                     (lambda *a: jmmd(a[:2], a[2:]), "same"),
                                     (lambda *a: jmmd(a[:2], a[2:]), "coincident"),
                                     (lambda *a: jmmd(a[:2], a[2:], estimator="unbiased"), "coincident")])
def test_identical_features_give_zero_with_finite_gradient(fn, kind):
    """Source == target (or every point the same, bandwidth base 0): loss 0, gradient finite (0 here)."""
    rng = np.random.default_rng(3)
    layers = ([rng.normal(size=(6, 3)), rng.normal(size=(6, 2))] if kind == "same" else
              [np.tile(100 * rng.normal(size=(1, d)), (6, 1)) for d in (3, 2)])
    layers = layers[:1] if fn is coral else layers
    args = [tf.constant(x, tf.float32) for x in layers + layers]  # distinct tensors, equal values
    with tf.GradientTape() as tape:
        tape.watch(args)
        loss = fn(*args)
    assert abs(float(loss)) <= 1e-6
    for g in tape.gradient(loss, args):
        assert np.isfinite(g.numpy()).all()
        np.testing.assert_allclose(g.numpy(), 0.0, atol=1e-5)


@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0, 10.0, 100.0])
def test_mcc_is_in_unit_interval(scale):
    """MCC lies in [0, 1) from uniform to near one-hot predictions."""
    assert 0.0 <= float(mcc(scale * np.random.default_rng(4).normal(size=(8, 5)).astype(np.float32))) < 1.0


@pytest.mark.parametrize("mults", [MULTS, (1.0, 8.0)])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_jmmd_one_layer_equals_mmd2(estimator, mults):
    """With one layer JMMD is exactly mmd2 (and both match the reference)."""
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(5, 4)).astype(np.float32), (rng.normal(size=(7, 4)) + 0.5).astype(np.float32)
    got = float(jmmd([s], [t], estimator=estimator, multipliers=mults))
    assert got == float(mmd2(s, t, estimator=estimator, multipliers=mults))
    np.testing.assert_allclose(got, ref_jmmd([s], [t], estimator, mults), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", ["w_s", "w_t"])
def test_binary_domain_loss_one_sided_weights(side):
    """Each weight vector defaults to 1 on its own: giving only w_s (or only w_t) weights that side."""
    d_s, d_t, w_s, w_t = _inputs("binary_domain_loss", (3, 5))
    w = {"w_s": w_s} if side == "w_s" else {"w_t": w_t}
    got = binary_domain_loss(d_s, d_t, **{key: tf.constant(v) for key, v in w.items()})
    want = ref_bce(d_s.astype(np.float64), d_t.astype(np.float64), **{k: v.astype(np.float64) for k, v in w.items()})
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_gradient_reverse():
    """Forward is x unchanged; backward is exactly -coeff x an arbitrary upstream gradient, for coeff
    tensors fed to one traced tf.function (changing coeff does not retrace)."""
    rng = np.random.default_rng(7)
    x, u = (tf.constant(rng.normal(size=(4, 3)), tf.float32) for _ in range(2))

    @tf.function
    def forward_and_grad(x, u, c):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = gradient_reverse(x, c)
        return y, tape.gradient(y, x, output_gradients=u)

    for c in (0.3, 0.0, 2.5):
        y, g = forward_and_grad(x, u, tf.constant(c, tf.float32))
        assert y.dtype == x.dtype
        np.testing.assert_array_equal(y.numpy(), x.numpy())
        np.testing.assert_allclose(g.numpy(), -np.float32(c) * u.numpy(), rtol=1e-6, atol=0)
    assert forward_and_grad.experimental_get_tracing_count() == 1
