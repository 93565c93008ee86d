"""``mdd``: Margin Disparity Discrepancy (Zhang et al. 2019): an adversarial classifier head."""

from __future__ import annotations

from dataclasses import dataclass, field

import tensorflow as tf

from ddc.align import _checks
from ddc.align._mlp import MLP
from ddc.align.base import AlignTerm
from ddc.align.dann import AdversarialOptions, reversal_coeff
from ddc.losses import gradient_reverse, mdd_loss


@dataclass
class MDDOptions(AdversarialOptions):
    margin: float = 4.0               # gamma, the paper's 4
    hidden: list = field(default_factory=lambda: [1024])  # the adversarial head (TLlib: as the main one)
    grl_max: float = 0.1              # TLlib's MDD ramps the reversal to 0.1

    def check(self, key, cfg):
        super().check(key, cfg)
        _checks.require(self.margin > 0, f"{key}.margin", "a number > 0", self.margin)


class MDD(AlignTerm):
    """An adversarial head on the reversed adaptation features learns to agree with the main
    head on the source and to disagree on the target (``ddc.losses.mdd_loss``); through the
    reversal the features shrink that disagreement. Diagnostics: how often the adversarial
    head agrees with the main head's class on each domain."""

    name = "mdd"
    Options = MDDOptions
    reads = ("features", "logits")
    diagnostics = ("agree_source", "agree_target", "grl_coeff")

    def create_variables(self):
        o = self.options
        self.adv = MLP(self.feature_dim, o.hidden, self.num_classes, o.dropout, self.seed,
                       "mdd_adv")
        self.owned.append(self.adv)

    def __call__(self, x):
        coeff = reversal_coeff(self.options, x.progress)
        n = tf.shape(x.f_s)[0]
        adv = self.adv(gradient_reverse(tf.concat([x.f_s, x.f_t], axis=0), coeff), x.step)
        adv_s, adv_t = adv[:n], adv[n:]

        def agree(main, other):
            return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(main, -1), tf.argmax(other, -1)),
                                          tf.float32))

        loss = mdd_loss(x.logits_s, x.logits_t, adv_s, adv_t, self.options.margin)
        return loss, {"agree_source": agree(x.logits_s, adv_s),
                      "agree_target": agree(x.logits_t, adv_t), "grl_coeff": coeff}
