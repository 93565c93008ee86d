"""The no-download demo: DDC against the same network with lambda = 0 on synthetic domains.

``run_demo`` trains the demo config (``configs/demo.json``: a LeNet from light shapes on dark
backgrounds to the same shapes drawn smaller, see ``ddc/data/synthetic.py``) twice,
with its alignment terms and with none (``align = {}``), in ``workdir/ddc`` and
``workdir/source_only``;
``format_table`` prints the two results side by side (mean ± std when several seeds ran, each
seed in ``workdir/seed<k>``). Everything else (data, training, run directories, results.json)
is ``ddc.train.train_and_evaluate``'s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from ddc.cli import answers_ctrl_c  # imports nothing heavy

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.json"
METHODS = ("ddc", "source_only")


def run_demo(workdir: str | Path = "runs/demo", *, config: str | Path = DEFAULT_CONFIG,
             steps: int | None = None, overrides: list[str] | None = None,
             restart: bool = False) -> list[dict]:
    """Trains the demo config with its lambda and with lambda = 0.

    Args:
        workdir: parent folder of the two run directories ``ddc`` and ``source_only``.
        config: the JSON config (some ``align`` term must have a weight > 0).
        steps: overrides ``train.steps`` (tests run a few steps).
        overrides: more ``key.path=value`` overrides, as ``--set`` takes them.
        restart: start both runs over instead of resuming (or re-reading) earlier ones.

    Returns:
        One row per method: ``method``, ``lambda`` (the sum of the active terms' weights),
        ``workdir`` and the run's results.json
        entries (``target_acc``, ``target_mean_class_acc``, ``source_val_acc``, ...).

    Raises:
        ConfigError: a bad config or override, or no active term in the config.
        DataError, RunError, RunInterrupted: as ``train_and_evaluate`` raises them.
    """
    from ddc.config import ConfigError, load
    from ddc.train import train_and_evaluate

    sets = list(overrides or []) + ([f"train.steps={int(steps)}"] if steps is not None else [])
    cfg = load(config, sets)
    if not any(o.weight > 0 for o in cfg.align.values()):
        raise ConfigError(f"align: the demo compares the config's alignment with none; expected "
                          f"a term with weight > 0 in {config}, got {len(cfg.align)} active")
    rows = []
    for method in METHODS:
        extra = [f"name={cfg.name}_{method}"] + (["align={}"] if method == "source_only" else [])
        run_cfg = load(config, sets + extra)
        run_dir = Path(workdir) / method
        results = train_and_evaluate(run_cfg, run_dir, restart=restart)
        rows.append({"method": method, "lambda": sum(o.weight for o in run_cfg.align.values()),
                     "workdir": str(run_dir), **results})
    return rows


def run_demo_seeds(workdir: str | Path, seeds: list[int], *, overrides: list[str] | None = None,
                   **kwargs) -> list[dict]:
    """``run_demo`` once per seed (``seed=k`` added to the overrides) in ``workdir/seed<k>``;
    the rows of all seeds, each with its ``seed``."""
    rows = []
    for seed in seeds:
        sets = list(overrides or []) + [f"seed={seed}"]
        rows += [{**row, "seed": seed}
                 for row in run_demo(Path(workdir) / f"seed{seed}", overrides=sets, **kwargs)]
    return rows


def _pct(values) -> str:
    """``values`` (one or several seeds) as a percentage, mean ± sample std for several."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}%"
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}%"


def format_table(rows: list[dict]) -> str:
    """A plain-text table: method, lambda, target accuracy, mean per-class, source val accuracy;
    rows of the same method from several seeds are merged into mean ± std."""
    header = ("method", "lambda", "seeds", "target acc", "target mean/class", "source val acc")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    body = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        body.append((m, f"{rs[0]['lambda']:g}", str(len(rs)),
                     *(_pct([r[k] for r in rs]) for k in
                       ("target_acc", "target_mean_class_acc", "source_val_acc"))))
    widths = [max(len(str(line[i])) for line in (header, *body)) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*line) for line in (header, *body))


def demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddc-demo",
        description="Train DDC and the same network with lambda = 0 on the synthetic shape "
                    "domains (no download) and print their target accuracies.")
    p.add_argument("--workdir", default="runs/demo",
                   help="parent of the two run directories (default: runs/demo)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo config (JSON)")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: one pair of runs per seed "
                                   "in WORKDIR/seed<k>, the table shows mean ± std")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, e.g. --set seed=1 (JSON value)")
    p.add_argument("--restart", action="store_true",
                   help="start both runs over instead of resuming earlier ones")
    return p


@answers_ctrl_c("interrupted outside a training step; run the same command to go on "
                "from the checkpoints saved so far")
def demo_main(argv: list[str] | None = None) -> int:
    """``ddc-demo``: exit 0 on success, 2 on a bad config, 130 when interrupted."""
    args = demo_parser().parse_args(argv)
    from ddc.config import ConfigError
    from ddc.data.images import DataError
    from ddc.train import RunError, RunInterrupted

    try:
        kwargs = dict(config=args.config, steps=args.steps, overrides=args.overrides,
                      restart=args.restart)
        if args.seeds:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            rows = run_demo_seeds(args.workdir, seeds, **kwargs)
        else:
            rows = run_demo(args.workdir, **kwargs)
    except (ConfigError, DataError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return 130
    print(format_table(rows))
    print(f"run directories: {', '.join(r['workdir'] for r in rows)}")
    print("(target labels are used only for these final numbers)")
    return 0
