"""The DDC network: preprocessing, backbone, adaptation layer and classifier.

``image uint8 [B,H,W,C] -> preprocess -> backbone -> pooled [B,F] -> (Dense(head_hidden), ReLU)
-> adaptation Dense(adapt_width), (BatchNorm,) ReLU = features [B,A] -> logits [B,K] (float32)``

The network is three Keras models: ``backbone`` (preprocessed image to pooled features),
``head`` (pooled features to ``(logits, features)``), and ``model`` chaining preprocessing,
backbone and head. Feature-extractor mode trains ``head`` alone on cached backbone features with
the same training step; since the same ``head`` object is used, its logits equal the full
network's for the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers, ops

from ddc.config import ConfigError, ModelConfig
from ddc.models.backbones import PREPROCESS, build_backbone

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class Preprocess(keras.layers.Layer):
    """Casts images to float32 and scales them the way the backbone's weights expect.

    Modes: ``unit`` x/255; ``tf`` x/127.5 - 1; ``caffe`` RGB->BGR minus the ImageNet mean;
    ``raw`` unchanged. Runs in float32 under every precision policy.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, "float32")
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            return x[..., ::-1] - ops.convert_to_tensor(_CAFFE_MEAN_BGR, "float32")
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@dataclass
class Network:
    model: keras.Model      # image -> (logits [B,K] float32, features [B,A], *taps)
    backbone: keras.Model   # preprocessed image -> pooled features [B,F]
    head: keras.Model       # pooled features -> (logits, features)
    preprocess: Preprocess

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.output.shape[-1])


def head_layer_names(cfg: ModelConfig) -> list[str]:
    """The layers an alignment term can read by name: ``pooled`` (the head's input) and the
    head's own layers, in order (as :func:`build_head` names them)."""
    return (["pooled"] + (["head_hidden"] if cfg.head_hidden else [])
            + (["head_dropout"] if cfg.dropout else []) + (["adapt"] if cfg.adapt_width else [])
            + ["logits"])


def build_head(cfg: ModelConfig, in_dim: int, num_classes: int, taps: tuple = ()) -> keras.Model:
    """``pooled [B, F] -> (logits [B, K] float32, features [B, A], *taps)``; ``taps`` names
    further outputs for alignment terms that read other layers (DAN, JAN): ``pooled`` or a
    head layer's name (``head_hidden``, ``adapt``)."""
    inp = keras.Input((in_dim,), name="pooled")
    x = inp
    if cfg.head_hidden:
        x = layers.Dense(cfg.head_hidden, activation="relu", name="head_hidden")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    if cfg.adapt_width and cfg.adapt_bn:
        # TLlib's bottleneck: the BatchNorm sees the step's source and target rows together,
        # under tf.distribute those of every replica (the global batch, as on one device)
        x = layers.Dense(cfg.adapt_width, name="adapt_linear")(x)
        x = layers.BatchNormalization(synchronized=True, name="adapt_bn")(x)
        x = layers.ReLU(name="adapt")(x)
    elif cfg.adapt_width:
        x = layers.Dense(cfg.adapt_width, activation="relu", name="adapt")(x)
    features = x
    # Logits in float32 whatever the precision policy: softmax and cross-entropy need the range.
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(features)
    model = keras.Model(inp, [logits, features], name="head")
    extra = []
    for name in taps:
        if name not in head_layer_names(cfg):
            raise ConfigError(f"align: no layer {name!r} in the head to read (layers: "
                              f"{', '.join(head_layer_names(cfg))}, or features, softmax)")
        extra.append(inp if name == "pooled" else model.get_layer(name).output)
    return keras.Model(inp, [logits, features, *extra], name="head") if extra else model


def build_network(cfg: ModelConfig, image_shape: tuple, num_classes: int,
                  weights: str | None, taps: tuple = ()) -> Network:
    """Builds the network; ``weights`` is None, "imagenet" or a resolved file path; ``taps``:
    extra outputs after ``(logits, features)``, see :func:`build_head`."""
    backbone = build_backbone(cfg, image_shape, weights)
    head = build_head(cfg, int(backbone.output.shape[-1]), num_classes, taps)
    pre = Preprocess(PREPROCESS[cfg.backbone], name="preprocess")
    image = keras.Input(image_shape, dtype="uint8", name="image")
    model = keras.Model(image, head(backbone(pre(image))), name="ddc_net")
    return Network(model, backbone, head, pre)
