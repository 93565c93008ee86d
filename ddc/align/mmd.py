"""``mmd``: DDC (Tzeng et al. 2014) and DAN's multi-kernel MMD² (Long et al. 2015) on the
adaptation-layer features."""

from __future__ import annotations

from dataclasses import dataclass, field

from ddc.align import _checks
from ddc.align.base import AlignTerm, TermOptions
from ddc.losses import ESTIMATORS, KERNELS, bandwidth_base, mmd2


@dataclass
class MMDOptions(TermOptions):
    weight: float = 0.25              # the DDC paper's lambda
    kernel: str = "gaussian"          # "gaussian" (multi-bandwidth) or "linear" (original DDC)
    estimator: str = "biased"         # "biased", "unbiased" or "linear"
    multipliers: list = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])

    def check(self, key, cfg):
        _checks.choice(f"{key}.kernel", self.kernel, KERNELS)
        _checks.choice(f"{key}.estimator", self.estimator, ESTIMATORS)
        _checks.positive_list(f"{key}.multipliers", self.multipliers)
        b = cfg.train.batch_size
        if self.kernel == "gaussian" and self.estimator == "unbiased":
            _checks.require(b >= 2, "train.batch_size",
                            "an integer >= 2 for the unbiased estimator", b)
        if self.kernel == "gaussian" and self.estimator == "linear":
            _checks.require(b >= 2 and b % 2 == 0, "train.batch_size",
                            "an even integer >= 2 for the linear estimator", b)


class MMD(AlignTerm):
    """MMD² between source and target adaptation features (``ddc.losses.mmd2``); diagnostic:
    the Gaussian bandwidth base (watch it fall with the feature norm on long runs)."""

    name = "mmd"
    Options = MMDOptions
    diagnostics = ("bandwidth_base",)

    def __call__(self, x):
        o = self.options
        loss = mmd2(x.f_s, x.f_t, kernel=o.kernel, estimator=o.estimator,
                    multipliers=tuple(o.multipliers))
        return loss, {"bandwidth_base": bandwidth_base(x.f_s, x.f_t)}
