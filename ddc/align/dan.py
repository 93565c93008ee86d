"""``dan``: DAN (Long et al. 2015): multi-kernel MMD² summed over several layers."""

from __future__ import annotations

from dataclasses import dataclass, field

import tensorflow as tf

from ddc.align import _checks
from ddc.align.base import LayersTerm, TermOptions
from ddc.losses import mmd2


@dataclass
class DANOptions(TermOptions):
    layers: list = field(default_factory=lambda: ["features", "logits"])
    estimator: str = "biased"         # "biased", "unbiased" or "linear"
    multipliers: list = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])

    def check(self, key, cfg):
        _checks.layer_names(f"{key}.layers", self.layers, cfg)
        _checks.choice(f"{key}.estimator", self.estimator, ("biased", "unbiased", "linear"))
        _checks.positive_list(f"{key}.multipliers", self.multipliers)
        b = cfg.train.batch_size
        if self.estimator == "linear":
            _checks.require(b >= 2 and b % 2 == 0, "train.batch_size",
                            "an even integer >= 2 for the linear estimator", b)


class DAN(LayersTerm):
    """``sum_l MMD²(layer_l(source), layer_l(target))`` with ``mmd2``'s multi-bandwidth Gaussian
    kernel, one bandwidth base per layer. Default layers: the adaptation features and the
    logits (DAN adapts the last task-specific layers)."""

    name = "dan"
    Options = DANOptions

    def __call__(self, x):
        o = self.options
        per_layer = [mmd2(*x.layer(n), estimator=o.estimator, multipliers=tuple(o.multipliers))
                     for n in o.layers]
        return tf.add_n(per_layer), {}
