"""The run directory: resolved config, logs, atomic writes, and the same-config check.

Layout of a run directory::

    config.json        the resolved config of the run
    train.log          everything the run logged
    checkpoints/       tf.train.CheckpointManager checkpoints (model, optimizer, step)
    tensorboard/       TensorBoard event files
    metrics.jsonl      one line per evaluation
    results.json       final metrics (written atomically at the end)
    eval/              the learning curves and confusion matrix as PNGs, and
                       target_probs.npy: the final softmax predictions of the target samples
                       (float16 [N, K], in the order of the target's files), for comparing
                       runs without their checkpoints (``ddc.selection.consensus_agreement``)
    .replaced-<time>/  after ``--restart``: the earlier run's files, until the new run saves
                       its first checkpoint

Nothing is written into the run directory before every input of the run was checked
(``check_workdir`` only reads); faults of the folder itself (a file in the way, no write
permission, a full disk) become one ``RunError`` naming the path.
"""

from __future__ import annotations

import errno
import json
import logging
import logging.handlers
import os
import shutil
import sys
import time
from pathlib import Path

from ddc.config.flatten import flatten_config
from ddc.paths import TARGET_PROBS

log = logging.getLogger(__name__)

# what a run writes into its directory: moved aside as a whole by --restart
RUN_FILES = ("checkpoints", "tensorboard", "eval", "results.json", "metrics.jsonl",
             "config.json", "train.log")
REPLACED = ".replaced-"


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary name in the same folder, then renames: never half-written."""
    _write_atomic(path, "w", lambda f: f.write(text))


def save_target_probs(workdir: Path, probs) -> Path:
    """``probs`` [N, K] as float16 to the run's ``TARGET_PROBS``, written atomically."""
    import numpy as np

    path = Path(workdir) / TARGET_PROBS
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, "wb", lambda f: np.save(f, np.asarray(probs, np.float16)))
    return path


def _write_atomic(path: Path, mode: str, write) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)   # a full disk leaves no torn temporary file behind
        except OSError:
            pass
        raise


