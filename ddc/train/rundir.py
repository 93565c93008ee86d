"""The run directory: resolved config, logs, atomic writes, and the same-config check.

Layout of a run directory::

    config.json        the resolved config of the run
    train.log          everything the run logged
    checkpoints/       tf.train.CheckpointManager checkpoints (model, optimizer, step)
    tensorboard/       TensorBoard event files
    results.json       final metrics (written atomically at the end)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


def write_json_atomic(path: Path, data) -> None:
    """Writes JSON to a temporary name in the same folder, then renames: never half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def prepare_workdir(workdir: Path, config: dict, restart: bool) -> bool:
    """Creates ``workdir`` or checks it holds a run of the same config.

    Returns:
        True when an earlier run of this config is there to resume.
    Raises:
        RunError: the folder holds a run of another config (and ``restart`` is False).
    """
    workdir = Path(workdir)
    cfg_path = workdir / "config.json"
    if restart and workdir.exists():
        for name in ("checkpoints", "tensorboard", "results.json", "config.json", "train.log",
                     "metrics.jsonl"):
            p = workdir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    resume = False
    trained = (workdir / "results.json").exists() or _has_checkpoint(workdir / "checkpoints")
    if cfg_path.exists():
        from ddc.config import normalised  # keys added since that run take their defaults
        stored = json.loads(cfg_path.read_text())
        old = normalised(stored) or stored
        if old != json.loads(json.dumps(config)) and trained:
            diff = sorted(k for k in _flatten(old).keys() | _flatten(config).keys()
                          if _flatten(old).get(k) != _flatten(config).get(k))
            raise RunError(f"{workdir} holds a run of a different config (differs in "
                           f"{', '.join(diff[:5])}); use --restart to start over there, or "
                           "another --workdir")
        resume = trained
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg_path, config)
    return resume


def _has_checkpoint(ckpt_dir: Path) -> bool:
    """A checkpoint was recorded (the state file is written after the checkpoint's files)."""
    return (ckpt_dir / "checkpoint").is_file()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = json.dumps(v, sort_keys=True)
    return out


def detach_logging() -> None:
    """Removes and closes the handlers :func:`setup_logging` attached (a finished run's
    ``train.log`` is then closed; a library user or a test calls this between runs)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ddc", False):
            root.removeHandler(h)
            h.close()


def setup_logging(workdir: Path | None) -> None:
    """Logs INFO and above to stderr and to ``workdir/train.log``."""
    detach_logging()
    root = logging.getLogger()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if workdir is not None:
        handlers.append(logging.FileHandler(Path(workdir) / "train.log"))
    for h in handlers:
        h._ddc = True
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO)
    # TensorFlow's absl logger reports at INFO through the root logger ("Sharding callback
    # duration: ..." at every tf.data iterator): keep its warnings only.
    logging.getLogger("absl").setLevel(logging.WARNING)
    # TensorBoard's event reader (learning curves read back at the end of a run) says "No path
    # found after <events file>" at INFO: not news to the user.
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
