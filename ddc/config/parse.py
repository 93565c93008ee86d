"""Reading a config: JSON file, ``--set`` overrides, typed coercion, the legacy ``mmd`` block."""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any, Union

from ddc.config.schema import Config, ConfigError
from ddc.config.validate import validate


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "an object"}.get(tp, getattr(tp, "__name__", str(tp)))


def _finite(value) -> bool:
    """No inf or NaN anywhere in a JSON value (``Infinity`` and ``NaN`` parse as floats)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


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
    if not _finite(value):
        raise ConfigError(f"{key}: expected finite numbers (no Infinity or NaN), got "
                          f"{json.dumps(value)}")
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


def parse_align(data: dict) -> dict:
    """``data["align"]`` (name -> options object) as each term's options dataclass; an old
    ``mmd`` block (weight > 0, default 0.25 as before) becomes ``align.mmd``. Options are
    parsed but not cross-checked (``validate`` does that)."""
    from ddc.align import REGISTRY, term_class
    if "mmd" in data:
        if "align" in data:
            raise ConfigError("mmd: this config has an align mapping; set align.mmd.<option> "
                              "(or align={} for source only) instead of the old mmd block")
        legacy = _coerce(data["mmd"], term_class("mmd").Options, "mmd")
        return {"mmd": legacy} if legacy.weight > 0 else {}
    raw = data.get("align", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"align: expected an object of method name -> options, got "
                          f"{json.dumps(raw)}")
    out = {}
    for name, opts in raw.items():
        if name not in REGISTRY:
            raise ConfigError(f"align.{name}: unknown method (known: {', '.join(REGISTRY)})")
        out[name] = _coerce(opts, term_class(name).Options, f"align.{name}")
    return out


def from_dict(data: dict) -> Config:
    """Builds and validates a :class:`Config` from a (JSON) dict."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a JSON object, got {type(data).__name__}")
    align = parse_align(data)
    rest = {k: v for k, v in data.items() if k not in ("mmd", "align")}
    cfg = _from_dict(Config, rest)
    cfg.align = align
    try:
        return validate(cfg)
    except ConfigError as e:
        if "mmd" in data and str(e).startswith("align.mmd."):  # name the key the file has
            raise ConfigError(str(e)[len("align."):]) from None
        raise


def normalised(data: dict) -> dict | None:
    """``data`` (a config dict, e.g. a run's ``config.json``) as this code resolves it, as plain
    JSON: keys added to the library since it was written take their defaults (an old ``mmd``
    block becomes ``align.mmd``), so two dicts of the same run compare equal across such
    changes. None if it is not a valid config."""
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


def read_text(path: Path) -> str:
    """A config file's text: UTF-8 (a byte-order mark is dropped) or UTF-16/32 with a BOM (as
    Windows Notepad saves). ConfigError naming the file for anything that is not a readable
    text file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                     (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            break
    else:
        enc = "utf-8"
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file in UTF-8 (byte {e.start}); save the config "
                          "as UTF-8 JSON") from None


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Reads a JSON config file, applies ``--set`` overrides and validates the result."""
    path = Path(path)
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return from_dict(apply_overrides(data, overrides or []))
