"""The one training step: cross-entropy on source + lambda * MMD^2(source, target features).

Finetune and source-only runs are this step with frozen variables and lambda = 0; DDC is this
step with lambda > 0. With ``use_target=False`` (lambda = 0 for the whole run) the target batch
is not passed through the network at all, so a source-only step is exactly a cross-entropy step.

Under a ``tf.distribute`` strategy with R replicas each replica holds B/R source and B/R target
images. The cross-entropy is summed locally and divided by the global batch B; the features are
gathered from all replicas (``all_gather``, whose gradient sums over replicas) so MMD^2 is the
global batch's value whatever R; every replica then adds ``lambda * MMD^2 / R`` to its loss,
since the optimizer sums the R replicas' gradients. One replica is the plain case.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ddc.config import MMDConfig
from ddc.losses import bandwidth_base, mmd2


class TrainStep:
    """A traced ``(x_s, labels_s, x_t, lam) -> dict of float32 scalars`` update of ``model``.

    Args:
        model: maps inputs [B, ...] to ``(logits [B, K] float32, features [B, A])``.
        optimizer: built over ``model.trainable_variables`` (see ``optim.make_optimizer``).
        mmd: kernel, estimator and bandwidth multipliers of the domain loss.
        use_target: pass the target batch through the network and compute MMD^2.
        loss_scale: the optimizer is a ``LossScaleOptimizer`` (mixed float16).
        jit_compile: compile the step with XLA.
        strategy: the ``tf.distribute`` strategy the model was built under (default: none).

    Build it after trainability is final: the variable list is captured here.
    """

    # what a step returns (``__call__``; ``steps`` stacks each over its steps)
    OUTPUTS = {"cls_loss": tf.float32, "mmd2": tf.float32, "total_loss": tf.float32,
               "source_acc": tf.float32, "feature_norm": tf.float32,
               "bandwidth_base": tf.float32, "finite": tf.bool}

    def __init__(self, model: keras.Model, optimizer, mmd: MMDConfig, *, use_target: bool,
                 loss_scale: bool = False, jit_compile: bool = False, strategy=None):
        self.model, self.optimizer, self.mmd = model, optimizer, mmd
        self.use_target, self.loss_scale = use_target, loss_scale
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.variables = list(model.trainable_variables)
        replica_fn = self._replica_step
        if jit_compile:  # XLA inside each replica; strategy.run itself cannot be compiled
            replica_fn = tf.function(self._replica_step, jit_compile=True)
        self._replica_fn = replica_fn
        self._fn = tf.function(self._step, reduce_retracing=True)
        self._steps_fn = tf.function(self._steps, reduce_retracing=True)

    def domain_loss(self, f_s, f_t):
        return mmd2(f_s, f_t, kernel=self.mmd.kernel, estimator=self.mmd.estimator,
                    multipliers=tuple(self.mmd.multipliers))

    def _replica_step(self, x_s, labels_s, x_t, lam):
        n = tf.shape(x_s)[0]
        global_n = tf.cast(n * self.replicas, tf.float32)
        with tf.GradientTape() as tape:
            x = tf.concat([x_s, x_t], axis=0) if self.use_target else x_s
            logits, features = self.model(x, training=True)
            logits_s = tf.cast(logits[:n], tf.float32)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels_s, logits=logits_s)
            cls_part = tf.reduce_sum(ce) / global_n  # this replica's share of the global mean
            f_s = tf.cast(features[:n], tf.float32)
            if self.use_target:
                f_t = tf.cast(features[n:], tf.float32)
                if self.replicas > 1:
                    ctx = tf.distribute.get_replica_context()
                    f_s, f_t = ctx.all_gather(f_s, axis=0), ctx.all_gather(f_t, axis=0)
                domain = self.domain_loss(f_s, f_t)
                base = bandwidth_base(f_s, f_t)
            else:
                domain = base = tf.zeros([], tf.float32)
            loss = cls_part + lam * domain / self.replicas
            if self.model.losses:
                loss += tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses]) / self.replicas
            scaled = self.optimizer.scale_loss(loss) if self.loss_scale else loss
        grads = tape.gradient(scaled, self.variables)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
                               + [tf.math.is_finite(loss)])
        self.optimizer.apply(grads, self.variables)
        pred = tf.argmax(logits_s, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(pred, labels_s), tf.float32))
        return {"cls_loss": cls_part, "mmd2": domain, "correct": correct / global_n,
                "bandwidth_base": base,
                "feature_norm": tf.reduce_mean(tf.norm(f_s[:n], axis=-1)) / self.replicas,
                "finite": tf.cast(finite, tf.float32)}

    def _step(self, x_s, labels_s, x_t, lam):
        if self.replicas == 1:
            out = self._replica_fn(x_s, labels_s, x_t, lam)
        else:
            per = self.strategy.run(self._replica_fn, args=(x_s, labels_s, x_t, lam))
            red = self.strategy.reduce
            SUM, MEAN = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN
            out = {"cls_loss": red(SUM, per["cls_loss"], axis=None),
                   "mmd2": red(MEAN, per["mmd2"], axis=None),
                   "bandwidth_base": red(MEAN, per["bandwidth_base"], axis=None),
                   "correct": red(SUM, per["correct"], axis=None),
                   "feature_norm": red(SUM, per["feature_norm"], axis=None),
                   "finite": self.strategy.reduce(MEAN, per["finite"], axis=None)}
        return {
            "cls_loss": out["cls_loss"],
            "mmd2": out["mmd2"],
            "total_loss": out["cls_loss"] + lam * out["mmd2"],
            "source_acc": out["correct"],
            "feature_norm": out["feature_norm"],
            "bandwidth_base": out["bandwidth_base"],
            "finite": tf.equal(out["finite"], 1.0),
        }

    def __call__(self, x_s, labels_s, x_t, lam: float):
        return self._fn(x_s, labels_s, x_t, tf.constant(lam, tf.float32))

    def _steps(self, batches, lams, step_var):
        k = tf.shape(lams)[0]
        arrays = {key: tf.TensorArray(dtype, size=k) for key, dtype in self.OUTPUTS.items()}
        for i in tf.range(k):
            x_s, labels_s, x_t = next(batches)
            out = self._step(x_s, labels_s, x_t, lams[i])
            step_var.assign_add(1)  # the learning-rate schedule reads it in the next step
            arrays = {key: arrays[key].write(i, out[key]) for key in self.OUTPUTS}
        return {key: a.stack() for key, a in arrays.items()}

    def steps(self, batches, lams, step_var: tf.Variable) -> dict:
        """``len(lams)`` steps in one traced call (Keras's ``steps_per_execution``): each takes
        the next batch from the iterator ``batches`` inside the graph, runs this step at
        ``lams[i]`` and adds 1 to ``step_var`` (which the learning-rate schedule reads). No
        Python and no host sync between the steps; the same batches and arithmetic as
        ``len(lams)`` calls of ``self(...)``.

        Returns:
            The step's outputs, each stacked over the steps: shape [len(lams)].
        """
        return self._steps_fn(batches, tf.constant(lams, tf.float32), step_var)


def predict_fn(model: keras.Model, jit_compile: bool = False):
    """A traced ``x -> (logits, features)`` in inference mode."""
    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def predict(x):
        logits, features = model(x, training=False)
        return logits, tf.cast(features, tf.float32)
    return predict
