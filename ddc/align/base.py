"""The contract of an alignment term: what it reads from the step, what it owns, what it returns.

The training step computes, in one ``GradientTape``::

    loss = CE(source) + sum_i w_i(p) * L_i(inputs)

over the active terms (``align.<name>.weight > 0``). Each term is one class in its own module,
registered by one line in ``ddc/align/__init__.py``; its options are a dataclass that the
config validates like every other section (``align.<name>.<option>``).

Under ``tf.distribute`` the step gathers what the terms read from every replica, so every term
sees the global batch and its value does not depend on the replica count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import tensorflow as tf

SCHEDULES = ("constant", "warmup")
# names a term may read besides the head's own layer names (see ``StepInputs.layer``)
BUILTIN_LAYERS = ("features", "logits", "softmax")


@dataclass
class TermOptions:
    """Options every term has: ``weight`` (lambda) and its ``schedule`` over training progress
    p in [0, 1]: ``constant``, or ``warmup``: ``weight * (2 / (1 + exp(-10 p)) - 1)``."""
    weight: float = 1.0
    schedule: str = "constant"

    def check(self, key: str, cfg) -> None:
        """Raises ``ConfigError`` naming ``key.<option>`` for a value this term cannot use;
        ``cfg`` is the whole (parsed) config, for cross-checks such as the batch size."""


def schedule_weight(options: TermOptions, progress: float) -> float:
    """The term's weight at training progress ``progress`` in [0, 1]."""
    w = options.weight
    if options.schedule == "warmup":
        w *= 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0
    return float(w)


class StepInputs:
    """What the step hands a term: the global batch, float32, in the traced step.

    Attributes:
      f_s, f_t: adaptation-layer features [n, A], [m, A] (the features DDC aligns).
      logits_s, logits_t: logits [n, K], [m, K].
      labels_s: source labels [n], int32.
      progress: training progress p in [0, 1], float32 scalar tensor.
      step: the step's index (0 at the first step), int64 scalar tensor; seeds stateless
        randomness (dropout in a discriminator) so resume redraws the same masks.
    """

    def __init__(self, f_s, f_t, logits_s, logits_t, labels_s, progress, step, taps=None):
        self.f_s, self.f_t = f_s, f_t
        self.logits_s, self.logits_t = logits_s, logits_t
        self.labels_s, self.progress, self.step = labels_s, progress, step
        self._taps = taps or {}

    def layer(self, name: str):
        """``(source, target)`` activations of a layer: ``features``, ``logits``, ``softmax``,
        ``pooled`` (the backbone's pooled output) or a head layer's name (``head_hidden``)."""
        if name == "features":
            return self.f_s, self.f_t
        if name == "logits":
            return self.logits_s, self.logits_t
        if name == "softmax":
            return tf.nn.softmax(self.logits_s), tf.nn.softmax(self.logits_t)
        return self._taps[name]


class AlignTerm:
    """Base class of an alignment term.

    Subclasses set ``name``, ``Options`` (a ``TermOptions`` dataclass), ``needs_target``,
    ``reads`` (what they read: any of ``features``, ``logits``, ``labels``, or the layer names
    of :meth:`layers`), ``diagnostics`` (the names of the scalars they return beside the
    loss), and implement ``__call__``. A term with variables of its own creates them in
    ``create_variables`` (called once by ``build``, under the strategy scope), appending the
    networks it owns to ``self.owned`` (their variables are then in ``trainable_variables`` and
    ``state``); they join the optimizer's update and the checkpoint.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = TermOptions
    needs_target: ClassVar[bool] = True
    reads: ClassVar[tuple] = ("features",)
    diagnostics: ClassVar[tuple] = ()
    # named option sets worth comparing besides the defaults (the accuracy grid runs each as
    # a method of its own), e.g. {"cdan_e": {"entropy_conditioning": True}}
    variants: ClassVar[dict] = {}

    def __init__(self, options: TermOptions, *, num_classes: int, seed: int = 0):
        self.options, self.num_classes, self.seed = options, num_classes, seed
        self.feature_dim = None
        self.owned = []  # the networks this term owns (e.g. an ``_mlp.MLP`` discriminator)

    def layers(self) -> tuple:
        """Names of extra network layers this term reads (beyond features and logits)."""
        return ()

    def build(self, feature_dim: int) -> None:
        """Called once with the width A of the adaptation features, under the strategy scope."""
        self.feature_dim = int(feature_dim)
        self.create_variables()

    def create_variables(self) -> None:
        """Creates the term's own variables (none by default); ``self.feature_dim`` is set."""

    @property
    def trainable_variables(self) -> list:
        return [v for net in self.owned for v in net.trainable_variables]

    def state(self) -> dict:
        """Every variable of the term by name, for the checkpoint (trainable or not)."""
        return {k: v for net in self.owned for k, v in net.state().items()}

    def __call__(self, x: StepInputs):
        """Returns ``(loss, {diagnostic: scalar})``, float32 scalars, on the global batch."""
        raise NotImplementedError


class LayersTerm(AlignTerm):
    """A term over the network layers named by its ``layers`` option (DAN, JAN)."""

    @property
    def reads(self):
        return tuple(self.options.layers)

    def layers(self):
        return tuple(n for n in self.options.layers if n not in BUILTIN_LAYERS)
