"""Freezing backbone layers by config: all, the first N, up to a named layer, or by name prefix.

A frozen layer gets ``layer.trainable = False``. For BatchNormalization that also switches the
layer to inference mode in Keras 3 (it then uses and keeps its moving statistics even inside
``model(x, training=True)``); this is why freezing is done on layers, not by passing
``training=False`` to a nested call, which an outer ``training=True`` would override.

Set trainability before building the optimizer and tracing the training step: both capture
the trainable-variable list when they are built.
"""

from __future__ import annotations

import keras
import numpy as np

from ddc.config import ConfigError, FreezeConfig


def frozen_layer_names(backbone: keras.Model, cfg: FreezeConfig) -> list[str]:
    """Names of the backbone layers that ``cfg`` freezes, in layer order."""
    names = [layer.name for layer in backbone.layers]
    if cfg.mode == "none":
        return []
    if cfg.mode == "backbone":
        return names
    if cfg.mode == "first_n":
        if cfg.n > len(names):
            raise ConfigError(f"model.freeze.n: the backbone has {len(names)} layers, got {cfg.n}")
        return names[:cfg.n]
    if cfg.mode == "until":
        if cfg.layer not in names:
            near = [n for n in names if cfg.layer.split("_")[0] in n][:5]
            raise ConfigError(f"model.freeze.layer: no layer named {cfg.layer!r} in the backbone"
                              + (f" (similar: {', '.join(near)})" if near else ""))
        return names[:names.index(cfg.layer) + 1]
    chosen = [n for n in names if any(n.startswith(p) for p in cfg.prefixes)]
    if not chosen:
        raise ConfigError(f"model.freeze.prefixes: no backbone layer name starts with any of "
                          f"{cfg.prefixes} (first layers: {', '.join(names[:5])})")
    return chosen


def apply_freeze(backbone: keras.Model, cfg: FreezeConfig) -> list[str]:
    """Makes the chosen layers non-trainable (all others trainable); returns their names."""
    chosen = set(frozen_layer_names(backbone, cfg))
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = layer.name not in chosen
    return [layer.name for layer in backbone.layers if layer.name in chosen]


def variable_counts(model: keras.Model) -> dict:
    """Counts of trainable and frozen variables (and their parameters) of ``model``."""
    def params(vs):
        return int(sum(np.prod(v.shape) for v in vs))

    return {"trainable_variables": len(model.trainable_variables),
            "trainable_params": params(model.trainable_variables),
            "frozen_variables": len(model.non_trainable_variables),
            "frozen_params": params(model.non_trainable_variables)}
