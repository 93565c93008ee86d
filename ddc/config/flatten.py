"""A config as dotted keys: for HParams, run comparison tables and config diffs."""

from __future__ import annotations

import json


def flatten_config(cfg: dict, prefix: str = "") -> dict:
    """Dotted keys to scalar values: lists and dicts as JSON text, None as "null"."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and key not in _OPAQUE:
            out.update(flatten_config(v, key))
        elif v is None:
            out[key] = "null"
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v, sort_keys=True)
    return out


# Free-form maps: one value (JSON text), not one hyperparameter per class name.
_OPAQUE = {"data.source.class_map", "data.target.class_map"}
