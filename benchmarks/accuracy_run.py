"""The accuracy benchmark's runs: one seed of a grid cell trained (or read back), and the
summary of a cell over its seeds.

Every run of ours is ``scripts/train_ddc.py --config BASE --set ...`` in a fresh process
(``train_cli``; a peer library's cell runs in this process), in its own run directory
``<runs>/<cell id>/seed<seed>-<config hash>`` (``ddc.sweep``): a finished run of the same
resolved config is read back, not rerun. ``--reuse`` summaries (``load_reusable``,
``reused_summary``) come from an earlier ``results.json`` of ``accuracy.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import accuracy_grid as grid
from ddc import sweep
from ddc.sweep import config_hash  # noqa: F401  (re-exported: the hash in a run's folder name)

# written into a run directory once its run returned: a run without it is not finished
RUN_META = "accuracy_benchmark.json"
# label-free scores added after a run was trained, recomputed from its final checkpoint
# (``rescore_run``), and its target predictions (``ddc.paths.TARGET_PROBS``) if it was
# trained before runs saved them; its results.json stays as the run wrote it
RESCORED = "rescored.json"
RESCORED_KEYS = ("target_bnm", "target_im", "source_val_dev")


# ----------------------------------------------------------------------------- running

def finished_run(cell_dir: Path, seed: int, config: dict) -> tuple[dict, dict, Path] | None:
    """``(results, meta, run directory)`` of a finished run of ``config`` under ``cell_dir``
    (configs compared ``normalised``: a run made before a new default-valued key still matches;
    ``ddc.sweep.finished_run``)."""
    return sweep.finished_run(cell_dir, f"seed{seed}", config, RUN_META)


def has_finished_runs(cell: grid.Cell, seeds: list[int], runs: Path) -> bool:
    from ddc.config import load
    return all(finished_run(runs / cell.id, seed,
                            load(grid.REPO / cell.task.base, cell.overrides(seed)).to_dict())
               is not None for seed in seeds)


def _relative(path: Path) -> str:
    """``path`` relative to the repo when it is inside it (no machine path in the report)."""
    try:
        return str(Path(path).resolve().relative_to(grid.REPO))
    except ValueError:
        return str(path)


def train_cli(base: str, overrides: list[str], workdir: Path, data_root: Path,
              weights_root: Path) -> dict:
    """One run as a user runs it: ``scripts/train_ddc.py --config BASE --set ...`` in a fresh
    process (its setup time is a CLI user's; and a grid of hundreds of runs in one process
    grew by the arrays of every run, about 0.25 GB a run with D4 features, until it swapped).
    Returns its ``results.json``; a failed run raises, naming the run directory."""
    cmd = [sys.executable, str(grid.REPO / "scripts" / "train_ddc.py"), "--config",
           str(grid.REPO / base), "--workdir", str(workdir), "--data-root", str(data_root),
           "--weights-root", str(weights_root)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(grid.REPO)}
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"run {workdir} failed with exit status {rc}; see {workdir}/train.log")
    return json.loads((Path(workdir) / "results.json").read_text())


def rescore_run(workdir: Path, data_root: Path, weights_root: Path,
                complete: bool = True) -> dict:
    """``RESCORED_KEYS`` of a finished run of ours from its final checkpoint
    (``ddc.train.rescore``, in a fresh process like every run), written to ``RESCORED`` in its
    directory, with the target predictions if the run has none, and read back from there
    afterwards (recomputed if it lacks a key of ``RESCORED_KEYS`` added since or the
    predictions, with ``complete``; else read back as it is). The recomputed
    evaluation must reproduce the run's own target accuracy and SND (the same checkpoint on the
    same inputs), or this raises."""
    from ddc.paths import TARGET_PROBS

    path = Path(workdir) / RESCORED
    if not path.exists() or complete and (
            any(k not in json.loads(path.read_text()) for k in RESCORED_KEYS)
            or not (Path(workdir) / TARGET_PROBS).exists()):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rescore", str(workdir),
               "--data-root", str(data_root), "--weights-root", str(weights_root)]
        env = {**os.environ, "PYTHONPATH": str(grid.REPO)}
        if subprocess.run(cmd, env=env).returncode != 0:
            raise RuntimeError(f"rescoring {workdir} failed")
    return json.loads(path.read_text())


def _rescore_main(workdir: Path, data_root: str, weights_root: str) -> None:
    from ddc.train import rescore
    from ddc.paths import TARGET_PROBS
    from ddc.train.rundir import save_target_probs

    results = json.loads((workdir / "results.json").read_text())
    rec = rescore(workdir, data_root=data_root, weights_root=weights_root)
    for key in ("target_acc", "target_snd"):
        if abs(rec[key] - results[key]) > 1e-6:
            raise SystemExit(f"{workdir}: the recomputed {key} {rec[key]} is not the run's "
                             f"{results[key]}: not the checkpoint or inputs it was evaluated on")
    if not (workdir / TARGET_PROBS).exists():  # a run's own predictions are not replaced
        save_target_probs(workdir, rec["target_probs"])
    out = {k: rec[k] for k in RESCORED_KEYS}
    (workdir / RESCORED).write_text(json.dumps({**out, "step": rec["step"]}, indent=2))


def run_cell_seed(cell: grid.Cell, seed: int, runs: Path, data_root: Path,
                  weights_root: Path, rescore: bool = False) -> dict:
    """Trains one seed of ``cell`` (or reads back a finished run of the same config; with
    ``rescore``, a run of ours written before a score of ``RESCORED_KEYS`` or before runs
    saved their target predictions gets them from ``rescore_run``).

    Returns:
        The run's ``results.json`` plus ``run_dir``, ``overrides``, ``config``, ``resumed`` and
        ``total_wall_s`` (data loading, feature extraction, training and evaluation).
    """
    import keras

    from ddc.config import load
    from ddc.paths import TARGET_PROBS

    overrides = cell.overrides(seed)
    cfg = load(grid.REPO / cell.task.base, overrides)
    config = cfg.to_dict()
    workdir = sweep.run_dir(runs / cell.id, f"seed{seed}", config)
    finished = finished_run(runs / cell.id, seed, config)
    if finished is not None:
        res, meta, workdir = finished
        resumed = True
    else:
        t0 = time.time()
        if cell.method.peer:
            from benchmarks import adapt_cells
            res = adapt_cells.run_adapt_cell(cell.method.peer, cfg, seed, data_root=data_root,
                                             weights_root=weights_root, workdir=workdir)
            res = {**res, "wall_time_s": res["train_time_s"], "dropped_classes": {}}
            # what a run of ours writes itself; a finished run is found by it (ddc.sweep)
            (workdir / "config.json").write_text(json.dumps(config, indent=2))
        else:
            res = train_cli(cell.task.base, overrides, workdir, data_root, weights_root)
        meta = {"total_wall_s": time.time() - t0, "overrides": overrides,
                "base": cell.task.base, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        (workdir / RUN_META).write_text(json.dumps(meta, indent=2))
        keras.backend.clear_session()  # the peers' models live in this process
        resumed = False
    if cell.method.peer:  # a peer's results.json has its own keys (adapt_cells)
        res = {"wall_time_s": res.get("train_time_s"), "dropped_classes": {}, **res}
    elif (any(res.get(k) is None for k in RESCORED_KEYS)
          and (rescore or (workdir / RESCORED).exists())
          or rescore and not (workdir / TARGET_PROBS).exists()):
        res = {**res, **{k: v for k, v in rescore_run(workdir, data_root, weights_root,
                                                      complete=rescore).items()
                         if k in RESCORED_KEYS and res.get(k) is None}}
    return {**res, "run_dir": _relative(workdir), "overrides": overrides, "config": config,
            "resumed": resumed, "total_wall_s": meta["total_wall_s"]}


def load_reusable(path: str | None) -> tuple[dict, str]:
    """The cell summaries of an earlier ``results.json`` (by cell id) and where they came from."""
    if not path:
        return {}, ""
    try:
        data = json.loads(Path(path).read_text())
        cells = {s["id"]: s for s in data["cells"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--reuse {path}: not a results file of this script ({e})") from e
    machine = str(data.get("machine", "unknown machine")).split(";")[0]
    return cells, f"{path} of {data.get('date', 'unknown date')} ({machine})"


def reused_summary(cell: grid.Cell, seeds: list[int], reusable: dict, origin: str) -> dict | None:
    """An earlier summary of ``cell`` if it ran with the same seeds and the same resolved config
    (compared on seed 0's, which differs from the other seeds' only in ``seed`` and ``name``;
    both ``normalised``)."""
    from ddc.config import load, normalised

    prior = reusable.get(cell.id)
    if prior is None or prior.get("seeds") != seeds:
        return None
    config = normalised(load(grid.REPO / cell.task.base, cell.overrides(seeds[0])).to_dict())
    if config is None or normalised(prior.get("config_seed0") or {}) != config:
        return None
    # the same resolved config: the overrides that make it now are this cell's (an earlier
    # file's may have been written for another config format, such as the old mmd block)
    older = prior.get("reused_from")
    return {**prior, "config_seed0": config, "common_overrides": cell.common,
            "overrides": cell.own, "reused_from": _no_machine_path(older) if older else origin}


def _no_machine_path(origin: str) -> str:
    """An older file's origin string (carried by a cell read back twice) with its absolute
    path, e.g. under /tmp, reduced to the file's name: the report names no path of one machine
    it did not get from this invocation's own arguments."""
    path, sep, rest = origin.partition(" of ")
    return (f"an earlier {Path(path).name}" if os.path.isabs(path) else path) + sep + rest


