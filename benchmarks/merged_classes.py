"""Where the images of a merged target class go: per source folder, what trained runs predict.

A task's ``data.target.class_map`` can merge several target folders into one class (AID's
Dense, Medium and Sparse Residential are all SIRI-WHU's ``residential``). A class accuracy
then hides which of those folders the model gets right. This script predicts every image of
the merged folders (and of ``--also`` folders) with each run's final checkpoint, through the
library's ``predict_files``, and prints per folder the share predicted as its mapped class and
the class most often predicted instead, mean ± std over the runs. It reads target labels: it
is a report of what went wrong, never an input to choosing a model.

    python benchmarks/merged_classes.py \\
        'runs/accuracy/siri_whu_aid/frozen_224_d4_3000_bn/mcc+im/seed*' --also Park \\
        --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import statistics
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ddc.report.predict import predict_files  # noqa: E402
from ddc.report.runs import read_config  # noqa: E402


def merged_folders(class_map: dict) -> list[str]:
    """The folders of ``class_map`` that share their class with another folder, sorted."""
    per_class = Counter(class_map.values())
    return sorted(f for f, c in class_map.items() if per_class[c] > 1)


def folder_counts(rows: list, root: Path) -> dict[str, Counter]:
    """Predicted classes counted per folder (the first path part below ``root``)."""
    out: dict[str, Counter] = {}
    for r in rows:
        folder = Path(r["path"]).relative_to(root).parts[0]
        out.setdefault(folder, Counter())[r["class"]] += 1
    return out


def folder_table(per_run: list[dict[str, Counter]], class_map: dict, folders: list[str]) -> str:
    """Markdown: per folder, its class, images, share predicted as that class (mean ± std over
    runs) and the other class predicted most often (by its mean share) with that share."""
    lines = ["| folder | class | images | predicted as its class | most predicted instead |",
             "|---|---|---|---|---|"]
    for folder in folders:
        counts = [run.get(folder, Counter()) for run in per_run]
        n = sum(counts[0].values())
        mapped = class_map.get(folder, folder)
        # each run's share of the folder per predicted class, then averaged over the runs
        shares = [{k: v / max(sum(c.values()), 1) for k, v in c.items()} for c in counts]
        own = [s.get(mapped, 0.0) for s in shares]
        others = Counter()
        for s in shares:
            others.update({k: v / len(shares) for k, v in s.items() if k != mapped})
        other, share = others.most_common(1)[0] if others else ("-", 0.0)
        spread = f" ± {100 * statistics.stdev(own):.1f}" if len(own) > 1 else ""
        lines.append(f"| {folder} | {mapped} | {n} | {100 * statistics.fmean(own):.1f}{spread}% "
                     f"| {other}: {100 * share:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (glob patterns allowed)")
    p.add_argument("--also", nargs="*", default=[], help="more target folders to report")
    p.add_argument("--data-root", default=os.environ.get("DDC_DATA_ROOT", "../shared/data"))
    args = p.parse_args(argv)
    runs = sorted({d for pattern in args.runs for d in (glob.glob(pattern) or [pattern])})
    target = read_config(runs[0]).data.target
    if not target.root:
        p.error(f"{runs[0]}: its target is not a folder tree (data.target.root is unset)")
    for run in runs[1:]:
        other = read_config(run).data.target
        if (other.root, other.class_map) != (target.root, target.class_map):
            p.error(f"{run}: data.target differs from {runs[0]}'s; give runs of one task")
    class_map = dict(target.class_map or {})
    root = Path(args.data_root) / target.root
    merged = merged_folders(class_map)
    folders = merged + [f for f in args.also if f not in merged]
    if not folders:
        p.error(f"{runs[0]}: data.target.class_map merges no folders; name some with --also")
    per_run = []
    for run in runs:
        _, rows = predict_files(run, [root / f for f in folders])
        per_run.append(folder_counts(rows, root))
        print(f"predicted {len(rows)} images with {run}", file=sys.stderr)
    print("command: python benchmarks/merged_classes.py "
          + shlex.join(sys.argv[1:] if argv is None else argv))
    print(f"runs ({len(runs)}): " + ", ".join(runs) + "\n")
    print(folder_table(per_run, class_map, folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
