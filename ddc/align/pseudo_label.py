"""``pseudo_label``: self-training on the target's confident predictions (class-balanced)."""

from __future__ import annotations

from dataclasses import dataclass

from ddc.align import _checks
from ddc.align.base import AlignTerm, TermOptions
from ddc.losses.pseudo_label import pseudo_label_loss


@dataclass
class PseudoLabelOptions(TermOptions):
    threshold: float = 0.9            # confidence above which a prediction becomes a label
    class_fraction: float = 0.5       # and the most confident half of every predicted class

    def check(self, key, cfg):
        _checks.require(0 < self.threshold <= 1, f"{key}.threshold", "a number in (0, 1]",
                        self.threshold)
        _checks.require(0 <= self.class_fraction <= 1, f"{key}.class_fraction",
                        "a number in [0, 1]", self.class_fraction)


class PseudoLabel(AlignTerm):
    """Cross-entropy of target predictions against their own argmax, on the samples that are
    confident or among the most confident of their predicted class in the batch
    (``ddc.losses.pseudo_label``). Diagnostic: the fraction of the batch labelled. Best with a
    warm-up schedule or beside another term: at the start the predictions are the source's."""

    name = "pseudo_label"
    Options = PseudoLabelOptions
    reads = ("logits",)
    diagnostics = ("coverage",)

    def __call__(self, x):
        o = self.options
        loss, coverage = pseudo_label_loss(x.logits_t, o.threshold, o.class_fraction)
        return loss, {"coverage": coverage}
