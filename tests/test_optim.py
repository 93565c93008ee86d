"""The fused optimizer update: equal to Keras's own ``update_step`` and to numpy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ddc.config import TrainConfig
from ddc.train.optim import make_optimizer

SHAPES = [(3, 4), (5,), (2, 3, 2)]


def _grads(steps, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(steps)]


def _init(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def _run(cfg, grads, *, fused, mult=1.0, graph=True, nesterov=False):
    """Applies ``grads`` (one list per step) with ``make_optimizer``; variable 0 is slow."""
    variables = [tf.Variable(w) for w in _init()]
    step = tf.Variable(0, dtype=tf.int64)
    opt = make_optimizer(cfg, step, variables, variables[:1], mult, loss_scale=False, fused=fused)
    if nesterov:
        opt.nesterov = True

    def apply(g):
        opt.apply(g, variables)

    fn = tf.function(apply) if graph else apply
    for g in grads:
        fn([tf.constant(x) for x in g])
        step.assign_add(1)
    return [v.numpy() for v in variables], opt


def _adam_reference(grads, lr_at, mult, b1=0.9, b2=0.999, eps=1e-7):
    """Adam (Kingma & Ba, with Keras's epsilon placement), the slow obvious way, float64."""
    ws = [w.astype(np.float64) for w in _init()]
    ms = [np.zeros_like(w) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    for t, g_t in enumerate(grads, start=1):
        for i, g in enumerate(g_t):
            lr = lr_at(t - 1) * (mult if i == 0 else 1.0)
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            m_hat = ms[i] / (1 - b1 ** t)
            v_hat = vs[i] / (1 - b2 ** t)
            # Keras: lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps) == lr m_hat / (sqrt(v_hat) + eps')
            ws[i] = ws[i] - lr * m_hat / (np.sqrt(v_hat) + eps / np.sqrt(1 - b2 ** t))
    return ws


def _sgd_reference(grads, lr_at, mult, momentum, nesterov):
    ws = [w.astype(np.float64) for w in _init()]
    vel = [np.zeros_like(w) for w in ws]
    for t, g_t in enumerate(grads):
        for i, g in enumerate(g_t):
            lr = lr_at(t) * (mult if i == 0 else 1.0)
            vel[i] = momentum * vel[i] - lr * g
            ws[i] = ws[i] + (momentum * vel[i] - lr * g if nesterov else vel[i])
    return ws


def _inv_lr(cfg):
    return lambda t: cfg.lr * (1.0 + 10.0 * min(t / cfg.steps, 1.0)) ** -0.75


@pytest.mark.parametrize("mult", [1.0, 0.1])
@pytest.mark.parametrize("graph", [True, False])
def test_fused_adam_equals_keras_and_numpy(mult, graph):
    cfg = TrainConfig(optimizer="adam", lr=0.01, steps=10, lr_schedule="inv")
    grads = _grads(6)
    fused, opt = _run(cfg, grads, fused=True, mult=mult, graph=graph)
    keras_, _ = _run(cfg, grads, fused=False, mult=mult, graph=graph)
    ref = _adam_reference(grads, _inv_lr(cfg), mult)
    assert int(opt.iterations.numpy()) == len(grads)
    for f, k, r, w0 in zip(fused, keras_, ref, _init()):
        np.testing.assert_allclose(f, k, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(f, r, rtol=1e-5, atol=1e-6)
        assert np.abs(f - w0).max() > 1e-3  # the variables moved


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_fused_sgd_equals_keras_and_numpy(momentum, nesterov):
    cfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=momentum, steps=10, lr_schedule="inv")
    grads = _grads(5, seed=3)
    fused, _ = _run(cfg, grads, fused=True, mult=0.1, nesterov=nesterov)
    keras_, _ = _run(cfg, grads, fused=False, mult=0.1, nesterov=nesterov)
    ref = _sgd_reference(grads, _inv_lr(cfg), 0.1, momentum, nesterov)
    for f, k, r, w0 in zip(fused, keras_, ref, _init()):
        np.testing.assert_allclose(f, k, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(f, r, rtol=1e-5, atol=1e-6)
        assert np.abs(f - w0).max() > 1e-3


def test_fused_update_runs_the_fused_kernels():
    """The fused path is taken (the traced graph holds ResourceApplyAdam, not Keras's ops)."""
    cfg = TrainConfig(optimizer="adam", lr=0.01)
    for fused in (True, False):
        variables = [tf.Variable(w) for w in _init()]
        opt = make_optimizer(cfg, tf.Variable(0, dtype=tf.int64), variables, [], 1.0,
                             loss_scale=False, fused=fused)
        fn = tf.function(lambda g: opt.apply(g, variables))
        graph = fn.get_concrete_function([tf.TensorSpec(s, tf.float32) for s in SHAPES]).graph
        ops = {op.type for op in graph.get_operations()}
        assert ("ResourceApplyAdam" in ops) == fused, ops


def test_fused_update_under_loss_scaling_skips_non_finite_steps():
    cfg = TrainConfig(optimizer="adam", lr=0.01)
    variables = [tf.Variable(w) for w in _init()]
    opt = make_optimizer(cfg, tf.Variable(0, dtype=tf.int64), variables, [], 1.0, loss_scale=True)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    bad = [tf.fill(s, np.float32(np.inf)) for s in SHAPES]
    opt.apply(bad, variables)
    for v, w in zip(variables, _init()):
        np.testing.assert_array_equal(v.numpy(), w)  # skipped: nothing moved
    good = [tf.constant(g) * opt.dynamic_scale for g in _grads(1)[0]]
    opt.apply(good, variables)
    assert max(np.abs(v.numpy() - w).max() for v, w in zip(variables, _init())) > 1e-3
