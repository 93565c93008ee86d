"""Command-line entry points of the reports: ``ddc-evaluate``, ``ddc-predict``, ``ddc-compare``.

Each parses arguments and calls one library function; bad input exits 2 with one line
``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from ddc.cli import answers_ctrl_c  # noqa: E402  (imports nothing heavy)


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _errors():
    from ddc.config import ConfigError
    from ddc.data.images import DataError
    from ddc.report.runs import ReportError

    return ConfigError, DataError, ReportError


def _class_map(value: str | None) -> dict | None:
    if value is None:
        return None
    from ddc.report.runs import ReportError

    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"--class-map: expected a JSON object or a JSON file ({e})") from None
    if not isinstance(m, dict) or not all(isinstance(v, str) for v in m.values()):
        raise ReportError("--class-map: expected a JSON object of folder name -> class name")
    return m


def _checkpoint_help() -> str:
    return ("checkpoint: latest (default), best (best source validation accuracy: label-free), "
            "init (initial weights), a step number, or a checkpoint path")


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddc-evaluate", description=(
        "Evaluate a trained run on its target (default) or another domain; write metrics.json, "
        "confusion matrix, prediction grid, learning curves and feature embedding into "
        "RUN/eval/NAME/."))
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--checkpoint", default="latest", help=_checkpoint_help())
    p.add_argument("--domain", default="target", choices=("target", "source_val", "source_train"),
                   help="which of the run's own data to evaluate on (default: target)")
    p.add_argument("--data", help="evaluate on this class-folder tree instead of the run's data")
    p.add_argument("--class-map", help="with --data: JSON object (or file) mapping its folder "
                                       "names to the run's class names")
    p.add_argument("--name", help="report folder name under RUN/eval/ (default: the domain)")
    p.add_argument("--baseline-run", help="a run to compare with (e.g. the lambda=0 run): the "
                                          "'before' features and dashed learning curves")
    p.add_argument("--embedding", default="tsne", choices=("tsne", "pca", "none"),
                   help="2-D embedding of the features (default: tsne; none: skip the picture)")
    p.add_argument("--embed-per-domain", type=int, default=300,
                   help="at most this many images per domain in the embedding (default: 300)")
    p.add_argument("--grid", type=int, default=36, help="images in the prediction grid (default 36)")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="do not write the pictures into the run's TensorBoard")
    p.add_argument("--data-root", help="data root of the run's config (default: $DDC_DATA_ROOT)")
    p.add_argument("--weights-root", help="weights root (default: $DDC_WEIGHTS_ROOT); needed for "
                                          "the initial-weights 'before' picture (no --baseline-run)")
    return p


@answers_ctrl_c("interrupted; the report may be incomplete")
def evaluate_main(argv: list[str] | None = None) -> int:
    """``ddc-evaluate``: exit 0 on success, 2 on a bad run, checkpoint, data or argument."""
    args = evaluate_parser().parse_args(argv)
    errors = _errors()
    try:
        from ddc.report.evaluate import evaluate_run
        from ddc.train.rundir import setup_logging

        setup_logging(None)
        m = evaluate_run(args.run, checkpoint=args.checkpoint, domain=args.domain,
                         folder=args.data, class_map=_class_map(args.class_map), name=args.name,
                         baseline_run=args.baseline_run, data_root=args.data_root,
                         weights_root=args.weights_root, embedding=args.embedding,
                         embed_per_domain=args.embed_per_domain, grid=args.grid,
                         tensorboard=not args.no_tensorboard)
    except errors as e:
        return _fail(str(e))
    line = (f"{m['domain']} at step {m['step']}: accuracy {m['accuracy']:.4f}, mean per class "
            f"{m['mean_class_accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} (n={m['n']})")
    f = m.get("features")
    if f:
        line += (f"; proxy A-distance {f['proxy_a_distance_before']['a_distance']:.3f} before, "
                 f"{f['proxy_a_distance_after']['a_distance']:.3f} after")
    print(line)
    print(f"report: {Path(args.run) / 'eval' / m['name']}")
    return 0


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddc-predict", description=(
        "Predict the class of image files (or every image in folders) with a trained run; "
        "CSV with the class, its probability and every class's probability."))
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", default="latest", help=_checkpoint_help())
    p.add_argument("--out", help="write the CSV here instead of stdout")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the run's eval batch)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (logged)")
    p.add_argument("--weights-root", help="weights root (only with --checkpoint init)")
    return p


@answers_ctrl_c("interrupted; no predictions written")
def predict_main(argv: list[str] | None = None) -> int:
    """``ddc-predict``: exit 0 on success, 2 on a bad run, checkpoint or image."""
    args = predict_parser().parse_args(argv)
    errors = _errors()
    try:
        from ddc.report.predict import predict_files, write_predictions_csv

        names, rows = predict_files(args.run, args.images, checkpoint=args.checkpoint,
                                    weights_root=args.weights_root, batch_size=args.batch_size,
                                    skip_bad=args.skip_bad)
    except errors as e:
        return _fail(str(e))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            write_predictions_csv(names, rows, f)
        print(f"{len(rows)} predictions written to {args.out}", file=sys.stderr)
    else:
        write_predictions_csv(names, rows, sys.stdout)
    return 0


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddc-compare", description=(
        "One markdown table of runs: the config keys that differ, the results, and the run the "
        "label-free rule staged_agree picks (their agreement with the runs' soft vote on the "
        "target)."))
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", help="also write the table to this file")
    return p


@answers_ctrl_c("interrupted; no table written", tensorflow=False)
def compare_main(argv: list[str] | None = None) -> int:
    """``ddc-compare``: exit 0 on success, 2 on a folder that is not a run."""
    args = compare_parser().parse_args(argv)
    from ddc.report.compare import compare_runs
    from ddc.report.runs import ReportError

    try:
        table = compare_runs(args.runs)
    except ReportError as e:
        return _fail(str(e))
    if args.out:
        Path(args.out).write_text(table)
    sys.stdout.write(table)
    return 0
