"""Option checks shared by several terms (each raises ``ConfigError`` naming the key)."""

from __future__ import annotations

import json


def require(cond: bool, key: str, expected: str, value) -> None:
    from ddc.config import ConfigError
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {json.dumps(value)}")


def choice(key: str, value, allowed) -> None:
    require(value in allowed, key, f"one of {', '.join(map(str, allowed))}", value)


def positive_list(key: str, values) -> None:
    require(len(values) > 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                    and v > 0 for v in values),
            key, "a non-empty list of positive numbers", values)


def widths(key: str, values) -> None:
    require(all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values),
            key, "a list of positive integers", values)


def layer_names(key: str, names, cfg) -> None:
    """``names`` are layers the network can output for a term (see ``StepInputs.layer``)."""
    from ddc.align.base import BUILTIN_LAYERS
    from ddc.models.net import head_layer_names
    known = list(BUILTIN_LAYERS) + [n for n in head_layer_names(cfg.model) if n not in BUILTIN_LAYERS]
    require(len(names) > 0 and all(isinstance(n, str) for n in names), key,
            "a non-empty list of layer names", names)
    for n in names:
        require(n in known, key, f"layer names among {', '.join(known)}", names)
