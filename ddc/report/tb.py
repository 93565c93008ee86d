"""TensorBoard in and out: reading a run's scalars, writing report images and the HParams summary.

The training loop writes TF2 summaries; those are read back from ``EventAccumulator`` under
``Tensors`` (not ``Scalars``). Everything written here goes to the run's own
``workdir/tensorboard`` so it shows beside the training curves of that run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ddc.train.history import read_history
from ddc.train.summaries import write_hparams

log = logging.getLogger(__name__)



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
    recs = {int(r["step"]): r for r in read_history(workdir / "metrics.jsonl")}
    if not recs:
        return {}
    steps = np.array(sorted(recs), np.int64)
    for key in {k for r in recs.values() for k in r if k != "step"}:
        s = [st for st in steps if recs[st].get(key) is not None]
        if s:
            out[f"eval/{key}"] = (np.array(s, np.int64), np.array([recs[st][key] for st in s], float))
    return out


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
    """End-of-run TensorBoard summary of a run: the HParams and final metrics (which training
    writes itself, ``ddc.train.summaries.write_hparams``) and, with ``images``, the pictures
    of :func:`write_report_images`."""
    write_hparams(workdir, cfg_dict, results)
    if images:
        write_report_images(workdir, results)


def write_report_images(workdir: str | Path, results: dict) -> None:
    """The learning curves and, with ``results["target_confusion"]`` ([K, K] counts, row = true
    class), the target confusion matrix, as PNGs in ``workdir/eval`` and as TensorBoard images
    (matplotlib, about a second). The CLI calls it after training; a plotting failure only
    warns: it must not fail a finished run."""
    workdir = Path(workdir)
    step = int(results.get("steps") or 0)
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
        write_images(workdir / "tensorboard", images, step)
    except Exception as e:  # noqa: BLE001
        log.warning("report images not written to TensorBoard: %s", e)
