"""Accuracy benchmark: tasks x methods x seeds through the library code the CLI uses.

Every run is ``ddc.config.load(base, overrides)`` + ``ddc.train.train_and_evaluate`` (what
``scripts/train_ddc.py --config BASE --set ...`` does), in its own run directory under
``--runs``. The script writes ``docs/RESULTS.md`` (tables: target accuracy mean ± std over the
seeds, mean per-class accuracy, steps, wall time, the exact config) and ``<runs>/results.json``
(machine-readable, a run output: not committed; pass it to ``--reuse`` later).

Resumable: a run whose directory already holds ``results.json`` for the same config is read
back, not rerun. The run directory's name carries a hash of the config, so a changed config
(``--steps``, a new default) gets a new directory instead of clashing with the old one.

``--reuse FILE`` reads cells back from an earlier ``results.json`` (this script's output) when
their resolved config and seeds are identical: a grid grown by new cells can be reported whole
without rerunning the cells whose run directories are gone. The report marks each such cell and
names the file; run directories under ``--runs`` win over it. Leave ``--reuse`` out to rerun
everything.

Methods: source only (``align={}``), DDC (the ``mmd`` term), every other method of
``ddc.align.REGISTRY`` at each λ of ``ALIGN_LAMBDAS`` (``--set 'align={"<name>": {"weight":
λ}}'``; a newly registered term joins the grid as it is), the pairs of ``COMBOS``, and ADAPT's
methods as peers; each variant of a task runs the methods its ``variant_methods`` list.

Hyperparameters are fixed in advance (the papers' defaults or the shipped configs); target labels
are read only for the final report (``target_acc`` of the final step, and the target accuracy at
the step of best source validation accuracy, a step chosen without target labels).

    nice -n 10 python benchmarks/accuracy.py                # the full grid -> docs/
    python benchmarks/accuracy.py --quick                   # a few minutes -> runs/accuracy-quick/
    python benchmarks/accuracy.py --only 'siri_whu_aid/frozen/*' --seeds 0,1,2

The code is in four files: ``accuracy_grid.py`` (tasks, methods and the cells with their
overrides), ``accuracy_run.py`` (one seed of a cell trained or read back; summaries),
``accuracy_report.py`` (bars, model selection, the markdown and JSON) and this command
line, which re-exports their names; ``ddc.sweep`` finds the run directory of the same resolved
config again.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = str(Path(__file__).resolve().parents[1])  # the repository: ``benchmarks``, ``ddc``
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import accuracy_grid as grid  # noqa: E402
from benchmarks import accuracy_report as report  # noqa: E402
from benchmarks import accuracy_run as run  # noqa: E402
# the names of the three parts, re-exported: ``accuracy.build_grid`` etc. as before the split
from benchmarks.accuracy_grid import (  # noqa: E402,F401
    ALIGN_LAMBDAS, COMBOS, CONFIGS, HYPERPARAMETER_RULE, METHODS, MOBILENET_VARIANTS, QUICK,
    PEER_METHODS, QUICK_ALIGN_VARIANTS, QUICK_VARIANTS, FROZEN_METHODS, ADABN_METHODS,
    LONG_METHODS, LS_METHODS, DIGIT_METHODS, TLLIB_DIGIT_METHODS, TLLIB_PAIR_METHODS,
    BUDGET_DIGIT_METHODS, REPO, SHARED,
    TASKS, TASKS_BY_NAME, Cell, Method, Task, _method, _term_summary, build_grid, combo_methods,
    effective, matches, method_family, method_peer, method_term, method_title, methods_for,
    registry_methods,
    scoped)
from benchmarks.accuracy_report import (  # noqa: E402,F401
    _machine, _pct, _write_report, check_bars, model_selection, reductions, render)
from benchmarks.accuracy_run import (  # noqa: E402,F401
    RUN_META, _mean_std, _relative, config_hash, finished_run, has_finished_runs, load_reusable,
    reused_summary, run_cell_seed, summarize)


# ----------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a small grid (one seed, fewer steps and images, frozen MobileNetV2 only; "
                   "the registry's other methods at one λ there)")
    p.add_argument("--only", default="", help="comma-separated glob patterns of cell ids, e.g. "
                   "'usps_mnist/source_only,siri_whu_aid/frozen/*'; cells run in the patterns' "
                   "order")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0)")
    p.add_argument("--steps", type=int, default=None, help="override train.steps of every run "
                   "(evaluation at the end only)")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="cap images per class in both domains (tests)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra config override for every run, or for one task's runs "
                   "with TASK:KEY=VALUE (e.g. usps_mnist:train.steps=1500)")
    p.add_argument("--runs", default=None, help="folder of the run directories (default "
                   "runs/accuracy, quick: runs/accuracy-quick)")
    p.add_argument("--out", default=None, help="markdown report (default docs/RESULTS.md; "
                   "quick: <runs>/RESULTS.md)")
    p.add_argument("--json", default=None, help="machine-readable results (default: "
                   "results.json beside --out, e.g. docs/results.json; quick: <runs>/results.json)")
    p.add_argument("--reuse", default=None, metavar="RESULTS_JSON",
                   help="read cells back from an earlier results.json where their resolved "
                   "config and seeds are identical (marked † in the report)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's header "
                   "(for example what a reduced grid left out)")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: report the cells whose runs are finished under --runs "
                   "or read back by --reuse, and list the others as not run")
    p.add_argument("--rescore", action="store_true",
                   help="finished runs of ours written before a label-free score of "
                   "accuracy_run.RESCORED_KEYS existed, or before runs saved their target "
                   "predictions, get them from their final checkpoint (a few seconds a run; "
                   "saved in their run directory); with --only, the cells of --only")
    p.add_argument("--reading", default=None, metavar="MARKDOWN_FILE",
                   help="a markdown file included as the report's reading of its numbers (e.g. "
                   "docs/results_reading.md: what was tried, why a target is not met)")
    p.add_argument("--data-root",
                   default=os.environ.get("DDC_DATA_ROOT", str(grid.SHARED / "data")))
    p.add_argument("--weights-root",
                   default=os.environ.get("DDC_WEIGHTS_ROOT", str(grid.SHARED / "weights")))
    return p.parse_args(argv)


def command_line(argv: list[str]) -> str:
    cmd = "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in argv)
    niceness = os.nice(0)
    return (f"nice -n {niceness} " if niceness else "") + cmd.strip()


def main(argv: list[str] | None = None) -> str:
    """Runs the grid; writes and returns the markdown report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    extra = list(args.overrides)
    if args.steps is not None:
        extra += [f"train.steps={args.steps}", f"train.eval_every={args.steps}",
                  f"train.checkpoint_every={args.steps}", f"train.log_every={args.steps}"]
    if args.max_per_class is not None:
        extra += [f"data.source.max_per_class={args.max_per_class}",
                  f"data.target.max_per_class={args.max_per_class}"]
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    cells = grid.build_grid(args.quick, only, extra)
    if not cells:
        raise SystemExit(f"--only {args.only!r} matches no cell")
    # --only chooses what trains; the report covers the whole grid (the other cells from their
    # finished runs or --reuse), so a partial invocation never writes a report that drops cells
    # an earlier one had
    trained = None
    if only:
        trained = {c.id for c in cells}
        cells += [c for c in grid.build_grid(args.quick, None, extra) if c.id not in trained]
    runs = Path(args.runs
                or grid.REPO / ("runs/accuracy-quick" if args.quick else "runs/accuracy"))
    out_md = Path(args.out
                  or (runs / "RESULTS.md" if args.quick else grid.REPO / "docs/RESULTS.md"))
    # the full grid's summaries are committed beside its report (a new machine can --reuse
    # them: run directories are not committed); --quick's stay with its runs
    out_json = Path(args.json or (runs / "results.json" if args.quick
                                  else out_md.with_name("results.json")))
    command = command_line(argv)
    text = _run_grid(args, cells, seeds, runs, out_md, out_json, command, trained)
    print(f"wrote {out_md} and {out_json}", file=sys.stderr)
    return text