# ----------------------------------------------------------------------------- summarising

def _mean_std(values: list) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(cell: grid.Cell, runs: list[dict]) -> dict:
    out = {"id": cell.id, "task": cell.task.name, "variant": cell.variant,
           "method": cell.method.name, "base": cell.task.base,
           "common_overrides": cell.common, "overrides": cell.own,
           "seeds": [r["config"]["seed"] for r in runs]}
    for key in ("target_acc", "target_mean_class_acc", "target_acc_at_best_source_val",
                "source_val_acc", "wall_time_s", "total_wall_s", "source_val_dev"):
        out[key], out[key + "_std"] = _mean_std([r.get(key) for r in runs])
        out[key + "_per_seed"] = [r.get(key) for r in runs]
    for key in ("setup_time_s", "train_time_s", "target_acc_tta", "target_snd", "target_entropy",
                "target_bnm", "target_im"):
        out[key], out[key + "_std"] = _mean_std([r.get(key) for r in runs])
    # how evenly the target predictions use the classes: the confusion matrix's column sums are
    # the predicted-class counts (the same whatever the labels; no label is read)
    from ddc.selection import predicted_class_entropy
    out["target_pred_entropy"], out["target_pred_entropy_std"] = _mean_std(
        [predicted_class_entropy(r["target_confusion"]) if r.get("target_confusion") else None
         for r in runs])
    for key in ("features_extracted", "features_from_cache"):
        out[key] = sum(r.get(key) or 0 for r in runs if not r["resumed"])
    out["steps"] = sorted({r["steps"] for r in runs})
    out["classes"] = runs[0]["classes"]
    out["dropped_classes"] = runs[0].get("dropped_classes", {})
    out["config_seed0"] = runs[0]["config"]
    out["run_dirs"] = [r["run_dir"] for r in runs]
    return out


if __name__ == "__main__":  # the fresh process of rescore_run
    import argparse

    ap = argparse.ArgumentParser(description="Recompute a finished run's label-free scores "
                                 "(rescore_run).")
    ap.add_argument("--rescore", required=True, type=Path, metavar="RUN_DIR")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--weights-root", required=True)
    a = ap.parse_args()
    _rescore_main(a.rescore, a.data_root, a.weights_root)
