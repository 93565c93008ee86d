"""Sweeps: one run directory per resolved config, found again by a later invocation.

A sweep (a grid of configs, each run once per seed, e.g. ``benchmarks/accuracy.py``) keeps
each run in ``<parent>/<prefix>-<config_hash(config)>`` (:func:`run_dir`): a changed config
(another ``--set``, a new default value) gets a new directory instead of clashing with the old
one, and a resumed sweep reads a finished run back (:func:`finished_run`) instead of rerunning
it. Configs are compared ``ddc.config.normalised``, so a run made before the library gained a
default-valued key still counts as a run of the same config (its directory keeps the old hash).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def config_hash(config: dict) -> str:
    """Eight hex digits of the SHA-1 of ``config`` as sorted-key JSON."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def run_dir(parent: Path, prefix: str, config: dict) -> Path:
    """Where a sweep keeps the run of ``config``: ``parent / f"{prefix}-{config_hash(config)}"``."""
    return Path(parent) / f"{prefix}-{config_hash(config)}"


def finished_run(parent: Path, prefix: str, config: dict,
                 meta: str) -> tuple[dict, dict, Path] | None:
    """``(results, meta, run directory)`` of a finished run of ``config`` among the
    ``<prefix>-*`` directories of ``parent`` (the first in name order), or None.

    A run is finished when its directory holds ``config.json``, ``results.json`` and the
    sweep's own file ``meta`` (which the sweep writes after the run returned); ``config.json``
    must equal ``config``, both ``normalised`` (a run made before a new default-valued key
    still matches). None also when ``config`` is not a valid config.
    """
    from ddc.config import normalised
    want = normalised(config)
    if want is None:
        return None
    for workdir in sorted(Path(parent).glob(f"{prefix}-*")):
        paths = [workdir / n for n in ("config.json", "results.json", meta)]
        if all(p.exists() for p in paths) and normalised(json.loads(paths[0].read_text())) == want:
            return json.loads(paths[1].read_text()), json.loads(paths[2].read_text()), workdir
    return None
