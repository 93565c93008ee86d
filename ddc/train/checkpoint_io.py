"""Checkpoint saves that fail cleanly, and the one line for a fault of the run folder.

``tf.train.CheckpointManager.save`` writes the checkpoint's data and index files, then the
``checkpoint`` state file that names it. A save that fails (a full disk: ``ResourceExhaustedError
... No space left on device [Op:SaveV2]``) leaves the state file naming the previous checkpoint;
:func:`save_checkpoint` also removes what the failed save wrote, so no half-written checkpoint is
left for anything to pick up, and raises a ``RunError`` naming the last good checkpoint.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import tensorflow as tf

from ddc.train.rundir import RunError, drop_replaced, write_error

# errors of writing files, as opposed to bugs: turned into one line by ``run_folder_error``
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                getattr(errno, "EDQUOT", errno.ENOSPC)}


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> str:
    """Saves the checkpoint of ``step`` as ``ckpt-<step>`` and returns its path.

    * When the latest checkpoint already is of ``step`` (saved at an evaluation step and again
      at a stage switch or a Ctrl-C there, or a resume interrupted before its first step),
      nothing is written: that checkpoint holds this very state, and is not overwritten.
    * ``save_counter`` (TensorFlow's count of saves, a saved tensor too) is set to ``step``, so
      a run interrupted and resumed saves the same value as an uninterrupted one.
    * After the save of the run's own ``checkpoints/``, the runs ``--restart`` moved aside go.

    Raises:
        RunError: the save failed; its partial files were removed and the message names the
            last good checkpoint, which is intact.
    """
    ckpt_dir, name = Path(manager.directory), f"ckpt-{step}"
    latest = manager.latest_checkpoint
    if latest and Path(latest).name == name:
        return latest
    manager.checkpoint.save_counter.assign(step - 1)   # the save adds one
    try:
        path = manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
        good = recorded_checkpoints(ckpt_dir)
        if name not in {Path(p).name for p in good}:
            _remove_partial(ckpt_dir, name)
        last = good[-1] if good else None
        raise RunError(f"{ckpt_dir / name}: cannot save the checkpoint of step {step} "
                       f"({_reason(e)}); " + (f"the last good checkpoint, intact, is {last}; "
                                              if last else "no checkpoint was saved before; ")
                       + _todo(e, ckpt_dir)) from None
    if ckpt_dir.name == "checkpoints":
        drop_replaced(ckpt_dir.parent)
    return path


def recorded_checkpoints(ckpt_dir: Path) -> list[str]:
    """The checkpoints the state file names, oldest first (the last is the latest)."""
    try:
        state = tf.train.get_checkpoint_state(str(ckpt_dir))
    except (tf.errors.OpError, OSError, ValueError):
        return []
    if state is None or not state.model_checkpoint_path:
        return []
    paths = [p for p in state.all_model_checkpoint_paths if p != state.model_checkpoint_path]
    return paths + [state.model_checkpoint_path]


def run_folder_error(e: OSError, workdir: Path, ckpt_dir: Path) -> RunError | None:
    """The ``RunError`` for a failed write in the run directory during training (results.json,
    metrics.jsonl, the pictures), naming the latest checkpoint; None for other errors."""
    if e.errno not in WRITE_ERRNOS:
        return None
    good = recorded_checkpoints(ckpt_dir)
    where = (f"the latest checkpoint, intact, is {good[-1]}" if good
             else "no checkpoint was saved")
    return RunError(f"{write_error(e, Path(workdir))}; {where}")


def _remove_partial(ckpt_dir: Path, name: str) -> None:
    """Deletes what a failed save of ``name`` wrote: its data/index files and the temporary
    folder of its shards (``<name>_temp/``)."""
    for p in list(ckpt_dir.glob(name + ".*")) + list(ckpt_dir.glob(name + "_temp*")):
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            pass


def _reason(e: Exception) -> str:
    text = e.message if isinstance(e, tf.errors.OpError) else (e.strerror or str(e))
    if "No space left on device" in text or getattr(e, "errno", None) == errno.ENOSPC:
        return "no space left on device"
    if isinstance(e, tf.errors.ResourceExhaustedError) and "quota" in text.lower():
        return "disk quota exceeded"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def _todo(e: Exception, ckpt_dir: Path) -> str:
    if isinstance(e, tf.errors.PermissionDeniedError) or getattr(e, "errno", None) in (
            errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {ckpt_dir} writable"
    elif isinstance(e, tf.errors.ResourceExhaustedError) or getattr(e, "errno", None) in (
            errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "free disk space"
    else:
        fix = f"fix {ckpt_dir}"
    return f"{fix} and run the same command to resume"
