"""``dann``: DANN (Ganin et al. 2016): a domain discriminator on reversed features."""

from __future__ import annotations

from dataclasses import dataclass, field

import tensorflow as tf

from ddc.align import _checks
from ddc.align._mlp import MLP
from ddc.align.base import AlignTerm, TermOptions
from ddc.losses import binary_domain_loss, domain_accuracy, gradient_reverse, grl_warmup


@dataclass
class AdversarialOptions(TermOptions):
    """Options of the discriminator-based terms."""
    hidden: list = field(default_factory=lambda: [1024, 1024])   # as in the paper and TLlib
    dropout: float = 0.5
    grl_schedule: str = "warmup"      # reversal coeff: DANN's warm-up of p, or "constant" (1)
    grl_max: float = 1.0              # the coefficient's end value

    def check(self, key, cfg):
        _checks.widths(f"{key}.hidden", self.hidden)
        _checks.require(0.0 <= self.dropout < 1.0, f"{key}.dropout", "a number in [0, 1)",
                        self.dropout)
        _checks.choice(f"{key}.grl_schedule", self.grl_schedule, ("warmup", "constant"))
        _checks.require(self.grl_max >= 0, f"{key}.grl_max", "a number >= 0", self.grl_max)


def reversal_coeff(options: AdversarialOptions, progress):
    """The gradient-reversal coefficient at training progress ``progress`` (a tensor)."""
    if options.grl_schedule == "warmup":
        return options.grl_max * grl_warmup(progress)
    return tf.constant(options.grl_max, tf.float32)


class DANN(AlignTerm):
    """Binary cross-entropy of a discriminator telling source (1) from target (0) adaptation
    features, through gradient reversal: one minimisation trains the discriminator to tell the
    domains apart and the features to make them indistinguishable. Diagnostics: the
    discriminator's accuracy on the batch and the reversal coefficient."""

    name = "dann"
    Options = AdversarialOptions
    diagnostics = ("disc_acc", "grl_coeff")

    def create_variables(self):
        o = self.options
        self.disc = MLP(self.feature_dim, o.hidden, 1, o.dropout, self.seed, "dann_disc")
        self.owned.append(self.disc)

    def __call__(self, x):
        coeff = reversal_coeff(self.options, x.progress)
        d_s, d_t = discriminate(self.disc, x.f_s, x.f_t, coeff, x.step)
        return binary_domain_loss(d_s, d_t), {"disc_acc": domain_accuracy(d_s, d_t),
                                              "grl_coeff": coeff}


def discriminate(disc: MLP, h_s, h_t, coeff, step):
    """Domain logits of ``disc`` on reversed ``h_s`` [n, D] and ``h_t`` [m, D] (one pass over
    both, so the two domains get independent dropout masks)."""
    n = tf.shape(h_s)[0]
    d = disc(gradient_reverse(tf.concat([h_s, h_t], axis=0), coeff), step)
    return d[:n], d[n:]
