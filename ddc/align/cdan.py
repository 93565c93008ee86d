"""``cdan``: CDAN and CDAN+E (Long et al. 2018): a discriminator conditioned on the predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ddc.align import _checks
from ddc.align._mlp import MLP
from ddc.align.base import AlignTerm
from ddc.align.dann import AdversarialOptions, discriminate, reversal_coeff
from ddc.losses import (binary_domain_loss, domain_accuracy, entropy_weights, multilinear_map,
                        randomized_multilinear_map)


@dataclass
class CDANOptions(AdversarialOptions):
    entropy_conditioning: bool = False   # CDAN+E: weigh confident samples more
    max_dim: int = 4096               # above d * K, the randomized multilinear map
    random_dim: int = 1024            # r of the randomized map

    def check(self, key, cfg):
        super().check(key, cfg)
        _checks.require(self.max_dim >= 1, f"{key}.max_dim", "an integer >= 1", self.max_dim)
        _checks.require(self.random_dim >= 1, f"{key}.random_dim", "an integer >= 1",
                        self.random_dim)


class CDAN(AlignTerm):
    """A domain discriminator on the reversed multilinear map ``f ⊗ softmax(z)`` (features and
    predictions together; gradients reach both, as in the paper), or on its randomized version
    when ``d K > max_dim``. With ``entropy_conditioning`` each sample's cross-entropy is weighted
    by ``1 + exp(-H(softmax(z)))``, normalised to sum to the batch size in each domain."""

    name = "cdan"
    Options = CDANOptions
    reads = ("features", "logits")
    diagnostics = ("disc_acc", "grl_coeff")
    variants = {"cdan_e": {"entropy_conditioning": True}}

    @property
    def randomized(self) -> bool:
        return self.feature_dim * self.num_classes > self.options.max_dim

    def create_variables(self):
        o = self.options
        d, k = self.feature_dim, self.num_classes
        self.r_f = self.r_g = None
        if self.randomized:
            rng = np.random.default_rng(self.seed + 7919)
            # fixed, never trained; in the checkpoint so a resumed run maps as the first did
            self.r_f = tf.Variable(rng.standard_normal((d, o.random_dim)).astype(np.float32),
                                   trainable=False, name="cdan_r_f")
            self.r_g = tf.Variable(rng.standard_normal((k, o.random_dim)).astype(np.float32),
                                   trainable=False, name="cdan_r_g")
        in_dim = o.random_dim if self.randomized else d * k
        self.disc = MLP(in_dim, o.hidden, 1, o.dropout, self.seed, "cdan_disc")
        self.owned.append(self.disc)

    def state(self):
        extra = {"r_f": self.r_f, "r_g": self.r_g} if self.randomized else {}
        return {**super().state(), **extra}

    def _map(self, f, logits):
        g = tf.nn.softmax(logits)
        if self.randomized:
            return randomized_multilinear_map(f, g, self.r_f, self.r_g)
        return multilinear_map(f, g)

    def __call__(self, x):
        coeff = reversal_coeff(self.options, x.progress)
        h_s, h_t = self._map(x.f_s, x.logits_s), self._map(x.f_t, x.logits_t)
        d_s, d_t = discriminate(self.disc, h_s, h_t, coeff, x.step)
        w_s = w_t = None
        if self.options.entropy_conditioning:
            w_s, w_t = entropy_weights(x.logits_s), entropy_weights(x.logits_t)
        return binary_domain_loss(d_s, d_t, w_s, w_t), {"disc_acc": domain_accuracy(d_s, d_t),
                                                        "grl_coeff": coeff}
