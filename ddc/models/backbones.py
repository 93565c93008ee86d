"""Backbones by name: small CNNs built here, and Keras applications with pretrained weights.

Every backbone maps preprocessed images [B, H, W, C] to pooled features [B, F]. The
preprocessing that matches each backbone (``PREPROCESS``) is chosen by the backbone name, never
by the user: ImageNet weights only make sense with the input scaling they were trained with.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import keras
from keras import layers

from ddc.config import ConfigError, ModelConfig

# name -> (keras.applications constructor name, preprocessing mode)
APPLICATIONS = {
    "mobilenet": ("MobileNet", "tf"),
    "mobilenet_v2": ("MobileNetV2", "tf"),
    "resnet50": ("ResNet50", "caffe"),
    "inception_v3": ("InceptionV3", "tf"),
    "efficientnet_b0": ("EfficientNetB0", "raw"),  # rescales inside the model
}
# the digits LeNets: name -> (convolution padding, dropout); see ``lenet``
LENETS = {"lenet": ("same", 0.0), "lenet_caffe": ("valid", 0.0), "lenet_tllib": ("valid", 0.5)}
SCRATCH = (*LENETS, "alexnet")  # built here, from random initialisation
PREPROCESS = {**{name: "unit" for name in SCRATCH},
              **{name: mode for name, (_, mode) in APPLICATIONS.items()}}


def resolve_weights(value: str | None, weights_root: Path | None,
                    backbone: str | None = None) -> str | None:
    """Turns ``model.weights`` into None, ``"imagenet"`` or an existing file path.

    Args:
        value: ``model.weights`` as configured.
        weights_root: folder that a relative file name is taken from.
        backbone: ``model.backbone``, named in the error message.
    Raises:
        ConfigError: a file that does not exist (the message names the path tried and the
            backbone it was meant for).
    """
    if value in (None, "", "none"):
        return None
    if value == "imagenet":
        return "imagenet"
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (weights_root or Path(".")) / path
    if not path.is_file():
        what = f" for backbone {backbone}" if backbone else ""
        raise ConfigError(f"model.weights: weights file{what} not found: {path} (set "
                          "--weights-root or $DDC_WEIGHTS_ROOT, or use \"imagenet\" or null)")
    return str(path)


def _load_error_summary(e: Exception) -> str:
    """One short line from a Keras weight-loading error (which can hold whole tensors)."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    first = text.splitlines()[0]
    shapes = re.search(r"variable\.shape=(\([^)]*\)),? Received: value\.shape=(\([^)]*\))", text)
    where = re.search(r"Target variable: <Variable path=(\S+?),", text)
    if shapes:
        first += (f" {where.group(1) if where else 'a variable'} has shape {shapes.group(1)}, "
                  f"the file holds {shapes.group(2)}")
    return first[:400]


def lenet(input_shape, padding: str = "same", dropout: float = 0.0,
          name: str = "lenet") -> keras.Model:
    """The digits CNN at Caffe LeNet widths: two 5x5 convolutions (20, 50) each followed by 2x2
    max pooling, then fc 500.

    ``padding="same"`` is backbone ``lenet`` (2450 inputs to fc at 28 px). ``padding="valid"`` is
    backbone ``lenet_caffe``, Caffe's LeNet (28 -> 24 -> 12 -> 8 -> 4: 800 inputs to fc): at
    28 px 2.3 M multiply-adds an image forward against 6.5 M, and 2.35x the DDC step's images/s
    (docs/SPEED.md). ``dropout`` > 0 (backbone ``lenet_tllib``, 0.5) adds TLlib's two dropouts:
    whole channels of conv2's output (PyTorch's ``Dropout2d``, Keras' ``SpatialDropout2D``)
    and units of fc 500; both are active only in training. ``name``: the backbone name that
    errors cite.
    """
    if padding == "valid" and min(input_shape[:2]) < 16:
        raise ConfigError(f"data.image_size: {name}'s unpadded convolutions need at least "
                          f"16 px, got {min(input_shape[:2])}")
    inp = keras.Input(input_shape)
    x = layers.Conv2D(20, 5, padding=padding, activation="relu", name="conv1")(inp)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(50, 5, padding=padding, activation="relu", name="conv2")(x)
    if dropout:  # before pooling as in TLlib (the two commute: a channel dropped stays dropped)
        x = layers.SpatialDropout2D(dropout, name="drop2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(500, activation="relu", name="fc3")(x)
    if dropout:
        x = layers.Dropout(dropout, name="drop3")(x)
    return keras.Model(inp, x, name="backbone")


def alexnet(input_shape, dropout: float = 0.5) -> keras.Model:
    """The 8-layer network of the DDC paper up to fc7 (LRN omitted, as in most reimplementations)."""
    inp = keras.Input(input_shape)
    x = layers.Conv2D(96, 11, strides=4, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = layers.Conv2D(256, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(4096, activation="relu", name="fc6")(x)
    x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Dense(4096, activation="relu", name="fc7")(x)
    x = layers.Dropout(dropout, name="drop7")(x)
    return keras.Model(inp, x, name="backbone")


def build_backbone(cfg: ModelConfig, input_shape: tuple, weights: str | None) -> keras.Model:
    """Builds the backbone named by ``cfg.backbone`` with ``weights`` (None, "imagenet", a file).

    Raises:
        ConfigError: weights that cannot be had or do not fit this backbone.
    """
    if cfg.backbone in SCRATCH:
        if weights is not None:
            raise ConfigError(f"model.weights: {cfg.backbone} is built from scratch here; "
                              f"expected null, got {weights!r}")
        if cfg.backbone == "alexnet":
            return alexnet(input_shape)
        padding, dropout = LENETS[cfg.backbone]
        return lenet(input_shape, padding, dropout, name=cfg.backbone)
    ctor_name, _ = APPLICATIONS[cfg.backbone]
    ctor = getattr(keras.applications, ctor_name)
    kwargs = dict(include_top=False, weights=weights, input_shape=tuple(input_shape), pooling="avg")
    if cfg.backbone in ("mobilenet", "mobilenet_v2"):
        kwargs["alpha"] = cfg.alpha
    if weights is not None and input_shape[-1] != 3:
        raise ConfigError(f"data.channels: pretrained {cfg.backbone} weights need 3 channels, "
                          f"got {input_shape[-1]}")
    try:
        # Keras only warns when parts of a weights file match no layer (those layers keep their
        # random init); record the warnings so such a half-loaded backbone is an error instead.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = ctor(**kwargs)
    except Exception as e:  # keras raises several types for a bad file or a failed download
        first = _load_error_summary(e)
        if weights == "imagenet":
            raise ConfigError(f"model.weights: cannot get ImageNet weights for {cfg.backbone} "
                              f"({first}); without internet, point model.weights at a local file") from None
        where = f"weights file {weights} " if weights else ""
        raise ConfigError(f"model.weights: {where}does not fit backbone {cfg.backbone} "
                          f"(alpha={cfg.alpha}, input {tuple(input_shape)}): {first}") from None
    partial = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)]
    if weights is not None and partial:
        raise ConfigError(f"model.weights: weights file {weights} does not fit backbone "
                          f"{cfg.backbone}: {len(partial)} parts were not in the file and would keep "
                          f"random weights ({partial[0][:200]})")
    for w in caught:
        if "freshly-initialized" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model
