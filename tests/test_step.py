"""The training step: no term (or weight 0) is plain cross-entropy; it reports the MMD² it trained
on. (Frozen layers: test_finetune.py; the learning-rate multiplier: test_finetune.py and
test_optim.py.)"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ddc.align import terms_for
from ddc.config import ModelConfig, TrainConfig
from ddc.models import build_network
from ddc.train.optim import make_optimizer
from ddc.train.step import TrainStep


def _batch(n=8, size=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ys = rng.integers(0, classes, n).astype(np.int32)
    xt = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return xs, ys, xt


def _net(backbone="lenet", size=16, classes=3, **model):
    keras.utils.set_random_seed(1)
    return build_network(ModelConfig(backbone=backbone, adapt_width=8, **model), (size, size, 3),
                         classes, None)


def _mmd(weight, width=8):
    return terms_for({"mmd": {"weight": weight}}, feature_dim=width, num_classes=3)


@pytest.mark.parametrize("use_target", [False, True])
def test_lambda_zero_step_equals_plain_cross_entropy_sgd(use_target):
    net = _net()
    init = [v.numpy().copy() for v in net.model.trainable_variables]
    lr, mom = 0.05, 0.9
    tcfg = TrainConfig(optimizer="sgd", lr=lr, momentum=mom)
    step_var = tf.Variable(0, dtype=tf.int64)
    opt = make_optimizer(tcfg, step_var, net.model.trainable_variables, [], 1.0, False)
    # with the target through the network (an MMD term at weight 0) or not (no term)
    step = TrainStep(net.model, opt, _mmd(1.0) if use_target else [])
    assert step.use_target == use_target
    batches = [_batch(seed=s) for s in range(3)]
    for xs, ys, xt in batches:
        step(xs, ys, xt, [0.0] if use_target else [])

    # Reference: hand-written softmax cross-entropy and momentum SGD on a fresh copy.
    ref = _net()
    for v, w in zip(ref.model.trainable_variables, init):
        v.assign(w)
    vel = [np.zeros_like(w) for w in init]
    for xs, ys, _ in batches:
        with tf.GradientTape() as tape:
            logits, _ = ref.model(xs, training=True)
            logp = logits - tf.reduce_logsumexp(logits, axis=1, keepdims=True)
            loss = -tf.reduce_mean(tf.gather(logp, ys, axis=1, batch_dims=1))
        grads = tape.gradient(loss, ref.model.trainable_variables)
        for i, (v, g) in enumerate(zip(ref.model.trainable_variables, grads)):
            vel[i] = mom * vel[i] - lr * g.numpy()
            v.assign(v.numpy() + vel[i])
    for a, b in zip(net.model.trainable_variables, ref.model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=2e-6)


def test_step_reports_the_mmd_it_trained_on():
    from ddc.losses import mmd2
    net = _net()
    step_var = tf.Variable(0, dtype=tf.int64)
    opt = make_optimizer(TrainConfig(lr=1e-9), step_var, net.model.trainable_variables, [], 1.0,
                         False)
    step = TrainStep(net.model, opt, _mmd(1.0))
    xs, ys, xt = _batch()
    _, feats = net.model(np.concatenate([xs, xt]), training=True)
    expected = float(mmd2(feats[:8], feats[8:]))
    m = step(xs, ys, xt, [1.0])
    assert expected > 0
    np.testing.assert_allclose(float(m["align/mmd"]), expected, rtol=1e-4)
    np.testing.assert_allclose(float(m["total_loss"]), float(m["cls_loss"]) + expected, rtol=1e-4)


def test_label_smoothing_step_trains_on_smoothed_targets():
    """The step's loss and update with ``label_smoothing`` equal a numpy cross-entropy against
    (1 - eps) onehot + eps / C, gradient taken through the same network by hand."""
    eps, lr, classes = 0.2, 0.05, 3
    net, ref = _net(), _net()
    step_var = tf.Variable(0, dtype=tf.int64)
    opt = make_optimizer(TrainConfig(optimizer="sgd", lr=lr, momentum=0.0), step_var,
                         net.model.trainable_variables, [], 1.0, False)
    step = TrainStep(net.model, opt, [], label_smoothing=eps)
    xs, ys, xt = _batch(classes=classes)
    logits = ref.model(xs, training=True)[0].numpy().astype(np.float64)
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    target = np.full((len(ys), classes), eps / classes)
    target[np.arange(len(ys)), ys] += 1.0 - eps
    want_loss = float(-(target * logp).sum(1).mean())
    m = step(xs, ys, xt, [])
    np.testing.assert_allclose(float(m["cls_loss"]), want_loss, rtol=1e-5)
    # the smoothed loss differs from the plain one, so the check above could fail
    assert abs(want_loss + logp[np.arange(len(ys)), ys].mean()) > 1e-3
    # one plain SGD step on the smoothed loss: d loss / d logits = (softmax - target) / n
    with tf.GradientTape() as tape:
        out = ref.model(xs, training=True)[0]
    grads = tape.gradient(out, ref.model.trainable_variables,
                          output_gradients=tf.constant((np.exp(logp) - target) / len(ys),
                                                       tf.float32))
    for a, v, g in zip(net.model.trainable_variables, ref.model.trainable_variables, grads):
        np.testing.assert_allclose(a.numpy(), v.numpy() - lr * g.numpy(), rtol=2e-5, atol=2e-6)


def test_adapt_bn_normalises_over_source_and_target_together():
    """``model.adapt_bn``: the step's features are relu(BatchNorm(Dense(pooled))) with the
    statistics of the source and target rows together (numpy, by hand), the step moves the
    moving statistics towards that batch's, and evaluation normalises with them."""
    net = _net(adapt_bn=True)
    head = net.head
    dense, bn = head.get_layer("adapt_linear"), head.get_layer("adapt_bn")
    w, b = (v.numpy().astype(np.float64) for v in dense.weights)
    xs, ys, xt = _batch()
    x = np.concatenate([xs, xt])
    pooled = net.backbone(net.preprocess(x)).numpy().astype(np.float64)
    z = pooled @ w + b
    mean, var = z.mean(0), z.var(0)          # biased, over all 16 rows

    def relu_bn(mu, v):
        gamma, beta = bn.gamma.numpy(), bn.beta.numpy()
        return np.maximum(gamma * (z - mu) / np.sqrt(v + bn.epsilon) + beta, 0.0)

    _, feats = net.model(x, training=True)
    np.testing.assert_allclose(feats.numpy(), relu_bn(mean, var), rtol=1e-4, atol=1e-5)
    # per-domain statistics would give other features: the check above can tell them apart
    own = np.concatenate([relu_bn(z[:8].mean(0), z[:8].var(0))[:8],
                          relu_bn(z[8:].mean(0), z[8:].var(0))[8:]])
    assert np.abs(own - relu_bn(mean, var)).max() > 1e-2

    step_var = tf.Variable(0, dtype=tf.int64)
    opt = make_optimizer(TrainConfig(optimizer="sgd", lr=0.0), step_var,
                         net.model.trainable_variables, [], 1.0, False)
    m0, v0 = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    TrainStep(net.model, opt, _mmd(1.0))(xs, ys, xt, [1.0])
    mom = bn.momentum   # Keras keeps the biased batch variance in the moving average
    np.testing.assert_allclose(bn.moving_mean.numpy(), mom * m0 + (1 - mom) * mean,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), mom * v0 + (1 - mom) * var,
                               rtol=1e-4, atol=1e-6)
    _, feats_eval = net.model(x, training=False)
    np.testing.assert_allclose(feats_eval.numpy(),
                               relu_bn(bn.moving_mean.numpy(), bn.moving_variance.numpy()),
                               rtol=1e-4, atol=1e-5)
