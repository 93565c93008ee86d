"""Typed run configuration: dataclasses loaded from JSON, validated before any work starts.

A config is plain data passed down to every part of a run. Loading rejects unknown keys,
wrong types and impossible values with a :class:`ConfigError` whose message names the key
path (for example ``train.lr``) and what was expected; the CLI turns it into one line on
stderr and exit status 2.

Overrides use dotted key paths with JSON values: ``--set train.lr=0.01 --set mmd.kernel=linear``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


class ConfigError(ValueError):
    """A config key holds a value that cannot be used; the message names the key."""


BACKBONES = ("lenet", "alexnet", "mobilenet", "mobilenet_v2", "resnet50", "inception_v3",
             "efficientnet_b0")
FREEZE_MODES = ("none", "backbone", "first_n", "until", "prefix")


@dataclass
class DomainConfig:
    """One domain: a class-folder tree, a TFDS dataset, or built-in synthetic data.

    Exactly one of ``root``, ``tfds`` or ``synthetic`` is set. ``root`` is relative to the
    data root (``--data-root`` or ``$DDC_DATA_ROOT``) unless absolute.
    ``class_map`` maps this domain's folder (or TFDS) class names to source class names,
    many-to-one allowed; a name not in the map keeps its own name.
    """
    root: Optional[str] = None
    tfds: Optional[str] = None
    split: str = "train"
    synthetic: Optional[str] = None
    class_map: dict = field(default_factory=dict)
    max_per_class: Optional[int] = None


@dataclass
class DataConfig:
    source: DomainConfig = field(default_factory=DomainConfig)
    target: DomainConfig = field(default_factory=DomainConfig)
    image_size: int = 224
    channels: int = 3
    val_fraction: float = 0.2
    cache: str = "memory"          # "memory" or "disk" (decoded, resized uint8 arrays)
    cache_dir: Optional[str] = None
    augment: bool = False          # random horizontal and vertical flips of training images
    balance_source: bool = False   # source batches draw each class equally often (source labels only)
    skip_bad_files: bool = False   # skip unreadable images (each named in the log) instead of failing
    decode_workers: int = 8


@dataclass
class FreezeConfig:
    """Which backbone layers keep their weights.

    ``mode``: ``none``; ``backbone`` (all of it); ``first_n`` (the first ``n`` layers of the
    backbone, the reference recipe's "first 172 layers"); ``until`` (up to and including the
    layer named ``layer``); ``prefix`` (layers whose names start with any of ``prefixes``).
    Frozen BatchNorm layers run in inference mode.
    """
    mode: str = "none"
    n: int = 0
    layer: Optional[str] = None
    prefixes: list = field(default_factory=list)


@dataclass
class ModelConfig:
    backbone: str = "lenet"
    weights: Optional[str] = None     # null, "imagenet", or a file (relative to the weights root)
    alpha: float = 1.0                # width multiplier for mobilenet / mobilenet_v2
    head_hidden: int = 0              # >0: Dense(head_hidden, ReLU) before the adaptation layer
    adapt_width: int = 256            # 0: no adaptation layer (MMD on the pooled features)
    dropout: float = 0.0
    freeze: FreezeConfig = field(default_factory=FreezeConfig)


@dataclass
class MMDConfig:
    kernel: str = "gaussian"          # "gaussian" (multi-bandwidth) or "linear" (original DDC)
    estimator: str = "biased"         # "biased", "unbiased" or "linear"
    multipliers: list = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    weight: float = 0.25              # lambda
    schedule: str = "constant"        # "constant" or "warmup": lambda * (2 / (1 + exp(-10 p)) - 1)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32              # per domain: each step sees batch_size source + batch_size target
    optimizer: str = "sgd"            # "sgd" (momentum) or "adam"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"     # "constant" or "inv": lr * (1 + 10 p) ** -0.75
    backbone_lr_mult: Optional[float] = None  # default: 0.1 with pretrained weights, else 1.0
    head_only_steps: int = 0          # two-stage: train with the backbone frozen for this many steps
    eval_every: int = 200
    log_every: int = 20
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    precision: str = "float32"        # "float32", "mixed_float16", "mixed_bfloat16"
    jit_compile: bool = False
    steps_per_call: int = 1           # training steps per traced call (in-graph loop; same math)
    distribute: str = "none"          # "none", "mirrored" (GPUs of one machine), "multi_worker" (TF_CONFIG)
    eval_batch_size: int = 128


@dataclass
class Config:
    name: str = "run"
    # "train": through the whole network; "features": the frozen start of the backbone runs once
    # over the data and its output is cached; the rest trains on the cache (exactly the same
    # model and loss, much faster)
    mode: str = "train"
    seed: int = 0
    deterministic: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mmd: MMDConfig = field(default_factory=MMDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- parsing

def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "an object"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp, key: str):
    """Checks ``value`` against the annotation ``tp``; returns it (ints accepted as floats)."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected an object, got {json.dumps(value)}")
        return _from_dict(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {json.dumps(value)}")
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, list),
        dict: isinstance(value, dict),
    }.get(tp, True)
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {json.dumps(value)}")
    return float(value) if tp is float else value


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"{path}: unknown key (known keys: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _choice(key: str, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(map(str, allowed))}, got {json.dumps(value)}")


def _check(cond: bool, key: str, expected: str, value):
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {json.dumps(value)}")