def write_json_atomic(path: Path, data) -> None:
    """``data`` as JSON (indent 2; numpy scalars and arrays as numbers and lists), written
    by ``write_text_atomic``."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default))


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


def check_workdir(workdir: Path, config: dict, restart: bool) -> bool:
    """Checks, reading only, that ``workdir`` can take a run of ``config``.

    Returns:
        True when an earlier run of this config is there to resume (never with ``restart``).
    Raises:
        RunError: ``workdir`` (or a parent) is a file or not writable, or it holds a run of
            another config (and ``restart`` is False).
    """
    workdir = Path(workdir)
    _check_writable(workdir)
    cfg_path = workdir / "config.json"
    if restart or not cfg_path.exists():
        return False
    trained = (workdir / "results.json").exists() or _has_checkpoint(workdir / "checkpoints")
    from ddc.config import normalised  # keys added since that run take their defaults
    try:
        stored = json.loads(cfg_path.read_text())
        old = normalised(stored) or stored
    except (OSError, ValueError) as e:
        if not trained:
            return False   # a start that trained nothing: its config is simply replaced
        raise RunError(f"{cfg_path}: cannot read the config of the run there ({e}); use "
                       "--restart to start over there, or another --workdir") from None
    if old != json.loads(json.dumps(config)) and trained:
        diff = sorted(k for k in flatten_config(old).keys() | flatten_config(config).keys()
                      if flatten_config(old).get(k) != flatten_config(config).get(k))
        raise RunError(f"{workdir} holds a run of a different config (differs in "
                       f"{', '.join(diff[:5])}); use --restart to start over there, or "
                       "another --workdir")
    return trained


def prepare_workdir(workdir: Path, config: dict, restart: bool) -> bool:
    """Checks ``workdir`` (:func:`check_workdir`), then makes it and writes ``config.json``;
    with ``restart`` the earlier run's files first move to ``workdir/.replaced-<time>/``
    (:func:`drop_replaced` deletes that folder once the new run saved a checkpoint).

    Call it only after every other input of the run was checked: it is the first write.

    Returns:
        True when an earlier run of this config is there to resume.
    Raises:
        RunError: as :func:`check_workdir`, or the folder cannot be written (named).
    """
    workdir = Path(workdir)
    resume = check_workdir(workdir, config, restart)
    try:
        if restart and workdir.is_dir():
            _move_aside(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / "config.json", config)
    except OSError as e:
        raise RunError(write_error(e, workdir)) from None
    return resume


def write_error(e: OSError, workdir: Path) -> str:
    """One line for a failed write in the run directory: the path, why, and what to do."""
    path = e.filename or workdir
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        todo = "free disk space (or choose another --workdir) and run the same command again"
    elif e.errno == errno.EROFS:
        todo = "the file system is read-only; choose another --workdir"
    elif e.errno in (errno.EACCES, errno.EPERM):
        todo = f"make {workdir} writable or choose another --workdir"
    elif e.errno in (errno.EEXIST, errno.ENOTDIR):
        todo = "a file is in the way of the run directory; move it or choose another --workdir"
    else:
        todo = "fix the folder or choose another --workdir"
    return f"{path}: cannot write the run directory ({e.strerror or e}); {todo}"


def _check_writable(workdir: Path) -> None:
    """``workdir``, or its nearest existing parent, is a folder this process may write."""
    p = workdir
    while not (p.exists() or p.is_symlink()) and p.parent != p:
        p = p.parent
    if not p.is_dir():
        where = "--workdir names" if p == workdir else f"the run directory {workdir} is under"
        raise RunError(f"{p}: {where} a file, not a folder; choose another --workdir")
    if not os.access(p, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "read-only file system" if read_only else "no write permission"
        where = "" if p == workdir else f", so the run directory {workdir} cannot be made there"
        raise RunError(f"{p}: not writable ({why}){where}; "
                       + ("choose another --workdir" if read_only
                          else "make it writable or choose another --workdir"))


def _move_aside(workdir: Path) -> Path | None:
    """Moves the run files of ``workdir`` into a new ``workdir/.replaced-<time>/``."""
    names = [n for n in RUN_FILES if (workdir / n).exists() or (workdir / n).is_symlink()]
    names += sorted(p.name for p in workdir.glob(".worker*"))   # non-chief checkpoints
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = workdir / f"{REPLACED}{stamp}", 1
    while dest.exists():
        dest, n = workdir / f"{REPLACED}{stamp}-{n}", n + 1
    dest.mkdir()
    for name in names:
        try:
            os.replace(workdir / name, dest / name)
        except FileNotFoundError:   # moved by another worker of the same run
            pass
        except OSError as e:
            raise RunError(f"{workdir / name}: cannot move the earlier run aside for --restart "
                           f"({e.strerror}); nothing was deleted (some of its files are in "
                           f"{dest}); fix the folder or choose another --workdir") from None
    log.warning("--restart: the earlier run's files are in %s until this run saves its first "
                "checkpoint", dest)
    return dest


def replaced_runs(workdir: Path) -> list[Path]:
    """The ``.replaced-<time>`` folders of earlier runs that ``--restart`` moved aside."""
    return sorted(p for p in Path(workdir).glob(REPLACED + "*") if p.is_dir())


def drop_replaced(workdir: Path) -> None:
    """Deletes the runs ``--restart`` moved aside (call once the new run saved a checkpoint)."""
    for p in replaced_runs(workdir):
        shutil.rmtree(p, ignore_errors=True)
        log.info("deleted %s (the run replaced by --restart): this run saved a checkpoint", p)


def _has_checkpoint(ckpt_dir: Path) -> bool:
    """A checkpoint was recorded (the state file is written after the checkpoint's files)."""
    return (ckpt_dir / "checkpoint").is_file()


def detach_logging() -> None:
    """Removes and closes the handlers :func:`setup_logging` attached (a finished run's
    ``train.log`` is then closed; a library user or a test calls this between runs)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ddc", False):
            root.removeHandler(h)
            h.close()


_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")


def setup_logging(workdir: Path | None, *, buffer: bool = False) -> None:
    """Logs INFO and above to stderr and to ``workdir/train.log``.

    With ``buffer`` (and no ``workdir``: the run directory is not made until every input was
    checked) the records are also kept, and :func:`attach_run_log` writes them into
    ``train.log`` once the directory exists.
    """
    detach_logging()
    root = logging.getLogger()
    handlers = [logging.StreamHandler(sys.stderr)]
    if workdir is not None:
        handlers.append(logging.FileHandler(Path(workdir) / "train.log"))
    if buffer:
        handlers.append(logging.handlers.MemoryHandler(sys.maxsize, logging.CRITICAL + 1))
    for h in handlers:
        h._ddc = True
        h.setFormatter(_FORMAT)
        root.addHandler(h)
    root.setLevel(logging.INFO)
    # TensorFlow's absl logger reports at INFO through the root logger ("Sharding callback
    # duration: ..." at every tf.data iterator): keep its warnings only.
    logging.getLogger("absl").setLevel(logging.WARNING)
    # TensorBoard's event reader (learning curves read back at the end of a run) says "No path
    # found after <events file>" at INFO: not news to the user.
    logging.getLogger("tensorboard").setLevel(logging.WARNING)


def attach_run_log(workdir: Path) -> None:
    """Starts ``workdir/train.log`` (appending), with the records :func:`setup_logging` kept
    while the inputs were checked."""
    path = Path(workdir) / "train.log"
    try:
        fh = logging.FileHandler(path)
    except OSError as e:
        raise RunError(write_error(e, Path(workdir))) from None
    fh._ddc = True
    fh.setFormatter(_FORMAT)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ddc", False) and isinstance(h, logging.handlers.MemoryHandler):
            h.setTarget(fh)
            h.flush()
            h.setTarget(None)
            root.removeHandler(h)
            h.close()
    root.addHandler(fh)
