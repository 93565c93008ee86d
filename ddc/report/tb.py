"""TensorBoard in and out: reading a run's scalars, writing report images and the HParams summary.

The training loop writes TF2 summaries; those are read back from ``EventAccumulator`` under
``Tensors`` (not ``Scalars``). Everything written here goes to the run's own
``workdir/tensorboard`` so it shows beside the training curves of that run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Final numbers from results.json shown as metrics in the HParams dashboard.
FINAL_METRICS = ("target_acc", "target_mean_class_acc", "target_macro_f1", "source_val_acc",
                 "best_source_val_acc", "target_acc_at_best_source_val", "target_entropy",
                 "wall_time_s", "images_per_s")


def read_scalars(logdir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of the event files in ``logdir``: ``{tag: (steps int [T], values [T])}``.

    Steps are sorted; a step logged twice (a resumed run repeats the steps after its last
    checkpoint) keeps the value written last.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    logdir = Path(logdir)
    if not logdir.is_dir():
        return {}
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out = {}
    tags = acc.Tags()
    for tag in tags.get("tensors", []):
        events = acc.Tensors(tag)
        vals = {}
        for e in sorted(events, key=lambda e: e.wall_time):
            arr = make_ndarray(e.tensor_proto)
            if arr.size != 1 or arr.dtype.kind not in "fiub":
                break  # not a scalar summary (an image, text or hparams)
            vals[int(e.step)] = float(arr.reshape(()))
        else:
            if vals:
                steps = np.array(sorted(vals), np.int64)
                out[tag] = (steps, np.array([vals[s] for s in steps], np.float64))
    for tag in tags.get("scalars", []):  # TF1-style summaries, if any
        vals = {int(e.step): float(e.value) for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time)}
        steps = np.array(sorted(vals), np.int64)
        out.setdefault(tag, (steps, np.array([vals[s] for s in steps], np.float64)))
    return out


def read_run_scalars(workdir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A run's scalars from ``workdir/tensorboard``, else its eval records in ``metrics.jsonl``."""
    workdir = Path(workdir)
    out = read_scalars(workdir / "tensorboard")
    if out:
        return out
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return {}
    recs = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        recs[int(r["step"])] = r
    steps = np.array(sorted(recs), np.int64)
    for key in {k for r in recs.values() for k in r if k != "step"}:
        s = [st for st in steps if recs[st].get(key) is not None]
        if s:
            out[f"eval/{key}"] = (np.array(s, np.int64), np.array([recs[st][key] for st in s], float))
    return out


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


def write_images(logdir: str | Path, images: dict, step: int) -> None:
    """Writes PNG files as TensorBoard images: ``images`` maps a tag to a PNG path."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default(step=int(step)):
        for tag, path in images.items():
            png = tf.io.decode_png(tf.io.read_file(str(path)), channels=4)
            tf.summary.image(tag, png[None], step=int(step))
    writer.close()


def log_run_summary(workdir: str | Path, cfg_dict: dict, results: dict, *,
                    images: bool = True) -> None:
    """End-of-run TensorBoard summary of a run: hyperparameters and final metrics for the
    HParams dashboard, and the learning curves as an image.

    The hyperparameters are the run's config flattened to dotted keys; the metrics are
    ``final/<key>`` scalars for the keys of :data:`FINAL_METRICS` found in ``results``. With
    ``results["target_confusion"]`` ([K, K] counts, row = true class) the target confusion
    matrix is drawn too.

    Args:
        workdir: the run directory (summaries go to ``workdir/tensorboard``).
        cfg_dict: the resolved config as a dict (``cfg.to_dict()``).
        results: the dict written to ``results.json``.
        images: also draw the learning curves and the confusion matrix (matplotlib, about a
            second) into ``workdir/eval`` and TensorBoard.
    """
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    workdir = Path(workdir)
    logdir = workdir / "tensorboard"
    step = int(results.get("steps") or 0)
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default(step=step):
        hp.hparams(flatten_config(cfg_dict), trial_id=str(workdir.resolve()))
        for key in FINAL_METRICS:
            v = results.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                tf.summary.scalar(f"final/{key}", float(v), step=step)
    writer.close()
    if not images:
        return
    # The pictures are a convenience: a plotting failure must not fail a finished run.
    try:
        from ddc.report.plots import plot_confusion, plot_learning_curves

        out = workdir / "eval"
        out.mkdir(exist_ok=True)
        images = {"report/learning_curves": plot_learning_curves(
            {workdir.name: read_run_scalars(workdir)}, out / "learning_curves.png")}
        cm = results.get("target_confusion")
        if cm is not None:
            images["report/target_confusion"] = plot_confusion(
                np.asarray(cm), results["classes"], out / "target_confusion.png",
                title=f"{workdir.name}: target, step {step}")
        write_images(logdir, images, step)
    except Exception as e:  # noqa: BLE001
        log.warning("report images not written to TensorBoard: %s", e)
