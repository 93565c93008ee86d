"""Splitting a network at the end of its frozen backbone prefix, for feature-extractor mode.

When the first layers of the backbone are frozen (``freeze`` mode ``backbone``, ``first_n`` or
``until``, or a ``prefix`` that covers a leading run of layers), their output for an image never
changes during training (frozen BatchNorm runs in inference mode), so it can be computed once
and cached. ``split_at_frozen_prefix`` returns the two halves: ``bottom`` (image -> cached
tensor) and ``trainable`` (cached tensor -> ``(logits, features)``), sharing the layers (and
variables) of the full network, so training ``trainable`` trains the full network.
"""

from __future__ import annotations

import keras

from ddc.config import ConfigError
from ddc.models.net import Network


def frozen_prefix_end(backbone: keras.Model) -> int:
    """Index of the last layer of the leading run of layers whose output cannot change in
    training: frozen layers and weightless deterministic ones (-1 when there is none)."""
    end = -1
    for i, layer in enumerate(backbone.layers):
        frozen = not layer.trainable or (not layer.weights and
                                         not isinstance(layer, keras.layers.Dropout))
        if not frozen:
            break
        end = i
    return end


def split_at_frozen_prefix(net: Network):
    """Returns ``(bottom, trainable, cut_name)``.

    ``bottom(preprocessed image) -> cached tensor`` and ``trainable(cached) -> (logits, feats)``.

    Raises:
        ConfigError: nothing at the start of the backbone is frozen.
    """
    bb = net.backbone
    end = frozen_prefix_end(bb)
    if not bb.trainable or end == len(bb.layers) - 1:
        inp = keras.Input(bb.output.shape[1:], name="cached")
        return bb, keras.Model(inp, net.head(inp), name="trainable_part"), "pooled"
    if end < 1:
        raise ConfigError("mode: \"features\" needs a frozen start of the backbone "
                          "(model.freeze mode backbone, first_n, until, or a leading prefix)")
    cut_layer = bb.layers[end]
    cut = cut_layer.output
    try:
        bottom = keras.Model(bb.input, cut, name="frozen_part")
        top = keras.Model(cut, bb.output, name="backbone_top")
    except Exception as e:  # a connection that skips over the cut
        raise ConfigError(f"model.freeze: cannot cache features after layer {cut_layer.name!r} "
                          f"({str(e).splitlines()[0]}); end the frozen part at a block boundary "
                          "(e.g. a MobileNetV2 block_N_add layer)") from None
    inp = keras.Input(cut.shape[1:], name="cached")
    return bottom, keras.Model(inp, net.head(top(inp)), name="trainable_part"), cut_layer.name
