"""``evaluate_run``: scores a trained run's checkpoint on a domain and draws its pictures.

Writes into ``workdir/eval/<name>/``::

    metrics.json          overall and per-class accuracy, macro-F1, counts, entropy, confusion,
                          and (with features) the proxy A-distance before and after
    confusion.csv / .png  the confusion matrix (row = true class)
    predictions.csv       every image: path, true class, predicted class, probability
    predictions.png       a sample of images with true and predicted labels, mistakes marked
    learning_curves.png   the run's TensorBoard curves (with the baseline run's, dashed)
    embedding.png         2-D embedding of source and target adaptation-layer features,
                          before adaptation (baseline run or initial weights) and after

and the pictures into the run's TensorBoard as images.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from ddc.metrics import classification_report, mean_entropy, softmax
from ddc.report.runs import LoadedRun, ReportError, load_eval_domain, load_run, load_source
from ddc.train.rundir import write_json_atomic

log = logging.getLogger(__name__)


def _subsample(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:k]) if n > k else np.arange(n)


def feature_report(after: LoadedRun, before: LoadedRun, source, target, *, before_label: str,
                   method: str, per_domain: int, out: Path, seed: int = 0,
                   feats_after: tuple | None = None) -> dict:
    """Proxy A-distance and the side-by-side embedding of source vs target features.

    Args:
        after, before: the adapted model and the model it is compared with.
        source, target: ``Domain`` s labelled by the run's class indices.
        method: "tsne", "pca" or "none" (A-distance only).
        per_domain: at most this many points of each domain in the embedding.
        feats_after: already computed (source, target) features of ``after``.
    """
    from ddc.report.adistance import proxy_a_distance
    from ddc.report.embedding import embed
    from ddc.report.plots import plot_embeddings

    if before.image_shape != after.image_shape:
        raise ReportError(f"{before.workdir}: image shape {before.image_shape} differs from "
                          f"{after.workdir} ({after.image_shape}); cannot compare features")
    feats = {"after": feats_after or (after.predict(source.images)[1], after.predict(target.images)[1]),
             "before": (before.predict(source.images)[1], before.predict(target.images)[1])}
    res = {"before_model": before_label, "embedding": method}
    for key, (f_s, f_t) in feats.items():
        res[f"proxy_a_distance_{key}"] = proxy_a_distance(f_s, f_t, seed=seed)
    if method != "none":
        i_s = _subsample(len(source), per_domain, seed)
        i_t = _subsample(len(target), per_domain, seed + 1)
        labels = np.concatenate([source.labels[i_s], target.labels[i_t]])
        domain = np.r_[np.zeros(len(i_s), int), np.ones(len(i_t), int)]
        panels = []
        for key, title in (("before", f"before: {before_label}"),
                           ("after", f"after: {after.workdir.name}, step {after.step}")):
            f_s, f_t = feats[key]
            emb = embed(np.concatenate([f_s[i_s], f_t[i_t]]), method, seed)
            a = res[f"proxy_a_distance_{key}"]["a_distance"]
            panels.append((f"{title}\nproxy A-distance {a:.2f}", emb, labels, domain))
        res["embedding_png"] = str(plot_embeddings(
            panels, after.class_names, out / "embedding.png",
            domain_names=("source", "target" if target.name == "data.target" else target.name),
            title=f"adaptation-layer features ({method.upper() if method == 'pca' else 't-SNE'}, "
                  f"{len(i_s)} source + {len(i_t)} target images)"))
    return res


def evaluate_run(workdir: str | Path, *, checkpoint=None, domain: str = "target",
                 folder: str | Path | None = None, class_map: dict | None = None,
                 name: str | None = None, baseline_run: str | Path | None = None,
                 data_root=None, weights_root=None, embedding: str = "tsne",
                 embed_per_domain: int = 300, grid: int = 36, tensorboard: bool = True,
                 seed: int = 0) -> dict:
    """Evaluates a run's checkpoint and writes the report files (see the module docstring).

    Args:
        workdir: the run directory.
        checkpoint: "latest" (None), "best" (best source validation accuracy), a step or a path.
        domain: ``target``, ``source_val`` or ``source_train`` of the run's own data.
        folder, class_map: evaluate on another class-folder tree instead, its folder names
            mapped onto the run's classes.
        name: the report folder name (default: the domain or folder name, plus ``-step<N>``
            for a checkpoint other than the latest).
        baseline_run: a run to compare with (the lambda = 0 run): its features are the
            "before" picture and its curves are drawn dashed. Default: the initial weights.
        embedding: "tsne", "pca", or "none" (and no baseline: no features report at all);
            features are only reported for the target or another folder, not the source.
        grid: number of images in the prediction grid.
        tensorboard: also write the pictures to the run's TensorBoard.

    Returns:
        The dict written to ``metrics.json``.
    """
    from ddc.report.plots import plot_confusion, plot_learning_curves, plot_prediction_grid
    from ddc.report.tb import read_run_scalars, write_images

    workdir = Path(workdir)
    run = load_run(workdir, checkpoint, weights_root=weights_root, data_root=data_root)
    dom = load_eval_domain(run, domain, folder=folder, class_map=class_map, data_root=data_root)
    if name is None:
        name = Path(folder).name if folder is not None else domain
        latest = max(_kept(workdir), default=None)
        if run.step != latest:
            name += f"-step{run.step}"
    out = workdir / "eval" / name
    out.mkdir(parents=True, exist_ok=True)

    logits, feats_t = run.predict(dom.images)
    preds = logits.argmax(axis=1)
    probs = softmax(logits)
    report = classification_report(dom.labels, preds, run.class_names)
    metrics = {"name": name, "run": str(workdir), "checkpoint": run.checkpoint, "step": run.step,
               "domain": str(folder) if folder is not None else domain,
               "class_names": run.class_names,
               **{k: report[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1", "n",
                                         "per_class_accuracy", "per_class_f1", "counts")},
               "entropy": mean_entropy(logits), "confusion": report["confusion"]}
    res = run.results or {}
    if folder is None and domain == "target" and res.get("steps") == run.step \
            and res.get("target_acc") is not None:
        # The loop scored the same checkpoint on the same images: a check that loading worked.
        metrics["results_target_acc"] = res["target_acc"]
        metrics["matches_results"] = bool(abs(res["target_acc"] - report["accuracy"])
                                          <= 1.0 / max(report["n"], 1) + 1e-9)
        if not metrics["matches_results"]:
            log.warning("accuracy %.4f differs from results.json target_acc %.4f", report["accuracy"],
                        res["target_acc"])

    _write_confusion_csv(out / "confusion.csv", report["confusion"], run.class_names)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "predicted", "probability"])
        for path, y, p, pr in zip(dom.paths, dom.labels, preds, probs.max(axis=1)):
            w.writerow([path, run.class_names[y], run.class_names[p], f"{pr:.6f}"])
    label = f"{workdir.name} on {metrics['domain']}, step {run.step}"
    images = {
        f"report/{name}/confusion_matrix": plot_confusion(report["confusion"], run.class_names,
                                                          out / "confusion.png", title=label),
        f"report/{name}/predictions": plot_prediction_grid(
            dom.images, dom.labels, preds, probs.max(axis=1), run.class_names,
            out / "predictions.png", n=grid, seed=seed, title=label),
    }
    curves = {workdir.name: read_run_scalars(workdir)}
    if baseline_run is not None:
        curves[Path(baseline_run).name] = read_run_scalars(baseline_run)
    if any(curves.values()):
        images["report/learning_curves"] = plot_learning_curves(curves, out / "learning_curves.png")

    # Source against source says nothing about adaptation: features only for another domain.
    if (folder is not None or domain == "target") and (embedding != "none" or baseline_run):
        if baseline_run is not None:
            before = load_run(baseline_run, weights_root=weights_root, data_root=data_root)
            before_label = f"{Path(baseline_run).name}, step {before.step}"
        else:
            before = load_run(workdir, "init", weights_root=weights_root, data_root=data_root)
            before_label = "initial weights (before training)"
        source = load_source(run, data_root)
        metrics["features"] = feature_report(
            run, before, source, dom, before_label=before_label, method=embedding,
            per_domain=embed_per_domain, out=out, seed=seed,
            feats_after=(run.predict(source.images)[1], feats_t))
        if "embedding_png" in metrics["features"]:
            images[f"report/{name}/embedding"] = Path(metrics["features"]["embedding_png"])
    metrics["files"] = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if "metrics.json" not in metrics["files"]:
        metrics["files"] = sorted(metrics["files"] + ["metrics.json"])
    write_json_atomic(out / "metrics.json", metrics)
    if tensorboard:
        write_images(workdir / "tensorboard", images, run.step)
    log.info("%s: accuracy %.4f, mean per class %.4f; report in %s", label, report["accuracy"],
             report["mean_class_accuracy"], out)
    return metrics


def _kept(workdir: Path):
    from ddc.report.runs import list_checkpoints

    return list_checkpoints(workdir).keys()


def _write_confusion_csv(path: Path, cm, class_names: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted"] + list(class_names))
        for name, row in zip(class_names, cm):
            w.writerow([name] + [int(v) for v in row])
