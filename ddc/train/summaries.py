"""The end-of-run TensorBoard summary a training run writes: HParams and final metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddc.config.flatten import flatten_config

# Final numbers from results.json shown as metrics in the HParams dashboard.
FINAL_METRICS = ("target_acc", "target_mean_class_acc", "target_macro_f1", "source_val_acc",
                 "best_source_val_acc", "target_acc_at_best_source_val", "target_entropy",
                 "target_snd", "target_bnm", "target_im", "source_val_dev", "wall_time_s",
                 "images_per_s", "setup_time_s", "source_val_acc_tta", "target_acc_tta")


def write_hparams(workdir: str | Path, cfg_dict: dict, results: dict) -> None:
    """Hyperparameters (the config flattened to dotted keys) and ``final/<key>`` scalars of
    :data:`FINAL_METRICS` found in ``results``, for TensorBoard's HParams dashboard, in
    ``workdir/tensorboard``."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    workdir = Path(workdir)
    step = int(results.get("steps") or 0)
    writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
    with writer.as_default(step=step):
        hp.hparams(flatten_config(cfg_dict), trial_id=str(workdir.resolve()))
        for key in FINAL_METRICS:
            v = results.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                tf.summary.scalar(f"final/{key}", float(v), step=step)
    writer.close()
