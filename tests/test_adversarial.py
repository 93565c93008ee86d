"""The adversarial terms learn what they should: a DANN discriminator tells two separable blobs
apart, and with gradient reversal the features it sees become inseparable; the CDAN and MDD
terms compute their losses from the pieces tested in test_align_losses.py."""

import numpy as np
import pytest
import tensorflow as tf

from ddc.align import StepInputs, terms_for
from ddc.losses import (binary_domain_loss, entropy_weights, gradient_reverse, mdd_loss,
                        multilinear_map, randomized_multilinear_map)

D = 8


def _blobs(n=64, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, 1.0, (n, D)).astype(np.float32)
    t = rng.normal(0.0, 1.0, (n, D)).astype(np.float32)
    t[:, 0] += 4.0  # separable along the first axis
    return s, t


def _inputs(f_s, f_t, step, progress=1.0, k=3):
    zeros = tf.zeros([tf.shape(f_s)[0], k])
    return StepInputs(f_s, f_t, zeros, zeros, tf.zeros([tf.shape(f_s)[0]], tf.int32),
                      tf.constant(progress), tf.cast(step, tf.int64))


def _train_dann(reverse: bool, steps: int = 300):
    """A linear feature map (identity at start) of the blobs and a DANN term trained together;
    returns the discriminator's mean batch accuracy over the last 100 steps and the distance
    between the two blobs' mean features (4 at the start)."""
    term = terms_for({"dann": {"weight": 1.0, "hidden": [32], "dropout": 0.0,
                               "grl_schedule": "constant", "grl_max": 1.0 if reverse else 0.0}},
                     feature_dim=D, num_classes=3)[0]
    proj = tf.Variable(np.eye(D, dtype=np.float32))
    variables = [proj] + term.trainable_variables
    opt = tf.keras.optimizers.Adam(3e-3)
    s, t = _blobs()

    @tf.function
    def step(i):
        with tf.GradientTape() as tape:
            loss, diags = term(_inputs(s @ proj, t @ proj, i))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return diags["disc_acc"]

    accs = [float(step(tf.constant(i, tf.int64))) for i in range(steps)]
    gap = float(np.linalg.norm((t @ proj.numpy()).mean(0) - (s @ proj.numpy()).mean(0)))
    return float(np.mean(accs[-100:])), gap


def test_dann_discriminator_separates_blobs_and_reversal_confuses_it():
    # with no reversal (coefficient 0) the features do not fight: the discriminator wins
    acc, gap = _train_dann(reverse=False)
    assert acc > 0.95 and gap > 3.5
    # with reversal the features are trained to fool it: the blobs move together and its
    # accuracy falls towards chance
    acc, gap = _train_dann(reverse=True)
    assert acc < 0.75 and gap < 2.0


def test_dann_dropout_is_a_function_of_the_step():
    term = terms_for({"dann": {"weight": 1.0, "hidden": [16], "dropout": 0.5}},
                     feature_dim=D, num_classes=3)[0]
    s, t = _blobs(8)
    a = float(term(_inputs(s, t, 3))[0])
    assert float(term(_inputs(s, t, 3))[0]) == a           # same step: same masks
    assert float(term(_inputs(s, t, 4))[0]) != a           # next step: new masks


def test_cdan_term_loss_is_the_weighted_bce_of_its_map():
    """The term's loss equals binary_domain_loss of its discriminator on the (randomized)
    multilinear map with CDAN+E weights; the map is randomized above max_dim."""
    rng = np.random.default_rng(1)
    f_s, f_t = (rng.normal(size=(6, D)).astype(np.float32) for _ in range(2))
    z_s, z_t = (rng.normal(size=(6, 3)).astype(np.float32) for _ in range(2))
    for max_dim, randomized in ((4096, False), (16, True)):
        term = terms_for({"cdan": {"weight": 1.0, "entropy_conditioning": True, "dropout": 0.0,
                                   "max_dim": max_dim, "random_dim": 32}},
                         feature_dim=D, num_classes=3)[0]
        assert term.randomized == randomized and ("r_f" in term.state()) == randomized
        x = StepInputs(f_s, f_t, z_s, z_t, tf.zeros([6], tf.int32), tf.constant(0.5),
                       tf.constant(0, tf.int64))
        loss, _ = term(x)
        g_s, g_t = tf.nn.softmax(z_s), tf.nn.softmax(z_t)
        if randomized:
            h_s = randomized_multilinear_map(f_s, g_s, term.r_f, term.r_g)
            h_t = randomized_multilinear_map(f_t, g_t, term.r_f, term.r_g)
        else:
            h_s, h_t = multilinear_map(f_s, g_s), multilinear_map(f_t, g_t)
        d = term.disc(tf.concat([h_s, h_t], 0), 0, training=False)
        expected = binary_domain_loss(d[:6], d[6:], entropy_weights(z_s), entropy_weights(z_t))
        np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


def test_mdd_term_trains_its_head_and_reverses_into_features():
    """The adversarial head's gradient lowers the MDD loss; the features get the reversed
    gradient: exactly -coeff times the gradient they would get without reversal."""
    term = terms_for({"mdd": {"weight": 1.0, "dropout": 0.0, "grl_schedule": "constant",
                              "grl_max": 0.5}}, feature_dim=D, num_classes=3)[0]
    rng = np.random.default_rng(2)
    f_s, f_t = (tf.constant(rng.normal(size=(5, D)).astype(np.float32)) for _ in range(2))
    z_s, z_t = (tf.constant(rng.normal(size=(5, 3)).astype(np.float32)) for _ in range(2))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([f_s, f_t])
        x = StepInputs(f_s, f_t, z_s, z_t, tf.zeros([5], tf.int32), tf.constant(1.0),
                       tf.constant(0, tf.int64))
        loss, diags = term(x)
        adv = term.adv(tf.concat([f_s, f_t], 0), 0, training=False)
        plain = mdd_loss(z_s, z_t, adv[:5], adv[5:], 4.0)
    np.testing.assert_allclose(float(loss), float(plain), rtol=1e-6)
    g_rev = tape.gradient(loss, [f_s, f_t])
    g_plain = tape.gradient(plain, [f_s, f_t])
    for a, b in zip(g_rev, g_plain):
        np.testing.assert_allclose(a.numpy(), -0.5 * b.numpy(), rtol=1e-5, atol=1e-7)
    assert float(diags["grl_coeff"]) == pytest.approx(0.5)
    grads = tape.gradient(loss, term.trainable_variables)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in grads) > 0


def test_gradient_reverse_inside_a_traced_step_follows_the_coefficient():
    x = tf.constant([[1.0, -2.0]])

    @tf.function
    def grad(coeff):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.square(gradient_reverse(x, coeff)))
        return tape.gradient(y, x)

    for c in (0.0, 0.3, 1.0):
        np.testing.assert_allclose(grad(tf.constant(c)).numpy(), -c * 2.0 * x.numpy(), rtol=1e-6)
    assert grad.experimental_get_tracing_count() == 1
