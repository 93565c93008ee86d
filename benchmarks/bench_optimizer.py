"""The optimizer update: TensorFlow's fused kernels against Keras's own ``update_step``.

``ddc.train.optim`` updates each variable with one fused kernel (``ResourceApplyAdam``,
``ResourceApplyKerasMomentum``); ``make_optimizer(..., fused=False)`` keeps Keras's chain of
element-wise ops. Per config, both built from the same seed, in one process:

* ``apply``: ``optimizer.apply`` alone (traced) on fixed random gradients of the network's
  trainable variables: ms per call.
* ``DDC step``: the whole ``TrainStep`` (source + target, the config's alignment terms) on
  fixed random batches, as ``bench_step`` times it: images/s.
* ``same update``: the largest |w_fused - w_keras| over all trainable weights after one
  identical DDC step from identical weights, relative to the largest weight change (the update
  is the same arithmetic, so this is float32 rounding).

Blocks alternate, rotated every round, after a warm-up round; a block is about ``--block-s``
seconds (its step count is set from the warm-up); ratios are per round (paired).

    python benchmarks/bench_optimizer.py                        # usps_mnist_ddc (Adam), siri_whu_ddc (SGD)
    python benchmarks/bench_optimizer.py --config demo --repeats 1 --block-s 0.05
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402  (first: sets up paths and TF logging)
from benchmarks.bench_mmd import NUM_CLASSES  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def apply_block(run):
    """``block(n)``: ``n`` traced ``optimizer.apply`` calls on fixed gradients; returns seconds."""
    variables = run.step.variables
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(scale=1e-3, size=v.shape).astype(np.float32))
             for v in variables]
    fn = tf.function(lambda: run.optimizer.apply(grads, variables))

    def block(n: int) -> float:
        fn()
        common.sync(variables[0].value)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        common.sync(variables[-1].value)
        return time.perf_counter() - t0

    return block


def fixed_batch_steps(run, batches):
    """``block(n)``: ``common.step_block`` of ``n`` timed steps cycling over fixed batches, each
    term at its weight."""
    return lambda n: common.step_block(run, itertools.cycle(batches), n, run.weights)()


def calibrated(block, target_s: float) -> int:
    """The number of calls that makes one block take about ``target_s`` seconds."""
    block(3)  # trace
    per = block(3) / 3
    return max(3, int(round(target_s / max(per, 1e-6))))


def same_result(cfg, k: int, batch) -> float:
    """max |w_fused - w_keras| / max |w_after - w_before| after one identical DDC step from
    identical weights. One step only: after that, the runs part as any two runs whose weights
    differ by a rounding error do (a max-pooling tie broken the other way, then Adam's
    normalised steps), which would measure that chaos, not the update."""
    after, before = [], None
    for fused in (True, False):
        keras.utils.set_random_seed(cfg.seed)
        run = common.build_run(cfg, k, fused=fused)
        before = [v.numpy() for v in run.step.variables]
        run.step(*batch, run.weights)
        after.append([v.numpy() for v in run.step.variables])
    diff = max(float(np.abs(a - c).max()) for a, c in zip(*after))
    moved = max(float(np.abs(a - w).max()) for a, w in zip(after[0], before))
    return diff / moved


def bench_config(name: str, overrides: list[str], repeats: int, block_s: float) -> list[str]:
    cfg = common.load_config(name, overrides)
    stem = Path(name).stem
    k = NUM_CLASSES.get(stem, 10)
    b = cfg.train.batch_size
    batches = [tuple(tf.constant(a) for a in batch) for batch in common.random_batches(cfg, k)]
    runs, raw, sizes = {}, {}, {}
    for fused in (True, False):
        label = "fused" if fused else "Keras update_step"
        keras.utils.set_random_seed(cfg.seed)
        runs[fused] = run = common.build_run(cfg, k, fused=fused)
        raw[f"apply, {label}"] = apply_block(run)
        raw[f"DDC step, {label}"] = fixed_batch_steps(run, batches)
    for name_, block in raw.items():
        sizes[name_] = calibrated(block, block_s)
    for kind in ("apply", "DDC step"):  # one call count per pair: both sides do the same work
        a, c = f"{kind}, fused", f"{kind}, Keras update_step"
        sizes[a] = sizes[c] = max(sizes[a], sizes[c])
    blocks = {n: (lambda block=block, n=n: block(sizes[n])) for n, block in raw.items()}
    notes = {runs[True].note}
    times = common.alternate(blocks, repeats, warmup=1)

    rows = []
    for n, ts in times.items():
        per_ms = common.Stats([t / sizes[n] * 1e3 for t in ts])
        ips = (common.Stats([runs[True].images_per_step * sizes[n] / t for t in ts]).fmt(1)
               if n.startswith("DDC") else "")
        rows.append([n, sizes[n], per_ms.fmt(3), ips])
    opt = runs[True].optimizer
    opt_name = type(getattr(opt, "inner_optimizer", opt)).__name__
    n_vars = len(runs[True].step.variables)
    n_params = sum(int(np.prod(v.shape)) for v in runs[True].step.variables)

    def ratio(kind):
        r = common.Stats([k_ / f for f, k_ in zip(times[f"{kind}, fused"],
                                                  times[f"{kind}, Keras update_step"])])
        return f"{r.mean:.3f} ± {r.std:.3f}", f"{r.median:.3f}"

    out = [f"### {stem}: {cfg.model.backbone}, {opt_name}, {n_vars} trainable variables "
           f"({n_params:,} parameters), batch {b}+{b}", "",
           common.table(["variant", "calls per block", "ms per call mean ± std",
                         "images/s mean ± std"], rows), "",
           common.table(["comparison", "mean ± std", "median"],
                        [["apply: Keras time / fused time", *ratio("apply")],
                         ["DDC step: Keras time / fused time (= fused speed-up)",
                          *ratio("DDC step")],
                         ["same update: max abs(w_fused - w_keras) / max abs(update), one step",
                          f"{same_result(cfg, k, batches[0]):.1e}", ""]])]
    notes.discard("")
    if notes:
        out.append("\nnote: " + "; ".join(sorted(notes)))
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", default=None,
                   help="shipped config name or path (repeatable; default usps_mnist_ddc, siri_whu_ddc)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=8, help="timed rounds")
    p.add_argument("--block-s", type=float, default=2.0, help="seconds per timed block")
    args = p.parse_args(argv)
    out = [common.header("Fused optimizer update vs Keras update_step", __file__, argv),
           f"{args.repeats} rounds; blocks of about {args.block_s} s.", ""]
    for name in args.config or ["usps_mnist_ddc", "siri_whu_ddc"]:
        out += bench_config(name, args.set, args.repeats, args.block_s) + [""]
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()
