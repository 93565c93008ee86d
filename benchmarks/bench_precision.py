"""Images/s of the training step in float32 and mixed precision, and whether its losses stay finite.

The Python part of ``benchmarks/gpu_check.sh`` (meant for a GPU machine; it runs on a CPU too,
slowly). For each network preset and each precision: build the network, freeze, optimizer
(``LossScaleOptimizer`` under mixed_float16) and ``TrainStep`` as the training loop does, run
``--warmup`` untimed steps (tracing), then ``--steps`` timed steps on random uint8 batches fed
through tf.data, reading each step's outputs back as the loop does. Reports images/s, the
mixed/float32 speedup, float16 steps skipped by loss scaling, and whether every loss was finite.

Presets: ``mobilenet_v2`` = ``configs/siri_whu_ddc.json`` (128 px, frozen until block_15_add, DDC
batch 32+32); ``resnet50`` = the same run with a ResNet50 backbone at 224 px, random init, all
layers trained; ``demo`` = ``configs/demo.json`` (LeNet, for tests).

    python benchmarks/bench_precision.py --runs mobilenet_v2,resnet50 --steps 300
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402  (first: sets up paths and TF logging)
from benchmarks.bench_mmd import NUM_CLASSES  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

PRESETS = {
    "mobilenet_v2": ("siri_whu_ddc", []),
    "resnet50": ("siri_whu_ddc", ['model.backbone="resnet50"', "model.weights=null",
                              'model.freeze.mode="none"', "data.image_size=224"]),
    "demo": ("demo", ["train.batch_size=8"]),
}


def measure(preset: str, precision: str, steps: int, warmup: int) -> dict:
    name, overrides = PRESETS[preset]
    cfg = common.load_config(name, overrides + [f'train.precision="{precision}"'])
    k = NUM_CLASSES.get(name, 10)
    before = keras.mixed_precision.global_policy()
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(cfg.seed)
        run = common.build_run(cfg, k)
        it = iter(common.batch_dataset(common.random_batches(cfg, k, count=8)))
        losses, skipped = [], 0

        def one():
            nonlocal skipped
            m = common.one_step(run, it, run.weights)
            ok = bool(m["finite"])
            skipped += not ok
            losses.append(float(m["total_loss"]))

        for _ in range(warmup):
            one()
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        dt = time.perf_counter() - t0
    finally:
        keras.mixed_precision.set_global_policy(before)
    finite = all(math.isfinite(v) for v in losses[-steps:])
    return {"preset": preset, "precision": precision,
            "images_per_s": run.images_per_step * steps / dt,
            "ms_per_step": dt / steps * 1e3, "skipped": skipped, "finite": finite,
            "first_loss": losses[0], "last_loss": losses[-1],
            "batch": f"{cfg.train.batch_size}+{cfg.train.batch_size}" if run.use_target
            else str(cfg.train.batch_size),
            "size": cfg.data.image_size, "note": run.note}


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="mobilenet_v2,resnet50", help=f"presets: {', '.join(PRESETS)}")
    p.add_argument("--precisions", default="float32,mixed_float16")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--require-gpu", action="store_true", help="exit 1 when TF sees no GPU")
    args = p.parse_args(argv)
    if args.require_gpu and not tf.config.list_physical_devices("GPU"):
        raise SystemExit("bench_precision: no GPU visible to TensorFlow (--require-gpu)")
    results = []
    for r in args.runs.split(","):
        for prec in args.precisions.split(","):
            results.append(measure(r, prec, args.steps, args.warmup))
            print(f"{r} {prec}: {results[-1]['images_per_s']:.1f} images/s, losses finite: "
                  f"{results[-1]['finite']}", file=sys.stderr, flush=True)
    # each row against the float32 run of its network just before it (paired when the
    # precisions alternate, e.g. --precisions float32,mixed_bfloat16,float32,mixed_bfloat16)
    last, base = {}, []
    for r in results:
        if r["precision"] == "float32":
            last[r["preset"]] = r["images_per_s"]
        base.append(last.get(r["preset"]))
    rows = [[r["preset"], f"{r['size']} px", r["batch"], r["precision"],
             f"{r['images_per_s']:.1f}", f"{r['ms_per_step']:.1f}",
             f"{r['images_per_s'] / b:.2f}x" if b else "n/a",
             r["skipped"], "yes" if r["finite"] else "NO",
             f"{r['first_loss']:.4f} -> {r['last_loss']:.4f}"] for r, b in zip(results, base)]
    notes = sorted({f"{r['preset']}: {r['note']}" for r in results if r["note"]})
    names = " vs ".join(dict.fromkeys(args.precisions.split(",")))
    out = [common.header(f"{names} training step ({args.steps} timed steps "
                         f"after {args.warmup} warm-up steps)", __file__, argv),
           common.table(["network", "size", "batch", "precision", "images/s", "ms/step",
                         "speedup vs float32", "skipped fp16 steps", "losses finite",
                         "total loss first -> last"], rows)]
    out += [f"\nnote: {n}" for n in notes]
    text = "\n".join(out) + "\n"
    print(text)
    if not all(r["finite"] for r in results):
        print("ERROR: a non-finite loss in a timed step", file=sys.stderr)
    return text


if __name__ == "__main__":
    text = main()
    sys.exit(0 if "| NO |" not in text else 1)
