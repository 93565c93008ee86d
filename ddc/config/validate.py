"""Checks of a parsed config, one function per section; each raises ``ConfigError`` naming the key."""

from __future__ import annotations

import json

from ddc.config.schema import BACKBONES, FREEZE_MODES, Config, ConfigError


def _choice(key: str, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(map(str, allowed))}, got {json.dumps(value)}")


def _check(cond: bool, key: str, expected: str, value):
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {json.dumps(value)}")


def _check_data(cfg: Config) -> None:
    data = cfg.data
    _check(any(data.augment is v or (isinstance(v, str) and data.augment == v)
               for v in (False, True, "flips", "d4")), "data.augment",
           "true or false, \"flips\" or \"d4\"", data.augment)
    for name, dom in (("data.source", data.source), ("data.target", data.target)):
        given = [s for s in ("root", "tfds", "synthetic") if getattr(dom, s)]
        _check(len(given) == 1, name, "exactly one of root, tfds or synthetic", given)
        _check(dom.max_per_class is None or dom.max_per_class > 0, f"{name}.max_per_class",
               "a positive integer or null", dom.max_per_class)
        for src_name, dst_name in dom.class_map.items():
            _check(isinstance(dst_name, str), f"{name}.class_map.{src_name}", "a class name", dst_name)
    _check(data.image_size >= 8, "data.image_size", "an integer >= 8", data.image_size)
    _choice("data.channels", data.channels, (1, 3))
    _check(0.0 <= data.val_fraction < 1.0, "data.val_fraction", "a number in [0, 1)",
           data.val_fraction)
    _choice("data.cache", data.cache, ("memory", "disk"))
    _check(data.decode_workers >= 1, "data.decode_workers", "an integer >= 1", data.decode_workers)


def _check_model(cfg: Config) -> None:
    model, freeze = cfg.model, cfg.model.freeze
    if cfg.mode == "features":
        _check(freeze.mode != "none", "model.freeze.mode", "a frozen start of the backbone in "
               "mode \"features\" (backbone, first_n, until or prefix)", freeze.mode)
    _check(not model.adabn or cfg.mode == "features", "model.adabn",
           "false outside mode \"features\" (AdaBN recomputes the frozen part's BatchNorm "
           "statistics on each domain before its features are extracted)", model.adabn)
    _choice("model.backbone", model.backbone, BACKBONES)
    _check(model.alpha > 0, "model.alpha", "a number > 0", model.alpha)
    _check(model.head_hidden >= 0, "model.head_hidden", "an integer >= 0", model.head_hidden)
    _check(model.adapt_width >= 0, "model.adapt_width", "an integer >= 0", model.adapt_width)
    _check(not model.adapt_bn or model.adapt_width > 0, "model.adapt_bn",
           "false without an adaptation layer (model.adapt_width 0)", model.adapt_bn)
    _check(0.0 <= model.dropout < 1.0, "model.dropout", "a number in [0, 1)", model.dropout)
    _choice("model.freeze.mode", freeze.mode, FREEZE_MODES)
    if freeze.mode == "first_n":
        _check(freeze.n > 0, "model.freeze.n", "an integer > 0 with mode first_n", freeze.n)
    if freeze.mode == "until":
        _check(bool(freeze.layer), "model.freeze.layer", "a layer name with mode until",
               freeze.layer)
    if freeze.mode == "prefix":
        _check(bool(freeze.prefixes) and all(isinstance(p, str) for p in freeze.prefixes),
               "model.freeze.prefixes", "a non-empty list of name prefixes with mode prefix",
               freeze.prefixes)


def _check_train(cfg: Config) -> None:
    train = cfg.train
    _check(train.steps > 0, "train.steps", "an integer > 0", train.steps)
    _check(train.batch_size >= 1, "train.batch_size", "an integer >= 1", train.batch_size)
    _choice("train.optimizer", train.optimizer, ("sgd", "adam"))
    _check(train.lr > 0, "train.lr", "a number > 0", train.lr)
    _check(0.0 <= train.momentum < 1.0, "train.momentum", "a number in [0, 1)", train.momentum)
    _check(train.weight_decay >= 0, "train.weight_decay", "a number >= 0", train.weight_decay)
    _check(0.0 <= train.label_smoothing < 1.0, "train.label_smoothing", "a number in [0, 1)",
           train.label_smoothing)
    _choice("train.lr_schedule", train.lr_schedule, ("constant", "inv"))
    _check(train.backbone_lr_mult is None or train.backbone_lr_mult >= 0, "train.backbone_lr_mult",
           "a number >= 0 or null", train.backbone_lr_mult)
    _check(0 <= train.head_only_steps < train.steps, "train.head_only_steps",
           "an integer in [0, train.steps)", train.head_only_steps)
    for key in ("eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size",
                "steps_per_call"):
        _check(getattr(train, key) >= 1, f"train.{key}", "an integer >= 1", getattr(train, key))
    _choice("train.precision", train.precision, ("float32", "mixed_float16", "mixed_bfloat16"))
    _choice("train.distribute", train.distribute, ("none", "mirrored", "multi_worker"))


def _check_align(cfg: Config) -> None:
    from ddc.align.base import SCHEDULES
    for name, opts in cfg.align.items():
        key = f"align.{name}"
        _check(opts.weight >= 0, f"{key}.weight", "a number >= 0 (lambda)", opts.weight)
        _choice(f"{key}.schedule", opts.schedule, SCHEDULES)
        if opts.weight > 0:
            opts.check(key, cfg)


def validate(cfg: Config) -> Config:
    """Rejects impossible values; returns ``cfg`` unchanged when it is usable."""
    _choice("mode", cfg.mode, ("train", "features"))
    _check_data(cfg)
    _check_model(cfg)
    _check_train(cfg)
    _check_align(cfg)
    return cfg
