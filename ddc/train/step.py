"""The one training step: cross-entropy on source + sum_i w_i(p) * L_i over the alignment terms.

Finetune and source-only runs are this step with frozen variables and no active term; DDC is
this step with the ``mmd`` term; every other method is another term (``ddc/align/``). The
target batch goes through the network exactly when some active term needs it
(``needs_target``), so a source-only step is exactly a cross-entropy step.

Under a ``tf.distribute`` strategy with R replicas each replica holds B/R source and B/R target
images. The cross-entropy is summed locally and divided by the global batch B; what the terms
read (features, logits, labels, named layers) is gathered from all replicas (``all_gather``,
whose gradient sums over replicas), so every term sees the global batch whatever R; every
replica then adds ``w_i * L_i / R`` to its loss, since the optimizer sums the R replicas'
gradients. A term's own variables (a discriminator) see the same global batch on every replica
and get ``1/R`` of its gradient on each. One replica is the plain case.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ddc.align import StepInputs
from ddc.losses import source_cross_entropy

SUM, MEAN = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN


def term_outputs(terms) -> list[str]:
    """The step outputs of ``terms``: ``align/<name>`` and ``align/<name>/<diagnostic>``."""
    return [key for t in terms for key in [f"align/{t.name}"]
            + [f"align/{t.name}/{d}" for d in t.diagnostics]]


class TrainStep:
    """A traced ``(x_s, labels_s, x_t, weights, progress, step) -> dict of scalars`` update.

    Args:
        model: maps inputs [B, ...] to ``(logits [B, K] float32, features [B, A], *taps)``,
            ``taps`` the layers named by ``taps``.
        optimizer: built over ``variables`` (see ``optim.make_optimizer``).
        terms: the active alignment terms, built (their variables exist).
        variables: what the optimizer updates (default: the model's trainable variables and
            the terms' own).
        taps: names of the model's extra outputs, in order.
        loss_scale: the optimizer is a ``LossScaleOptimizer`` (mixed float16).
        label_smoothing: eps of the source cross-entropy's smoothed targets (0: plain).
        jit_compile: compile the step with XLA.
        strategy: the ``tf.distribute`` strategy the model was built under (default: none).

    Build it after trainability is final: the variable list is captured here.
    """

    BASE_OUTPUTS = ("cls_loss", "total_loss", "source_acc", "feature_norm")

    def __init__(self, model: keras.Model, optimizer, terms=(), *, variables=None, taps=(),
                 loss_scale: bool = False, jit_compile: bool = False, strategy=None,
                 label_smoothing: float = 0.0):
        self.model, self.optimizer, self.terms = model, optimizer, list(terms)
        self.label_smoothing = float(label_smoothing)
        self.taps = tuple(taps)
        self.use_target = any(t.needs_target for t in self.terms)
        self.loss_scale = loss_scale
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        if variables is None:
            variables = list(model.trainable_variables) + [
                v for t in self.terms for v in t.trainable_variables]
        self.variables = list(variables)
        reads = {r for t in self.terms for r in t.reads}
        self._gather_logits = bool(reads & {"logits", "softmax"})
        self._gather_labels = "labels" in reads
        # what a step returns (``__call__``; ``steps`` stacks each over its steps)
        self.outputs = {**{k: tf.float32 for k in self.BASE_OUTPUTS},
                        **{k: tf.float32 for k in term_outputs(self.terms)}, "finite": tf.bool}
        replica_fn = self._replica_step
        if jit_compile:  # XLA inside each replica; strategy.run itself cannot be compiled
            replica_fn = tf.function(self._replica_step, jit_compile=True)
        self._replica_fn = replica_fn
        self._fn = tf.function(self._step, reduce_retracing=True)
        self._steps_fn = tf.function(self._steps, reduce_retracing=True)

    def _gather(self, x):
        if self.replicas == 1:
            return x
        return tf.distribute.get_replica_context().all_gather(x, axis=0)

    def _inputs(self, n, outs, labels_s, progress, step) -> StepInputs:
        """The global batch the terms read, float32 (gathered only where a term reads it)."""
        logits, features = tf.cast(outs[0], tf.float32), tf.cast(outs[1], tf.float32)
        g = self._gather
        taps = {name: (g(tf.cast(o[:n], tf.float32)), g(tf.cast(o[n:], tf.float32)))
                for name, o in zip(self.taps, outs[2:])}
        lg_s, lg_t = logits[:n], logits[n:]
        if self._gather_logits:
            lg_s, lg_t = g(lg_s), g(lg_t)
        return StepInputs(g(features[:n]), g(features[n:]), lg_s, lg_t,
                          g(labels_s) if self._gather_labels else labels_s, progress, step, taps)

    def _replica_step(self, x_s, labels_s, x_t, weights, progress, step):
        n = tf.shape(x_s)[0]
        global_n = tf.cast(n * self.replicas, tf.float32)
        values = {}
        with tf.GradientTape() as tape:
            x = tf.concat([x_s, x_t], axis=0) if self.use_target else x_s
            outs = self.model(x, training=True)
            logits_s = tf.cast(outs[0][:n], tf.float32)
            ce = source_cross_entropy(labels_s, logits_s, self.label_smoothing)
            cls_part = tf.reduce_sum(ce) / global_n  # this replica's share of the global mean
            loss = cls_part
            if self.terms:
                inputs = self._inputs(n, outs, labels_s, progress, step)
                for i, term in enumerate(self.terms):
                    value, diags = term(inputs)
                    values[f"align/{term.name}"] = value
                    values.update({f"align/{term.name}/{k}": tf.cast(v, tf.float32)
                                   for k, v in diags.items()})
                    loss += weights[i] * value / self.replicas
            if self.model.losses:
                loss += tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses]) / self.replicas
            scaled = self.optimizer.scale_loss(loss) if self.loss_scale else loss
        grads = tape.gradient(scaled, self.variables)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
                               + [tf.math.is_finite(loss)])
        self.optimizer.apply(grads, self.variables)
        pred = tf.argmax(logits_s, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(pred, labels_s), tf.float32))
        f_local = tf.cast(outs[1][:n], tf.float32)
        # summed over replicas below: the global batch's mean, total and accuracy
        shares = {"cls_loss": cls_part, "total_loss": loss, "source_acc": correct / global_n,
                  "feature_norm": tf.reduce_mean(tf.norm(f_local, axis=-1)) / self.replicas}
        # averaged over replicas below: the terms' values (of the global batch, the same on
        # every replica), and whether every replica's gradients were finite (mean 1)
        values["finite"] = tf.cast(finite, tf.float32)
        return shares, values

    def _step(self, x_s, labels_s, x_t, weights, progress, step):
        args = (x_s, labels_s, x_t, weights, progress, step)
        if self.replicas == 1:
            shares, values = self._replica_fn(*args)
        else:
            per_shares, per_values = self.strategy.run(self._replica_fn, args=args)
            shares = {k: self.strategy.reduce(SUM, v, axis=None) for k, v in per_shares.items()}
            values = {k: self.strategy.reduce(MEAN, v, axis=None) for k, v in per_values.items()}
        out = {**shares, **values}
        out["finite"] = tf.equal(values["finite"], 1.0)
        return out

    def __call__(self, x_s, labels_s, x_t, weights=(), progress: float = 0.0, step: int = 0):
        """One step; ``weights``: each term's weight at this step (``len(terms)`` floats),
        ``progress``: p in [0, 1], ``step``: this step's index (seeds stateless dropout)."""
        return self._fn(x_s, labels_s, x_t, tf.constant(weights, tf.float32, [len(self.terms)]),
                        tf.constant(progress, tf.float32), tf.constant(step, tf.int64))

    def _steps(self, batches, weights, progress, step_var):
        k = tf.shape(progress)[0]
        arrays = {key: tf.TensorArray(dtype, size=k) for key, dtype in self.outputs.items()}
        for i in tf.range(k):
            x_s, labels_s, x_t = next(batches)
            out = self._step(x_s, labels_s, x_t, weights[i], progress[i], step_var.read_value())
            step_var.assign_add(1)  # the learning-rate schedule reads it in the next step
            arrays = {key: arrays[key].write(i, out[key]) for key in self.outputs}
        return {key: a.stack() for key, a in arrays.items()}

    def steps(self, batches, weights, progress, step_var: tf.Variable) -> dict:
        """``len(progress)`` steps in one traced call (Keras's ``steps_per_execution``): each
        takes the next batch from the iterator ``batches`` inside the graph, runs this step at
        ``weights[i]`` (one per term) and ``progress[i]``, and adds 1 to ``step_var`` (which
        the learning-rate schedule reads). No Python and no host sync between the steps; the
        same batches and arithmetic as ``len(progress)`` calls of ``self(...)``.

        Returns:
            The step's outputs, each stacked over the steps: shape [len(progress)].
        """
        k = len(progress)
        return self._steps_fn(batches, tf.constant(weights, tf.float32, [k, len(self.terms)]),
                              tf.constant(progress, tf.float32), step_var)


def predict_fn(model: keras.Model, jit_compile: bool = False):
    """A traced ``x -> (logits, features)`` in inference mode."""
    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def predict(x):
        outs = model(x, training=False)
        return outs[0], tf.cast(outs[1], tf.float32)
    return predict
