"""Optimizers, learning-rate schedules, and a per-variable learning-rate multiplier.

The backbone of a pretrained network usually learns ten times slower than the new layers
(``train.backbone_lr_mult``, 0.1 by default with pretrained weights). Scaling gradients would do
this only for SGD (Adam is invariant to gradient scale), so the multiplier is applied to the
learning rate inside ``update_step``, per variable, which is exact for every optimizer and works
under ``LossScaleOptimizer``.
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


def _with_multiplier(base):
    class WithLRMultiplier(base):
        """``base`` with the learning rate of some variables multiplied by a constant."""

        def set_lr_multiplier(self, variables, multiplier: float):
            self._ddc_slow = {self._var_key(v) for v in variables}
            self._ddc_mult = float(multiplier)

        def update_step(self, gradient, variable, learning_rate):
            if self._var_key(variable) in getattr(self, "_ddc_slow", ()):
                learning_rate = learning_rate * self._ddc_mult
            return super().update_step(gradient, variable, learning_rate)

    WithLRMultiplier.__name__ = base.__name__
    return WithLRMultiplier


SGD = _with_multiplier(keras.optimizers.SGD)
Adam = _with_multiplier(keras.optimizers.Adam)


def make_optimizer(cfg: TrainConfig, step: tf.Variable, variables: list, slow_variables: list,
                   slow_mult: float, loss_scale: bool):
    """Builds the optimizer over ``variables`` (``slow_variables`` learn ``slow_mult`` times slower).

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
    if loss_scale:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    opt.build(variables)
    return opt
