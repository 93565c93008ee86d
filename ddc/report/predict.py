"""``predict_files``: class and probabilities of a trained run for image files or folders."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from ddc.data.images import DataError, decode_image, is_image_file
from ddc.metrics import softmax
from ddc.report.runs import load_run

log = logging.getLogger(__name__)


def expand_inputs(inputs: list) -> list[Path]:
    """Files as given, folders as their image files (recursively, sorted).

    Raises:
        DataError: a path that does not exist, or a folder without images.
    """
    out = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if is_image_file(f))
            if not files:
                raise DataError(f"{p}: no image files in this folder")
            out += files
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


def predict_files(workdir, inputs: list, *, checkpoint=None, weights_root=None,
                  batch_size: int | None = None, skip_bad: bool = False):
    """Predicts every image of ``inputs`` (files or folders) with a run's checkpoint.

    Each image is decoded with the run's ``data.image_size`` and ``data.channels``, the same
    way as its training data.

    Returns:
        (class_names, rows): one row per image, ``{"path", "class", "probability",
        "probs": float64 [K]}`` (``probs`` sums to 1).
    Raises:
        DataError: an unreadable image (unless ``skip_bad``: then it is logged and left out).
    """
    files = expand_inputs(inputs)  # before building anything: a wrong path fails fast
    run = load_run(workdir, checkpoint, weights_root=weights_root)
    size, channels = run.cfg.data.image_size, run.cfg.data.channels
    images, kept = [], []
    for f in files:
        try:
            images.append(decode_image(f, size, channels))
            kept.append(f)
        except DataError as e:
            if not skip_bad:
                raise
            log.warning("skipped: %s", e)
    if not images:
        return run.class_names, []
    logits, _ = run.predict(np.stack(images), batch_size)
    probs = softmax(logits)
    rows = [{"path": str(f), "class": run.class_names[int(p.argmax())],
             "probability": float(p.max()), "probs": p} for f, p in zip(kept, probs)]
    return run.class_names, rows


def write_predictions_csv(class_names: list, rows: list, stream) -> None:
    """CSV: ``path,class,probability,p_<class 1>,...,p_<class K>``."""
    w = csv.writer(stream)
    w.writerow(["path", "class", "probability"] + [f"p_{c}" for c in class_names])
    for r in rows:
        w.writerow([r["path"], r["class"], f"{r['probability']:.6f}"]
                   + [f"{v:.6f}" for v in r["probs"]])
