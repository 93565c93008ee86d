"""``entropy``: entropy minimisation on the target predictions (Grandvalet & Bengio 2005)."""

from __future__ import annotations

from ddc.align.base import AlignTerm
from ddc.losses import entropy


class Entropy(AlignTerm):
    """Mean entropy of softmax(target logits): pushes target predictions to be confident.
    Alone it can collapse onto few classes; pair it with a diversity term (``im``) or an
    alignment term."""

    name = "entropy"
    reads = ("logits",)

    def __call__(self, x):
        return entropy(x.logits_t), {}
