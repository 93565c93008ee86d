"""Supervised SIRI-WHU finetuning table: three ways of using ImageNet MobileNetV2, 3 seeds each.

Protocol (the reference's): a seeded stratified split of SIRI-WHU with 20% of the images of each
class for training and 80% held out for testing (``data.val_fraction: 0.8``); the held-out split
accuracy (``source_val_acc``) is the test accuracy. The target domain is SIRI-WHU too, only
evaluated (``align: {}``: no alignment term). Each seed draws its own split, initialisation and
batch order.

Variants:
    features  ``configs/siri_whu_features.json``: the backbone runs once over the images,
              softmax regression on the cached pooled features.
    frozen    ``configs/siri_whu_reference.json`` with the whole backbone frozen: the same
              classifier trained through the network, with flip augmentation.
    partial   ``configs/siri_whu_reference.json``: blocks 13-16 and Conv_1 trained at 0.1x the
              head's learning rate, every BatchNorm kept frozen (inference statistics).

Usage::

    nice -n 10 python benchmarks/finetune_table.py --data-root ../shared/data \\
        --weights-root ../shared/weights

Finished runs in ``--workdir`` (same config, compared ``ddc.config.normalised``: a run written
with the old ``mmd`` block, or before a new default-valued key, still matches) are reused;
``--restart`` recomputes them. The table is written between the markers of ``--out`` (default
``docs/FINETUNE.md``), leaving the rest of the document as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from ddc.config import load, normalised  # noqa: E402

VARIANTS = {
    "features": ("configs/siri_whu_features.json", []),
    "frozen": ("configs/siri_whu_reference.json",
               ['model.freeze={"mode": "backbone"}', "name=siri_whu_frozen"]),
    "partial": ("configs/siri_whu_reference.json", []),
    # the feature extractor at the backbone's native 224 px, and with the eight D4 views of each
    # training image (one drawn per sample and step) plus the test prediction averaged over them
    "features_224": ("configs/siri_whu_features.json", ["data.image_size=224"]),
    "features_224_d4": ("configs/siri_whu_features.json",
                        ["data.image_size=224", 'data.augment="d4"', "train.tta=true"]),
    # ... trained three times as long (a D4 view of each image is seen ~1/8 as often)
    "features_224_d4_long": ("configs/siri_whu_features.json",
                             ["data.image_size=224", 'data.augment="d4"', "train.tta=true",
                              "train.steps=4500", "train.eval_every=4500",
                              "train.checkpoint_every=4500"]),
    # the partial finetune (blocks 13-16 and Conv_1 at lr x0.1, BatchNorm frozen) at the settings
    # that helped the feature extractor: 224 px, D4 views and test-time averaging, 1500 steps;
    # mode "features" caches the frozen part's output (block_12_add) once per view
    "partial_224_d4": ("configs/siri_whu_reference.json",
                       ['mode="features"', "data.image_size=224", 'data.augment="d4"',
                        "train.tta=true", "train.steps=1500", "train.eval_every=1500",
                        "train.checkpoint_every=1500", "train.log_every=100",
                        "name=siri_whu_partial_224_d4"]),
    # ... with label smoothing 0.1 on the training cross-entropy (SHOT's value, not tuned)
    "partial_224_d4_ls": ("configs/siri_whu_reference.json",
                          ['mode="features"', "data.image_size=224", 'data.augment="d4"',
                           "train.tta=true", "train.steps=1500", "train.eval_every=1500",
                           "train.checkpoint_every=1500", "train.log_every=100",
                           "train.label_smoothing=0.1", "name=siri_whu_partial_224_d4_ls"]),
}
DESCRIPTIONS = {
    "features": "feature extractor: softmax regression on cached pooled features",
    "frozen": "finetune, whole backbone frozen (flip augmentation)",
    "partial": "finetune blocks 13-16 + Conv_1 at lr x0.1, BatchNorm frozen",
    "features_224": "feature extractor at 224 px",
    "features_224_d4": "feature extractor at 224 px, D4 views in training",
    "features_224_d4_long": "the same, 4500 steps",
    "partial_224_d4": "partial at 224 px with D4 views, 1500 steps (frozen part cached)",
    "partial_224_d4_ls": ("partial_224_d4 with label smoothing 0.1 (SHOT's value, fixed before "
                          "its runs)"),
}


def markers(block: str = "") -> tuple[str, str]:
    """The comments around a generated table: ``--block NAME`` writes its own table beside the
    main one (``finetune-table-NAME``), so a later study does not rerun the main table's runs."""
    name = "finetune-table" + (f"-{block}" if block else "")
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def run_one(variant: str, seed: int, args) -> dict:
    """Trains one variant for one seed (or reuses a finished run); returns its numbers."""
    from ddc.train import train_and_evaluate

    path, overrides = VARIANTS[variant]
    cfg = load(REPO / path, overrides + [f"seed={seed}"] + list(args.overrides))
    workdir = Path(args.workdir) / variant / f"seed{seed}"
    results_path = workdir / "results.json"
    same = (workdir / "config.json").exists() and \
        normalised(json.loads((workdir / "config.json").read_text())) == normalised(cfg.to_dict())
    timing = workdir / "benchmark_wall_s.json"
    if args.restart or not (same and results_path.exists() and timing.exists()):
        t0 = time.time()
        train_and_evaluate(cfg, workdir, data_root=args.data_root, weights_root=args.weights_root,
                           restart=True)
        # the whole run: data loading (disk cache), building, feature extraction, training, test
        timing.write_text(json.dumps({"wall_s": time.time() - t0}))
    results = json.loads(results_path.read_text())
    # the final evaluation record holds the held-out split's mean per-class accuracy
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l]
    final = [r for r in records if r["step"] == results["steps"]][-1]
    return {"acc": results["source_val_acc"],
            "acc_tta": results.get("source_val_acc_tta"),
            "mean_class_acc": final["source_val_mean_class_acc"],
            "wall_s": json.loads(timing.read_text())["wall_s"],
            "steps": results["steps"],
            "trainable_params": results["variables"]["trainable_params"]}