def validate(cfg: Config) -> Config:
    """Rejects impossible values; returns ``cfg`` unchanged when it is usable."""
    _choice("mode", cfg.mode, ("train", "features"))
    d, m, t, k = cfg.data, cfg.model, cfg.train, cfg.mmd
    if cfg.mode == "features":
        _check(not d.augment, "data.augment", "false in mode \"features\" (cached features "
               "cannot be flipped)", d.augment)
        _check(m.freeze.mode != "none", "model.freeze.mode", "a frozen start of the backbone in "
               "mode \"features\" (backbone, first_n, until or prefix)", m.freeze.mode)
    for name, dom in (("data.source", d.source), ("data.target", d.target)):
        given = [s for s in ("root", "tfds", "synthetic") if getattr(dom, s)]
        _check(len(given) == 1, name, "exactly one of root, tfds or synthetic", given)
        _check(dom.max_per_class is None or dom.max_per_class > 0, f"{name}.max_per_class",
               "a positive integer or null", dom.max_per_class)
        for src_name, dst_name in dom.class_map.items():
            _check(isinstance(dst_name, str), f"{name}.class_map.{src_name}", "a class name", dst_name)
    _check(d.image_size >= 8, "data.image_size", "an integer >= 8", d.image_size)
    _choice("data.channels", d.channels, (1, 3))
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", "a number in [0, 1)", d.val_fraction)
    _choice("data.cache", d.cache, ("memory", "disk"))
    _check(d.decode_workers >= 1, "data.decode_workers", "an integer >= 1", d.decode_workers)
    _choice("model.backbone", m.backbone, BACKBONES)
    _check(m.alpha > 0, "model.alpha", "a number > 0", m.alpha)
    _check(m.head_hidden >= 0, "model.head_hidden", "an integer >= 0", m.head_hidden)
    _check(m.adapt_width >= 0, "model.adapt_width", "an integer >= 0", m.adapt_width)
    _check(0.0 <= m.dropout < 1.0, "model.dropout", "a number in [0, 1)", m.dropout)
    _choice("model.freeze.mode", m.freeze.mode, FREEZE_MODES)
    if m.freeze.mode == "first_n":
        _check(m.freeze.n > 0, "model.freeze.n", "an integer > 0 with mode first_n", m.freeze.n)
    if m.freeze.mode == "until":
        _check(bool(m.freeze.layer), "model.freeze.layer", "a layer name with mode until", m.freeze.layer)
    if m.freeze.mode == "prefix":
        _check(bool(m.freeze.prefixes) and all(isinstance(p, str) for p in m.freeze.prefixes),
               "model.freeze.prefixes", "a non-empty list of name prefixes with mode prefix",
               m.freeze.prefixes)
    _choice("mmd.kernel", k.kernel, ("gaussian", "linear"))
    _choice("mmd.estimator", k.estimator, ("biased", "unbiased", "linear"))
    _check(len(k.multipliers) > 0 and all(isinstance(x, (int, float)) and x > 0 for x in k.multipliers),
           "mmd.multipliers", "a non-empty list of positive numbers", k.multipliers)
    _check(k.weight >= 0, "mmd.weight", "a number >= 0 (lambda)", k.weight)
    _choice("mmd.schedule", k.schedule, ("constant", "warmup"))
    _check(t.steps > 0, "train.steps", "an integer > 0", t.steps)
    _check(t.batch_size >= 1, "train.batch_size", "an integer >= 1", t.batch_size)
    if k.weight > 0 and k.kernel == "gaussian" and k.estimator == "unbiased":
        _check(t.batch_size >= 2, "train.batch_size", "an integer >= 2 for the unbiased estimator",
               t.batch_size)
    if k.weight > 0 and k.kernel == "gaussian" and k.estimator == "linear":
        _check(t.batch_size >= 2 and t.batch_size % 2 == 0, "train.batch_size",
               "an even integer >= 2 for the linear estimator", t.batch_size)
    _choice("train.optimizer", t.optimizer, ("sgd", "adam"))
    _check(t.lr > 0, "train.lr", "a number > 0", t.lr)
    _check(0.0 <= t.momentum < 1.0, "train.momentum", "a number in [0, 1)", t.momentum)
    _check(t.weight_decay >= 0, "train.weight_decay", "a number >= 0", t.weight_decay)
    _choice("train.lr_schedule", t.lr_schedule, ("constant", "inv"))
    _check(t.backbone_lr_mult is None or t.backbone_lr_mult >= 0, "train.backbone_lr_mult",
           "a number >= 0 or null", t.backbone_lr_mult)
    _check(0 <= t.head_only_steps < t.steps, "train.head_only_steps",
           "an integer in [0, train.steps)", t.head_only_steps)
    for key in ("eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size",
                "steps_per_call"):
        _check(getattr(t, key) >= 1, f"train.{key}", "an integer >= 1", getattr(t, key))
    _choice("train.precision", t.precision, ("float32", "mixed_float16", "mixed_bfloat16"))
    _choice("train.distribute", t.distribute, ("none", "mirrored", "multi_worker"))
    return cfg


def from_dict(data: dict) -> Config:
    """Builds and validates a :class:`Config` from a (JSON) dict."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a JSON object, got {type(data).__name__}")
    return validate(_from_dict(Config, data))


def normalised(data: dict) -> dict | None:
    """``data`` (a config dict, e.g. a run's ``config.json``) as this code resolves it, as plain
    JSON: keys added to the library since it was written take their defaults, so two dicts of
    the same run compare equal across such additions. None if it is not a valid config."""
    try:
        return json.loads(json.dumps(from_dict(data).to_dict()))
    except (ConfigError, TypeError, ValueError):
        return None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies ``key.path=value`` overrides (value parsed as JSON, else taken as a string)."""
    data = json.loads(json.dumps(data))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key.path=value")
        path, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        keys = path.strip().split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {path}: {key} is not an object")
        node[keys[-1]] = value
    return data


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Reads a JSON config file, applies ``--set`` overrides and validates the result."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return from_dict(apply_overrides(data, overrides or []))
