"""The whole cost of a mode "features" run, twice, and our extraction against ``Model.predict``.

1. Runs the same mode "features" config twice from the CLI (``python -m ddc.cli``), each in a
   fresh process, with one fresh cache folder (``$DDC_CACHE_DIR``) for both: the first run
   decodes the images and extracts the frozen part's output (every view ``data.augment``
   needs), the second finds both on disk. Prints each run's setup time (decode, features),
   training time and their ratio (target: the second run's setup at least 10x faster).
2. Extraction images/s of ``ddc.train.feature_cache.FeatureCache`` (no disk: hashing, batching,
   the traced inference-mode call) against ``keras.Model.predict`` of the same preprocessing
   and frozen part at the same batch size, over the same images, in alternating blocks after a
   warm-up (per-round ratios, mean ± std).

    nice -n 5 python benchmarks/bench_features.py     # SIRI-WHU -> AID, MobileNetV2, 128 px
    python benchmarks/bench_features.py --config my.json --set train.steps=10 --images 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402  (first: sets up paths and TF logging)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddc import paths  # noqa: E402
from ddc.data.prepare import prepare_data  # noqa: E402
from ddc.models import apply_freeze, build_network  # noqa: E402
from ddc.models.split import split_at_frozen_prefix  # noqa: E402
from ddc.train.feature_cache import FeatureCache, extraction_batch_size  # noqa: E402

DEFAULT_CONFIG = "configs/grid/siri_whu_aid.json"
DEFAULT_SET = ["data.source.max_per_class=60", "data.target.max_per_class=60",
               'data.augment="d4"', "train.tta=true", "train.steps=200", "train.eval_every=200",
               "train.log_every=50", "train.checkpoint_every=200"]


def cli_run(config: str, overrides: list[str], workdir: Path, env: dict) -> tuple[dict, float, str]:
    """One training run in a fresh process: (results.json, process seconds, final log line)."""
    cmd = [sys.executable, "-m", "ddc.cli", "--config", config, "--workdir", str(workdir)]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"run failed with exit status {proc.returncode}: {' '.join(cmd)}")
    done = [line for line in (workdir / "train.log").read_text().splitlines() if "done:" in line]
    return json.loads((workdir / "results.json").read_text()), wall, done[-1] if done else ""


def two_runs(args) -> str:
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        env = {**os.environ, "DDC_CACHE_DIR": str(Path(tmp) / "cache"),
               "DDC_DATA_ROOT": str(common.data_root()),
               "DDC_WEIGHTS_ROOT": str(common.weights_root())}
        runs = []
        for i in (1, 2):
            r, wall, line = cli_run(args.config, args.overrides, Path(tmp) / f"run{i}", env)
            runs.append((r, wall, line))
            print(f"run {i}: setup {r['setup_time_s']:.1f} s, training {r['train_time_s']:.1f} s,"
                  f" process {wall:.1f} s", flush=True)
    rows = []
    for i, (r, wall, _) in enumerate(runs, 1):
        ips = r["extract_images_per_s"]
        rows.append([f"run {i}", f"{r['setup_time_s']:.1f}", f"{r['decode_time_s']:.1f}",
                     f"{r['extract_time_s']:.1f}", r["features_extracted"],
                     r["features_from_cache"], f"{ips:.1f}" if ips else "—",
                     f"{r['train_time_s']:.1f}", f"{wall:.1f}", f"{r['target_acc']:.4f}",
                     "—" if r.get("target_acc_tta") is None else f"{r['target_acc_tta']:.4f}"])
    (a, wa, _), (b, wb, _) = runs
    ratio = a["setup_time_s"] / b["setup_time_s"]
    lines = [common.table(["run", "setup s", "decode s", "features s", "views extracted",
                           "views from cache", "extraction images/s", "training s",
                           "process s", "target acc", "target acc (TTA)"], rows), "",
             f"Setup time, first run / second run: **{ratio:.1f}x** (target: >= 10x; "
             f"{'met' if ratio >= 10 else 'NOT met'}); whole process: {wa / wb:.1f}x.", "",
             "Final log lines (without their run folder):", "",
             *[f"    {line.split(' INFO ', 1)[-1].split('; results in ')[0]}"
               for _, _, line in runs], ""]
    return "\n".join(lines)


def extraction_vs_predict(args) -> str:
    cfg = common.load_config(args.config, args.overrides)
    keras.utils.set_random_seed(cfg.seed)
    d = cfg.data
    data = prepare_data(cfg, common.data_root(), paths.cache_dir())  # decoded once per machine
    images = np.asarray(data.target.images[:args.images])
    weights, _ = common.resolve_weights_or_none(cfg)
    net = build_network(cfg.model, (d.image_size, d.image_size, d.channels),
                        len(data.class_names), weights)
    apply_freeze(net.backbone, cfg.model.freeze)
    bottom, _, cut = split_at_frozen_prefix(net)
    batch = args.batch or extraction_batch_size(bottom)
    image = keras.Input(images.shape[1:], dtype="uint8")
    whole = keras.Model(image, bottom(net.preprocess(image)))
    ours = FeatureCache(bottom, net.preprocess, None, batch_size=batch)
    n = len(images)

    def ours_block():
        t = time.perf_counter()
        ours.features(images)
        return time.perf_counter() - t

    def predict_block():
        t = time.perf_counter()
        whole.predict(images, batch_size=batch, verbose=0)
        return time.perf_counter() - t

    a = ours.features(images)[:, 0]
    b = whole.predict(images, batch_size=batch, verbose=0)
    diff = float(np.max(np.abs(a - b)))
    times = common.alternate({"ours": ours_block, "predict": predict_block}, args.rounds)
    ips = {k: common.Stats([n / s for s in v]) for k, v in times.items()}
    ratio = common.ratios([n / s for s in times["ours"]], [n / s for s in times["predict"]])
    rows = [[k, batch, n, f"{ips[k].median:.1f}", ips[k].fmt(1)] for k in ("ours", "predict")]
    return "\n".join([
        f"Frozen part: {cfg.model.backbone} up to `{cut}` at {d.image_size} px, output "
        f"{tuple(bottom.output.shape[1:])}; {args.rounds} rounds of {n} images after a warm-up; "
        f"largest difference between the two outputs: {diff:.2e}.", "",
        common.table(["extractor", "batch", "images/block", "median images/s",
                      "images/s mean ± std"], rows), "",
        f"Per-round ratio, ours / predict (images/s): {ratio.fmt(3)} (median "
        f"{ratio.median:.3f}).", ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--set", dest="overrides", action="append", default=None,
                   help=f"config overrides (default: {' '.join(DEFAULT_SET)})")
    p.add_argument("--images", type=int, default=512, help="images per extraction block")
    p.add_argument("--batch", type=int, default=0, help="extraction batch (0: automatic)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--skip-runs", action="store_true", help="only the extraction comparison")
    args = p.parse_args()
    if args.overrides is None:
        args.overrides = list(DEFAULT_SET)
    if not Path(args.config).exists():  # a path relative to the repository
        args.config = str(common.REPO / args.config)
    out = [common.header(f"Mode \"features\", twice from the CLI; extraction vs predict: "
                         f"{Path(args.config).stem}", __file__), "",
           "Overrides: " + " ".join(f"`{o}`" for o in args.overrides), ""]
    if not args.skip_runs:
        out.append(two_runs(args))
    out.append(extraction_vs_predict(args))
    print("\n".join(out))


if __name__ == "__main__":
    main()
