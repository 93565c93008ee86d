"""``coral``: Deep CORAL (Sun & Saenko 2016) on the adaptation features."""

from __future__ import annotations

from dataclasses import dataclass

from ddc.align import _checks
from ddc.align.base import AlignTerm, TermOptions
from ddc.losses import coral


@dataclass
class CoralOptions(TermOptions):
    def check(self, key, cfg):
        _checks.require(cfg.train.batch_size >= 2, "train.batch_size",
                        "an integer >= 2 for coral (a covariance needs two samples)",
                        cfg.train.batch_size)


class CORAL(AlignTerm):
    """``||C_s - C_t||_F² / (4 d²)`` of the adaptation features' covariances."""

    name = "coral"
    Options = CoralOptions

    def __call__(self, x):
        return coral(x.f_s, x.f_t), {}
