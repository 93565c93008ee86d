"""Building a run's trainable parts: the alignment terms, the optimizer and the traced step.

The training loop and the benchmarks build them here, so a benchmark times exactly what a run
trains.
"""

from __future__ import annotations

import tensorflow as tf

from ddc.align import make_terms
from ddc.config import Config
from ddc.train.optim import make_optimizer
from ddc.train.step import TrainStep


def backbone_lr_mult(cfg: Config, weights) -> float:
    """``train.backbone_lr_mult``, or its default: 0.1 with pretrained weights, else 1."""
    if cfg.train.backbone_lr_mult is not None:
        return cfg.train.backbone_lr_mult
    return 0.1 if weights is not None else 1.0


def build_terms(cfg: Config, net, num_classes: int, strategy=None) -> list:
    """The config's active alignment terms, built for ``net`` (variables under ``strategy``'s
    scope). The network must output the layers they read (``ddc.align.network_layers``)."""
    strategy = strategy or tf.distribute.get_strategy()
    terms = make_terms(cfg.align, num_classes=num_classes, seed=cfg.seed)
    with strategy.scope():
        for term in terms:
            term.build(int(net.head.outputs[1].shape[-1]))
    return terms


def build_step(cfg: Config, model, backbone, terms, step_var: tf.Variable, *, lr_mult: float,
               taps: tuple = (), strategy=None, fused: bool = True,
               jit_compile: bool | None = None):
    """The optimizer and the traced step for the current trainability of ``model``.

    Args:
        model: what the step trains (the whole network, or its trainable part in features
            mode), outputs ``(logits, features, *taps)``.
        backbone: the backbone; its trainable variables learn ``lr_mult`` times slower.
        terms: built alignment terms; their variables join the update.

    Returns:
        ``(optimizer, TrainStep)``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    loss_scale = cfg.train.precision == "mixed_float16"
    variables = list(model.trainable_variables) + [v for t in terms for v in t.trainable_variables]
    with strategy.scope():
        optimizer = make_optimizer(cfg.train, step_var, variables,
                                   list(backbone.trainable_variables), lr_mult, loss_scale,
                                   fused=fused)
    jit = cfg.train.jit_compile if jit_compile is None else jit_compile
    step = TrainStep(model, optimizer, terms, variables=variables, taps=taps,
                     loss_scale=loss_scale, jit_compile=jit, strategy=strategy,
                     label_smoothing=cfg.train.label_smoothing)
    return optimizer, step
