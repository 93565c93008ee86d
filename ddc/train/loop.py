"""``train_and_evaluate``: the outer loop that owns data, checkpoints, summaries and results.

The inner step (``step.py``) is a pure traced function; everything Python-side (progress bar,
evaluation, TensorBoard, checkpoints, stage switches) lives here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import keras
import tensorflow as tf
from tqdm.auto import tqdm

from ddc.config import Config
from ddc import paths
from ddc.data.prepare import prepare_data
from ddc.train.checkpoint_io import run_folder_error, save_checkpoint
from ddc.train.distribute import distributed_stream
from ddc.train.history import InterruptFlag, read_history, write_history
from ddc.train.optim import progress_lr
from ddc.train.run import Run, Stage
from ddc.train.rundir import (RunError, attach_run_log, check_workdir, prepare_workdir,
                              replaced_runs, save_target_probs, setup_logging,
                              write_json_atomic)
from ddc.train.schedules import progress_at, term_weights
from ddc.train.summaries import write_hparams

log = logging.getLogger(__name__)


class RunInterrupted(RuntimeError):
    """Ctrl-C during training: a checkpoint was saved; the same command resumes."""


def train_and_evaluate(cfg: Config, workdir: str | Path, *, data_root: str | Path | None = None,
                       weights_root: str | Path | None = None, restart: bool = False) -> dict:
    """Trains as ``cfg`` says in ``workdir`` (resuming a run of the same config there) and
    returns the results also written to ``workdir/results.json``.

    At the end the config and final metrics go to TensorBoard's HParams dashboard. Pictures
    (learning curves, confusion matrix) are the report's: the CLI draws them afterwards
    (``ddc.report.tb.write_report_images``).

    Raises:
        ConfigError, DataError, RunError: before training, naming the key, file or folder.
        RunInterrupted: Ctrl-C; a checkpoint was saved.
    """
    workdir = Path(workdir)
    check_workdir(workdir, cfg.to_dict(), restart)  # reads only: a refused workdir fails at once
    setup_logging(None, buffer=True)  # into train.log once the run directory is made
    before = keras.mixed_precision.global_policy()
    try:
        keras.utils.set_random_seed(cfg.seed)
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.mixed_precision.set_global_policy(cfg.train.precision)
        t_setup = time.perf_counter()
        data = prepare_data(cfg, paths.data_root(data_root), paths.cache_dir())
        decode_s = time.perf_counter() - t_setup
        # builds the network (checks the weights file); mode "features": extracts or reads them
        run = Run(cfg, workdir, data, paths.weights_root(weights_root),
                  paths.cache_dir(cfg.data.cache_dir))
        run.setup.update(decode_time_s=round(decode_s, 3),
                         setup_time_s=round(time.perf_counter() - t_setup, 3))
        # every input was checked: only now is the run directory written (--restart moves the
        # earlier run aside; the first checkpoint of this run deletes it)
        resume = prepare_workdir(workdir, cfg.to_dict(), restart)
        attach_run_log(workdir)
        try:
            return _train(run, resume)
        except OSError as e:  # a full disk or lost permission while writing results, logs
            err = run_folder_error(e, workdir, run.ckpt_dir)
            if err is None:
                raise
            raise err from None
        finally:
            for old in replaced_runs(workdir):  # the new run saved no checkpoint yet
                log.warning("the run replaced by --restart is kept in %s", old)
    finally:
        keras.mixed_precision.set_global_policy(before)


def rescore(workdir: str | Path, *, data_root: str | Path | None = None,
            weights_root: str | Path | None = None) -> dict:
    """The final evaluation of a finished run, recomputed from its latest checkpoint: the
    record ``Run.evaluate`` returns (accuracies and every label-free score of
    ``ddc.selection``; no test-time augmentation) and ``target_probs`` (the target's softmax
    predictions, [N, K]), for a score added after the run was trained. Reads the run's
    ``config.json``, its data (the feature cache in mode "features") and checkpoint; writes
    nothing.

    Raises:
        RunError: ``workdir`` has no config.json or no checkpoint.
    """
    from ddc.config import from_dict

    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise RunError(f"{workdir}: not a run directory (no config.json)")
    cfg = from_dict(json.loads((workdir / "config.json").read_text()))
    cfg.train.tta = False  # the scores read the identity view's predictions
    before = keras.mixed_precision.global_policy()
    try:
        keras.utils.set_random_seed(cfg.seed)
        keras.mixed_precision.set_global_policy(cfg.train.precision)
        data = prepare_data(cfg, paths.data_root(data_root), paths.cache_dir())
        run = Run(cfg, workdir, data, paths.weights_root(weights_root),
                  paths.cache_dir(cfg.data.cache_dir))
        step = _saved_step(run.ckpt_dir)
        if not step:
            raise RunError(f"{workdir}: no checkpoint in {run.ckpt_dir}")
        stage = Stage(run, head_only=step < cfg.train.head_only_steps)
        stage.checkpoint.restore(stage.manager.latest_checkpoint).expect_partial()
        rec = run.evaluate(step, final=True)
        return {**{k: v for k, v in rec.items() if not k.startswith("_")},
                "target_probs": rec["_target_probs"]}
    finally:
        keras.mixed_precision.set_global_policy(before)


def _saved_step(manager_dir: Path) -> int:
    latest = tf.train.latest_checkpoint(str(manager_dir))
    return int(tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE")) if latest else 0


def _train(run: Run, resume: bool) -> dict:
    cfg, t, workdir = run.cfg, run.cfg.train, run.workdir
    start = _saved_step(run.ckpt_dir) if resume else 0
    head_only = start < t.head_only_steps
    stage = Stage(run, head_only)
    if start:
        stage.checkpoint.restore(stage.manager.latest_checkpoint).expect_partial()
        log.info("resumed from %s at step %d", stage.manager.latest_checkpoint, start)
    history_path = workdir / "metrics.jsonl"
    history = [h for h in read_history(history_path) if h["step"] <= start]
    if run.is_chief and history_path.exists():  # drop records of steps that will be redone
        write_history(history_path, history)
    writer = (tf.summary.create_file_writer(str(workdir / "tensorboard")) if run.is_chief
              else tf.summary.create_noop_writer())
    ds = distributed_stream(run.strategy, run.train_arrays["source_train"],
                            run.data.source_train.labels, run.train_arrays["target"],
                            batch_size=t.batch_size, seed=cfg.seed, augment=cfg.data.augment,
                            start_step=start, use_target=run.use_target,
                            balance_source=cfg.data.balance_source,
                            source_views=run.train_views["source_train"],
                            target_views=run.train_views["target"])
    batches = iter(ds)
    per_step = t.batch_size * (2 if run.use_target else 1)
    t_begin, last_report = time.time(), None
    train_time, timed_steps = 0.0, 0
    pbar = tqdm(total=t.steps, initial=start, desc=cfg.name, unit="step", disable=None)
    step = start
    stop = InterruptFlag()
    try:
        while step < t.steps:
            if stop.raised:
                save_checkpoint(stage.manager, step)  # between steps: consistent
                raise RunInterrupted(f"interrupted at step {step}; checkpoint saved in "
                                     f"{workdir / 'checkpoints'}; run the same command to resume")
            if head_only and step >= t.head_only_steps:
                head_only = False
                save_checkpoint(stage.manager, step)
                stage = Stage(run, head_only=False)
            n = _call_length(t, step, head_only)
            weights = [term_weights(run.terms, s, t.steps) for s in range(step, step + n)]
            progress = [progress_at(s, t.steps) for s in range(step, step + n)]
            t0 = time.perf_counter()
            if t.steps_per_call == 1:
                x_s, y_s, x_t = next(batches)
                m = stage.step(x_s, y_s, x_t, weights[0], progress[0], step)
                run.step_var.assign_add(1)
                flags, totals = [bool(m["finite"])], [m["total_loss"]]  # waits for the step
            else:  # n steps in one traced call, which also advances run.step_var
                stacked = stage.step.steps(batches, weights, progress, run.step_var)
                flags, totals = stacked["finite"].numpy().tolist(), stacked["total_loss"]
                m = {key: v[-1] for key, v in stacked.items()}  # the last step's
            first_step, step = step, step + n
            if first_step > start:  # the first call includes tracing: not in the throughput
                train_time += time.perf_counter() - t0
                timed_steps += n
            for i in (i for i, ok in enumerate(flags) if not ok):
                if run.loss_scale:
                    run.skipped_var.assign_add(1)
                    log.warning("step %d: non-finite gradients under float16 loss scaling, "
                                "step skipped (%d so far)", first_step + i + 1,
                                int(run.skipped_var.numpy()))
                else:
                    raise RunError(f"non-finite loss at step {first_step + i + 1} (total_loss="
                                   f"{float(totals[i])}); last good checkpoint: "
                                   f"{stage.manager.latest_checkpoint or 'none'}")
            pbar.update(n)
            if step % t.log_every == 0 or step == t.steps:
                vals = {k: float(v) for k, v in m.items() if k != "finite"}
                pbar.set_postfix(cls=f"{vals['cls_loss']:.3f}", refresh=False,
                                 **{tm.name: f"{vals['align/' + tm.name]:.4f}" for tm in run.terms})
                with writer.as_default(step=step):
                    for k, v in vals.items():  # train/cls_loss, train/align/<name>[/<diag>], ...
                        tf.summary.scalar(f"train/{k}", v)
                    tf.summary.scalar("train/skipped_steps", int(run.skipped_var.numpy()))
                    tf.summary.scalar("lr", float(progress_lr(t, step - 1)))
                    for term, w in zip(run.terms, weights[-1]):
                        tf.summary.scalar(f"lambda/{term.name}", w)
            if step % t.eval_every == 0 or step == t.steps:
                last_report = run.evaluate(step, final=step == t.steps)
                rec = {k: v for k, v in last_report.items() if not k.startswith("_")}
                history.append(rec)
                if run.is_chief:
                    write_history(history_path, history)
                with writer.as_default(step=step):
                    for k, v in rec.items():
                        if k != "step" and v is not None:
                            tf.summary.scalar(f"eval/{k}", v)
                log.info("step %d: source val acc %s, target acc %.4f", step,
                         "n/a" if rec["source_val_acc"] is None else f"{rec['source_val_acc']:.4f}",
                         rec["target_acc"])
            if step % t.checkpoint_every == 0 or step == t.steps:
                save_checkpoint(stage.manager, step)
    except KeyboardInterrupt:
        # a second Ctrl-C (or one outside the main thread's handler), possibly inside a step:
        # the weights may be ahead of the step counter, so nothing is saved now
        latest = stage.manager.latest_checkpoint
        raise RunInterrupted(f"stopped at once during step {step + 1}; nothing saved now; the "
                             f"latest checkpoint is {latest or 'none'}; run the same command to "
                             "resume from it") from None
    finally:
        stop.restore()
        pbar.close()
        writer.flush()
    if last_report is None:  # resumed a run that had already finished
        last_report = run.evaluate(step, final=True)
    ips = timed_steps * per_step / train_time if timed_steps and train_time > 0 else None
    results = _results(run, history, last_report, stage, ips, time.time() - t_begin)
    if run.is_chief:
        save_target_probs(workdir, last_report["_target_probs"])
        write_json_atomic(workdir / "results.json", results)
        write_hparams(workdir, run.cfg.to_dict(), results)
    log.info("done: target acc %.4f (mean per class %.4f)%s; %s; results in %s",
             results["target_acc"], results["target_mean_class_acc"],
             "" if results["target_acc_tta"] is None else
             f", with D4 test-time augmentation {results['target_acc_tta']:.4f}",
             _cost_line(results), workdir / "results.json")
    return results


def _cost_line(r: dict) -> str:
    """Setup (decode, feature extraction) and training seconds, for the final log line."""
    feats = ""
    if r["extract_time_s"] is not None:
        ips = r["extract_images_per_s"]
        feats = (f", features {r['extract_time_s']:.1f} s: {r['features_extracted']} views "
                 f"extracted" + (f" at {ips:.1f} images/s" if ips else "")
                 + f", {r['features_from_cache']} from the cache")
    return (f"setup {r['setup_time_s']:.1f} s (decode {r['decode_time_s']:.1f} s{feats}), "
            f"training {r['train_time_s']:.1f} s")


def _call_length(t, step: int, head_only: bool) -> int:
    """Steps in the next call: ``train.steps_per_call``, cut so that a call ends at every step
    that logs, evaluates, checkpoints, switches stage or ends the run."""
    if t.steps_per_call == 1:
        return 1
    ends = [t.steps] + [(step // every + 1) * every
                        for every in (t.log_every, t.eval_every, t.checkpoint_every)]
    if head_only:
        ends.append(t.head_only_steps)
    return max(1, min(t.steps_per_call, min(ends) - step))


def _results(run: Run, history: list, final: dict, stage: Stage, ips, wall: float) -> dict:
    tgt = final["_target_report"]
    vals = [h for h in history if h.get("source_val_acc") is not None]
    best = max(vals, key=lambda h: (h["source_val_acc"], h["step"])) if vals else None
    return {
        "name": run.cfg.name,
        "steps": int(run.step_var.numpy()),
        "skipped_steps": int(run.skipped_var.numpy()),
        "source_val_acc": final["source_val_acc"],
        "best_source_val_acc": best["source_val_acc"] if best else None,
        "best_source_val_step": best["step"] if best else None,
        "target_acc_at_best_source_val": best["target_acc"] if best else None,
        "target_acc": tgt["accuracy"],
        "target_mean_class_acc": tgt["mean_class_accuracy"],
        "target_macro_f1": tgt["macro_f1"],
        "target_per_class_acc": tgt["per_class_accuracy"],
        "target_counts": tgt["counts"],
        "target_confusion": tgt["confusion"],
        "target_entropy": tgt["entropy"],
        # label-free, higher is better (ddc.selection)
        "target_snd": tgt["snd"],
        "target_bnm": tgt["bnm"],
        "target_im": tgt["im"],
        # labelled source validation data weighed by the target's features; lower is better
        "source_val_dev": final.get("source_val_dev"),
        "classes": run.data.class_names,
        "dropped_classes": run.data.dropped,
        "skipped_files": run.data.skipped,
        "n_skipped_files": len(run.data.skipped),
        "variables": stage.counts,
        "images_per_s": ips,
        "wall_time_s": wall,  # the training loop (with its evaluations), as train_time_s
        "train_time_s": wall,
        # before training: decoding (or reading the image cache), building the network and, in
        # mode "features", extracting the frozen part's output or reading it from the cache
        "setup_time_s": run.setup.get("setup_time_s"),
        "decode_time_s": run.setup.get("decode_time_s"),
        "extract_time_s": run.setup.get("extract_time_s"),
        "extract_images_per_s": run.setup.get("extract_images_per_s"),
        "features_extracted": run.setup.get("extracted"),
        "features_from_cache": run.setup.get("from_cache"),
        "source_val_acc_tta": final.get("source_val_acc_tta"),
        "target_acc_tta": final.get("target_acc_tta"),
        "target_mean_class_acc_tta": final.get("target_mean_class_acc_tta"),
    }
