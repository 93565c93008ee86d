"""``im``: SHOT's information maximisation on the target predictions (Liang et al. 2020)."""

from __future__ import annotations

from ddc.align.base import AlignTerm
from ddc.losses import entropy, information_maximization


class IM(AlignTerm):
    """Mean target prediction entropy minus the entropy of the mean prediction: confident and
    diverse target predictions. Diagnostic: the mean entropy alone."""

    name = "im"
    reads = ("logits",)
    diagnostics = ("entropy",)

    def __call__(self, x):
        return information_maximization(x.logits_t), {"entropy": entropy(x.logits_t)}