def _run_grid(args, cells, seeds, runs, out_md, out_json, command, trained=None) -> str:
    """Trains the cells in order (only those in ``trained`` if given, the others are read back
    like ``--no-train``'s) and writes the report after each, its cells in the grid's order.

    The cells that train nothing (read back from their finished runs or ``--reuse``) are
    gathered first, so every report written during a long run holds the whole grid: an
    interrupted run never leaves a report, or a ``results.json`` that a later ``--reuse``
    reads, with fewer cells than it started from."""
    t_start = time.time()
    order = {c.id: i for i, c in enumerate(
        grid.build_grid(args.quick, None, []))}  # the report's order: the grid's
    summaries = []
    total = len(cells) * len(seeds)
    reusable, origin = run.load_reusable(args.reuse)
    missing_peer = None
    if any(c.method.peer for c in cells):
        from benchmarks import adapt_cells
        missing_peer = adapt_cells.available()

    def run_seeds(i, cell):
        results = []
        for j, seed in enumerate(seeds):
            print(f"[accuracy {i * len(seeds) + j + 1}/{total}, {time.time() - t_start:.0f} s] "
                  f"{cell.id} seed {seed}", file=sys.stderr, flush=True)
            results.append(run.run_cell_seed(
                cell, seed, runs, Path(args.data_root), Path(args.weights_root),
                args.rescore and (trained is None or cell.id in trained)))
        return run.summarize(cell, results)

    to_train = []
    for i, cell in enumerate(cells):
        finished = run.has_finished_runs(cell, seeds, runs)
        if finished:  # this invocation's own finished runs win over --reuse
            summaries.append(run_seeds(i, cell))  # read back (rescored if asked), not trained
            continue
        prior = run.reused_summary(cell, seeds, reusable, origin) if cell.id in reusable else None
        if prior is None and cell.method.peer and missing_peer:
            print(f"[accuracy] {cell.id}: skipped, ADAPT is not installed ({missing_peer}; see "
                  "benchmarks/adapt_cells.py)", file=sys.stderr, flush=True)
            continue
        if prior is not None:
            print(f"[accuracy {i * len(seeds) + 1}/{total}] {cell.id}: read back from {origin}",
                  file=sys.stderr, flush=True)
            summaries.append(prior)
        elif not (args.no_train or (trained is not None and cell.id not in trained)):
            to_train.append((i, cell))
    text = ""
    for i, cell in to_train:
        summaries.append(run_seeds(i, cell))
        summaries.sort(key=lambda s: order.get(s["id"], len(order)))
        # written after every cell, so a long grid's partial results can be read (and resumed)
        text = report._write_report(args, cells, seeds, summaries, out_md, out_json,
                                    command, time.time() - t_start)
    if not text:  # nothing trained: the report of what is there, even if nothing is
        summaries.sort(key=lambda s: order.get(s["id"], len(order)))
        text = report._write_report(args, cells, seeds, summaries, out_md, out_json,
                                    command, time.time() - t_start)
    return text


if __name__ == "__main__":
    main()
