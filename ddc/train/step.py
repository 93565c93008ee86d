"""The one training step: cross-entropy on source + lambda * MMD^2(source, target features).

Finetune and source-only runs are this step with frozen variables and lambda = 0; DDC is this
step with lambda > 0. With ``use_target=False`` (lambda = 0 for the whole run) the target batch
is not passed through the network at all, so a source-only step is exactly a cross-entropy step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ddc.config import MMDConfig
from ddc.losses import classification_loss, mmd2


class TrainStep:
    """A traced ``(x_s, labels_s, x_t, lam) -> dict of float32 scalars`` update of ``model``.

    Args:
        model: maps inputs [B, ...] to ``(logits [B, K] float32, features [B, A])``.
        optimizer: built over ``model.trainable_variables`` (see ``optim.make_optimizer``).
        mmd: kernel, estimator and bandwidth multipliers of the domain loss.
        use_target: pass the target batch through the network and compute MMD^2.
        loss_scale: the optimizer is a ``LossScaleOptimizer`` (mixed float16).
        jit_compile: compile the step with XLA.

    Build it after trainability is final: the variable list is captured here.
    """

    def __init__(self, model: keras.Model, optimizer, mmd: MMDConfig, *, use_target: bool,
                 loss_scale: bool = False, jit_compile: bool = False):
        self.model, self.optimizer, self.mmd = model, optimizer, mmd
        self.use_target, self.loss_scale = use_target, loss_scale
        self.variables = list(model.trainable_variables)
        self._fn = tf.function(self._step, jit_compile=jit_compile, reduce_retracing=True)

    def domain_loss(self, f_s, f_t):
        return mmd2(f_s, f_t, kernel=self.mmd.kernel, estimator=self.mmd.estimator,
                    multipliers=tuple(self.mmd.multipliers))

    def _step(self, x_s, labels_s, x_t, lam):
        n = tf.shape(x_s)[0]
        with tf.GradientTape() as tape:
            x = tf.concat([x_s, x_t], axis=0) if self.use_target else x_s
            logits, features = self.model(x, training=True)
            cls = classification_loss(labels_s, logits[:n])
            f_s = tf.cast(features[:n], tf.float32)
            if self.use_target:
                domain = self.domain_loss(features[:n], features[n:])
            else:
                domain = tf.zeros([], tf.float32)
            total = cls + lam * domain
            if self.model.losses:
                total += tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses])
            scaled = self.optimizer.scale_loss(total) if self.loss_scale else total
        grads = tape.gradient(scaled, self.variables)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
                               + [tf.math.is_finite(total)])
        self.optimizer.apply(grads, self.variables)
        pred = tf.argmax(logits[:n], axis=-1, output_type=tf.int32)
        return {
            "cls_loss": cls,
            "mmd2": domain,
            "total_loss": total,
            "source_acc": tf.reduce_mean(tf.cast(tf.equal(pred, labels_s), tf.float32)),
            "feature_norm": tf.reduce_mean(tf.norm(f_s, axis=-1)),
            "finite": finite,
        }

    def __call__(self, x_s, labels_s, x_t, lam: float):
        return self._fn(x_s, labels_s, x_t, tf.constant(lam, tf.float32))


def predict_fn(model: keras.Model, jit_compile: bool = False):
    """A traced ``x -> (logits, features)`` in inference mode."""
    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def predict(x):
        logits, features = model(x, training=False)
        return logits, tf.cast(features, tf.float32)
    return predict
