"""Optimizers, learning-rate schedules, and a per-variable learning-rate multiplier.

The backbone of a pretrained network usually learns ten times slower than the new layers
(``train.backbone_lr_mult``, 0.1 by default with pretrained weights). Scaling gradients would do
this only for SGD (Adam is invariant to gradient scale), so the multiplier is applied to the
learning rate inside ``update_step``, per variable, which is exact for every optimizer and works
under ``LossScaleOptimizer``.

The update itself runs as one fused TensorFlow kernel per variable (``ResourceApplyAdam``,
``ResourceApplyKerasMomentum``, ``ResourceApplyGradientDescent``: the same arithmetic as Keras's
``update_step``, in the same order) instead of Keras's chain of about ten element-wise ops,
each a full pass over the variable (measured by ``benchmarks/bench_optimizer.py``, numbers in
docs/SPEED.md). ``fused=False`` keeps Keras's own update; AMSGrad and sparse (``IndexedSlices``)
gradients always use it.

Keras has no public API for an optimizer's slot of a given variable, so the fused update reads
Keras's private ``_get_variable_index``, ``_momentums``/``_velocities``/``momentums`` and
``_var_key``; ``tests/test_keras_internals.py`` fails by name when an upgrade changes them.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ddc.config import TrainConfig


def progress_lr(cfg: TrainConfig, step):
    """Learning rate at ``step`` (a number or a tensor): constant, or lr * (1 + 10 p) ** -0.75."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    p = tf.minimum(tf.cast(step, tf.float32) / float(cfg.steps), 1.0)
    return cfg.lr * tf.pow(1.0 + 10.0 * p, -0.75)


class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Evaluates ``progress_lr`` at the run's own step counter, not the optimizer's iterations:
    the run's counter survives two-stage optimizer rebuilds and counts float16 skipped steps."""

    def __init__(self, cfg: TrainConfig, step: tf.Variable):
        self.cfg, self.step = cfg, step

    def __call__(self, _iterations):
        return tf.cast(progress_lr(self.cfg, self.step), tf.float32)

    def get_config(self):
        return {"lr": self.cfg.lr, "schedule": self.cfg.lr_schedule}


def _handle(variable):
    """The resource handle of a Keras or tf variable (under ``tf.distribute``, inside
    ``extended.update``, the local component's)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


def _fused_sgd(opt, gradient, variable, lr):
    if opt.momentum == 0:
        return tf.raw_ops.ResourceApplyGradientDescent(var=_handle(variable), alpha=lr,
                                                       delta=gradient)
    m = opt.momentums[opt._get_variable_index(variable)]
    # accum <- momentum accum - lr g;  var <- var + accum  (Nesterov: + momentum accum - lr g)
    return tf.raw_ops.ResourceApplyKerasMomentum(
        var=_handle(variable), accum=_handle(m), lr=lr, grad=gradient,
        momentum=tf.cast(opt.momentum, variable.dtype), use_nesterov=bool(opt.nesterov))


def _fused_adam(opt, gradient, variable, lr):
    dtype = variable.dtype
    i = opt._get_variable_index(variable)
    step = tf.cast(opt.iterations + 1, dtype)
    b1, b2 = tf.cast(opt.beta_1, dtype), tf.cast(opt.beta_2, dtype)
    # m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    # var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)
    return tf.raw_ops.ResourceApplyAdam(
        var=_handle(variable), m=_handle(opt._momentums[i]), v=_handle(opt._velocities[i]),
        beta1_power=tf.pow(b1, step), beta2_power=tf.pow(b2, step), lr=lr, beta1=b1, beta2=b2,
        epsilon=tf.cast(opt.epsilon, dtype), grad=gradient)


def _with_multiplier(base, fused_update):
    class WithLRMultiplier(base):
        """``base`` with the learning rate of some variables multiplied by a constant, and its
        update done by one fused TensorFlow kernel per variable (``fused``)."""

        fused = True

        def set_lr_multiplier(self, variables, multiplier: float):
            self._ddc_slow = {self._var_key(v) for v in variables}
            self._ddc_mult = float(multiplier)

        def update_step(self, gradient, variable, learning_rate):
            if self._var_key(variable) in getattr(self, "_ddc_slow", ()):
                learning_rate = learning_rate * self._ddc_mult
            if (self.fused and not getattr(self, "amsgrad", False)
                    and not isinstance(gradient, tf.IndexedSlices)):
                dtype = variable.dtype
                return fused_update(self, tf.cast(gradient, dtype), variable,
                                    tf.cast(learning_rate, dtype))
            return super().update_step(gradient, variable, learning_rate)

    WithLRMultiplier.__name__ = base.__name__
    return WithLRMultiplier


SGD = _with_multiplier(keras.optimizers.SGD, _fused_sgd)
Adam = _with_multiplier(keras.optimizers.Adam, _fused_adam)


def make_optimizer(cfg: TrainConfig, step: tf.Variable, variables: list, slow_variables: list,
                   slow_mult: float, loss_scale: bool, fused: bool = True):
    """Builds the optimizer over ``variables`` (``slow_variables`` learn ``slow_mult`` times slower;
    ``fused``: TensorFlow's fused update kernels, else Keras's own ``update_step``).

    Returns:
        A built optimizer; a ``LossScaleOptimizer`` around it when ``loss_scale`` (float16).
    """
    lr = StepSchedule(cfg, step)
    wd = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        opt = SGD(learning_rate=lr, momentum=cfg.momentum, weight_decay=wd)
    else:
        opt = Adam(learning_rate=lr, weight_decay=wd)
    opt.set_lr_multiplier(slow_variables, slow_mult)
    opt.fused = fused
    if loss_scale:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    opt.build(variables)
    return opt
