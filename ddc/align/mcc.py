"""``mcc``: Minimum Class Confusion (Jin et al. 2020) on the target predictions."""

from __future__ import annotations

from dataclasses import dataclass

from ddc.align import _checks
from ddc.align.base import AlignTerm, TermOptions
from ddc.losses import mcc


@dataclass
class MCCOptions(TermOptions):
    temperature: float = 2.5          # the paper's T

    def check(self, key, cfg):
        _checks.require(self.temperature > 0, f"{key}.temperature", "a number > 0",
                        self.temperature)


class MCC(AlignTerm):
    """The off-diagonal mass of the target batch's normalised, entropy-weighted class
    confusion matrix (``ddc.losses.mcc``)."""

    name = "mcc"
    Options = MCCOptions
    reads = ("logits",)

    def __call__(self, x):
        return mcc(x.logits_t, self.options.temperature), {}