def _ms(values) -> str:
    v = np.asarray(values, float)
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.3f} ± {std:.3f}"


def render(rows: dict, seeds: list, command: str, total_s: float, block: str = "") -> str:
    start, end = markers(block)
    lines = [start, "",
             f"Command: `{command}`", "",
             f"Seeds {', '.join(map(str, seeds))}; mean ± sample standard deviation over seeds. "
             "Test = the 80% held-out split of each seed.", "",
             "| variant | test accuracy | with D4 TTA | mean per-class accuracy | per seed | "
             "trainable params | steps | wall time per run |",
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        tta = [r["acc_tta"] for r in runs if r.get("acc_tta") is not None]
        lines.append(
            f"| {name}: {DESCRIPTIONS[name]} | {_ms([r['acc'] for r in runs])} "
            f"| {_ms(tta) if len(tta) == len(runs) else 'n/a'} "
            f"| {_ms([r['mean_class_acc'] for r in runs])} "
            f"| {', '.join(format(r['acc'], '.3f') for r in runs)} "
            f"| {runs[0]['trainable_params']:,} | {runs[0]['steps']} "
            f"| {np.mean([r['wall_s'] for r in runs]):.0f} s |")
    lines += ["", f"Total wall time of the runs: {total_s / 60:.1f} min (each run from loading "
              "the data to its test evaluation, on a CPU shared with other "
              "jobs; reused runs count with their own time).", "", end]
    return "\n".join(lines)


def write_table(out: Path, table: str, block: str = "") -> None:
    start, end = markers(block)
    text = out.read_text() if out.exists() else f"# Finetuning on SIRI-WHU\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        text = text.rstrip() + f"\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    out.write_text(head + table + tail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=os.environ.get("DDC_DATA_ROOT", str(REPO.parent / "shared/data")))
    p.add_argument("--weights-root",
                   default=os.environ.get("DDC_WEIGHTS_ROOT", str(REPO.parent / "shared/weights")))
    p.add_argument("--workdir", default=str(REPO / "runs" / "finetune_table"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override every variant's config (e.g. train.steps=50 for a smoke run)")
    p.add_argument("--out", default=str(REPO / "docs" / "FINETUNE.md"))
    p.add_argument("--block", default="", help="write the table between its own markers "
                   "(finetune-table-BLOCK), appended to --out the first time, leaving the main "
                   "table as it is")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--restart", action="store_true", help="recompute finished runs")
    args = p.parse_args(argv)

    command = "python benchmarks/finetune_table.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    t0 = time.time()
    rows = {}
    for variant in args.variants:
        rows[variant] = []
        for seed in args.seeds:
            r = run_one(variant, seed, args)
            print(f"{variant} seed {seed}: test acc {r['acc']:.4f}, mean per-class "
                  f"{r['mean_class_acc']:.4f}, {r['wall_s']:.0f} s", flush=True)
            rows[variant].append(r)
    total = sum(r["wall_s"] for runs in rows.values() for r in runs)
    table = render(rows, args.seeds, command.strip(), total, args.block)
    print(table)
    print(f"(this invocation: {(time.time() - t0) / 60:.1f} min)")
    if not args.no_write:
        write_table(Path(args.out), table, args.block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
