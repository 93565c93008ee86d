"""Two backbones under one config, side by side: the whole training step's images/s.

Each backbone is set into the same config (``--set model.backbone=...``), built by
``ddc.train.build`` as the training loop builds it, and timed on fixed random batches of the
config's shape: blocks of ``--steps`` steps alternate, rotated every round, after a warm-up round;
ratios are per round (paired). Default: ``configs/usps_mnist_ddc.json`` (DDC, batch 64+64,
28 px) with the padded ``lenet`` against the unpadded ``lenet_caffe``.

    python benchmarks/bench_backbones.py
    python benchmarks/bench_backbones.py --config demo --repeats 1 --steps 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402  (first: sets up paths and TF logging)
from benchmarks.bench_mmd import NUM_CLASSES  # noqa: E402


def measure(config: str, backbones: list[str], overrides: list[str], repeats: int,
            steps: int) -> dict:
    """backbone -> (Run, list of seconds per block of ``steps`` steps)."""
    runs, blocks = {}, {}
    k = NUM_CLASSES.get(Path(config).stem, 10)
    for name in backbones:
        cfg = common.load_config(config, [*overrides, f'model.backbone="{name}"'])
        run = common.build_run(cfg, k)
        batches = iter(common.batch_dataset(common.random_batches(cfg, k)))
        runs[name] = run
        blocks[name] = common.step_block(run, batches, steps, run.weights)
    times = common.alternate(blocks, repeats)
    return {name: (runs[name], times[name]) for name in backbones}


def report(config: str, results: dict, steps: int, argv: list[str]) -> str:
    names = list(results)
    first = names[0]
    rows, speed = [], {}
    for name, (run, secs) in results.items():
        speed[name] = [run.images_per_step * steps / s for s in secs]
        params = sum(int(v.numpy().size) for v in run.net.model.trainable_variables)
        rows.append([name, f"{params:,}", run.images_per_step,
                     common.Stats(speed[name]).fmt(), common.Stats(
                         [1000 * s / steps for s in secs]).fmt()])
    lines = [common.header(f"Backbones side by side: {config}", __file__, argv),
             common.table(["backbone", "trainable parameters", "images/step",
                           "images/s mean ± std", "ms/step mean ± std"], rows), ""]
    ratio_rows = [[f"{name} / {first} (images/s)",
                   common.ratios(speed[name], speed[first]).fmt(3),
                   f"{common.ratios(speed[name], speed[first]).median:.3f}"]
                  for name in names[1:]]
    lines += [f"Paired per-round ratios over {len(speed[first])} rounds of {steps} steps:", "",
              common.table(["comparison", "mean ± std", "median"], ratio_rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="usps_mnist_ddc", help="shipped config name or path")
    p.add_argument("--backbones", default="lenet,lenet_caffe",
                   help="comma-separated model.backbone values, the first is the reference")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=8, help="timed rounds")
    p.add_argument("--steps", type=int, default=30, help="timed steps per block")
    args = p.parse_args(argv)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if len(backbones) < 2:
        p.error("--backbones: name at least two")
    text = report(args.config, measure(args.config, backbones, args.set, args.repeats,
                                       args.steps), args.steps, argv)
    print(text)
    return text


if __name__ == "__main__":
    main()
