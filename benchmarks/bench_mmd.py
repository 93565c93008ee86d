"""Time of the MMD² estimators (forward + backward, traced) and their share of a DDC step.

For each batch size (n source + n target features of width 256) and each of: the Gaussian
kernel with the biased, unbiased and linear-time estimators, and the linear kernel, a traced
function computes ``mmd2`` and its gradient with respect to both feature batches. Then the full
DDC training step (``TrainStep``, real network, batch 32+32) of the demo config (LeNet, 32 px)
and of the MobileNetV2 DDC config (``configs/siri_whu_ddc.json``, 128 px) is timed, together with the
same step whose ``mmd`` term's loss is replaced by 0 (the target batch still goes through the
network; the term's bandwidth diagnostic is still computed).

Shares of the step, per round (all variants alternate, so the load of a shared machine hits them
alike): ``isolated`` = MMD time / DDC step time; ``in step`` = (DDC step - step without MMD) /
DDC step, the MMD's marginal cost inside the step (noisier: a difference of two step times).

    nice -n 5 python benchmarks/bench_mmd.py              # default, a few minutes on 2 cores
    python benchmarks/bench_mmd.py --batches 32 --repeats 2 --calls 2 --step-configs demo
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402  (first: sets up paths and TF logging)
import tensorflow as tf  # noqa: E402
from ddc.align.mmd import MMD  # noqa: E402
from ddc.losses import bandwidth_base, mmd2  # noqa: E402

# (label, kernel, estimator)
VARIANTS = [("gaussian biased", "gaussian", "biased"),
            ("gaussian unbiased", "gaussian", "unbiased"),
            ("gaussian linear-time", "gaussian", "linear"),
            ("linear kernel", "linear", "biased")]
NUM_CLASSES = {"demo": 5, "siri_whu_ddc": 11}


class MMDReplacedByZero(MMD):
    """The ``mmd`` term with its loss replaced by 0 (it still needs the target batch and still
    returns the bandwidth diagnostic): a DDC step with it costs everything but the MMD²."""

    def __call__(self, x):
        return tf.zeros([], tf.float32), {"bandwidth_base": bandwidth_base(x.f_s, x.f_t)}


# ``common.build_run(cfg, k, replace_terms=WITHOUT_MMD)``: the DDC step without the MMD² itself
WITHOUT_MMD = {"mmd": MMDReplacedByZero}


def require_mmd(cfg, script: str, name: str) -> None:
    """Exits unless the config's alignment has an active ``mmd`` term (DDC)."""
    if not any(n == "mmd" and o.weight > 0 for n, o in cfg.align.items()):
        raise SystemExit(f"{script}: config {name} has no active mmd term (align.mmd.weight > 0)")


def mmd_block(n: int, width: int, kernel: str, estimator: str, calls: int, seed: int = 0):
    """A block of ``calls`` traced forward+backward ``mmd2`` calls; returns seconds per call."""
    g = tf.random.Generator.from_seed(seed)
    f_s = g.normal([n, width])
    f_t = g.normal([n, width]) + 0.5

    @tf.function
    def fwd_bwd(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = mmd2(a, b, kernel=kernel, estimator=estimator)
        ga, gb = tape.gradient(loss, [a, b])
        return loss, ga, gb

    def block() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            common.sync(fwd_bwd(f_s, f_t))
        return (time.perf_counter() - t0) / calls

    return block


def step_blocks(name: str, steps: int, batch: int) -> tuple[dict, str]:
    cfg = common.load_config(name, [f"train.batch_size={batch}"])
    k = NUM_CLASSES.get(name, 10)
    require_mmd(cfg, "bench_mmd", name)
    blocks, notes = {}, []
    for label, replace in (("ddc", None), ("no_mmd", WITHOUT_MMD)):
        run = common.build_run(cfg, k, replace_terms=replace)
        it = iter(common.batch_dataset(common.random_batches(cfg, k)))
        inner = common.step_block(run, it, steps, run.weights)
        blocks[f"{name}/{label}"] = lambda inner=inner: inner() / steps
        if run.note:
            notes.append(run.note)
    return blocks, "; ".join(sorted(set(notes)))


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="32,128,512", help="per-domain batch sizes")
    p.add_argument("--width", type=int, default=256, help="feature width")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calls", type=int, default=20, help="MMD calls per timed block")
    p.add_argument("--step-configs", default="demo,siri_whu_ddc",
                   help="configs whose full DDC step is timed ('' for none)")
    p.add_argument("--step-batch", type=int, default=32)
    p.add_argument("--step-steps", type=int, default=4, help="steps per timed block")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    configs = [c for c in args.step_configs.split(",") if c]

    blocks = {}
    for n in batches:
        for label, kernel, est in VARIANTS:
            blocks[f"{label}@{n}"] = mmd_block(n, args.width, kernel, est, args.calls)
    notes = {}
    for name in configs:
        b, note = step_blocks(name, args.step_steps, args.step_batch)
        blocks.update(b)
        notes[name] = note
    times = common.alternate(blocks, args.repeats, warmup=1)

    rows = []
    for n in batches:
        for label, _, _ in VARIANTS:
            s = common.Stats([t * 1e3 for t in times[f"{label}@{n}"]])
            rows.append([label, f"{n}+{n}", args.width, f"{s.median:.3f}", s.fmt(3)])
    out = [common.header("MMD² forward + backward (traced), and its share of a DDC step",
                         __file__, argv),
           common.table(["estimator", "batch", "width", "median ms", "mean ± std ms"], rows)]

    if configs:
        n = args.step_batch
        share_rows = []
        for name in configs:
            ddc, nommd = times[f"{name}/ddc"], times[f"{name}/no_mmd"]
            step = common.Stats([t * 1e3 for t in ddc])
            base = common.Stats([t * 1e3 for t in nommd])
            in_step = common.Stats([(a - b) / a * 100 for a, b in zip(ddc, nommd)])
            row = [name, f"{n}+{n}", step.fmt(1), base.fmt(1)]
            for label, _, _ in VARIANTS:
                key = f"{label}@{n}"
                if key in times:
                    r = common.ratios(times[key], ddc)
                    row.append(f"{r.mean * 100:.2f} ± {r.std * 100:.2f}")
                else:
                    row.append("n/a")
            row.append(in_step.fmt(1))
            share_rows.append(row)
        out += ["", f"Share of the full DDC step at batch {n}+{n} (percent, per-round ratios, "
                    f"mean ± std over {args.repeats} rounds):", "",
                common.table(["config", "batch", "DDC step ms", "step without MMD ms"]
                             + [f"{label} share %" for label, _, _ in VARIANTS]
                             + ["in-step Δ share % (biased)"], share_rows)]
        for name, note in notes.items():
            if note:
                out.append(f"\nnote ({name}): {note}")
    text = "\n".join(out) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
