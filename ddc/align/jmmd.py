"""``jmmd``: JAN (Long et al. 2017): joint MMD² over the adaptation features and the softmax."""

from __future__ import annotations

from dataclasses import dataclass, field

from ddc.align import _checks
from ddc.align.base import LayersTerm, TermOptions
from ddc.losses import jmmd


@dataclass
class JMMDOptions(TermOptions):
    layers: list = field(default_factory=lambda: ["features", "softmax"])
    estimator: str = "biased"         # "biased" or "unbiased"
    multipliers: list = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])

    def check(self, key, cfg):
        _checks.layer_names(f"{key}.layers", self.layers, cfg)
        _checks.choice(f"{key}.estimator", self.estimator, ("biased", "unbiased"))
        _checks.positive_list(f"{key}.multipliers", self.multipliers)
        if self.estimator == "unbiased":
            _checks.require(cfg.train.batch_size >= 2, "train.batch_size",
                            "an integer >= 2 for the unbiased estimator", cfg.train.batch_size)


class JMMD(LayersTerm):
    """``jmmd`` of the named layers: the kernel is the product of each layer's kernel, so it
    aligns their joint distribution (features and predictions together)."""

    name = "jmmd"
    Options = JMMDOptions

    def __call__(self, x):
        o = self.options
        pairs = [x.layer(n) for n in o.layers]
        return jmmd([s for s, _ in pairs], [t for _, t in pairs], estimator=o.estimator,
                    multipliers=tuple(o.multipliers)), {}
