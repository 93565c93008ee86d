"""Where a training step's time goes: TensorFlow profiler op self-times, ours and ADAPT's.

Profiles ``--steps`` steps of our DDC step (as ``bench_adapt`` times it: next batch, step, host
sync) and, when ``adapt`` is installed, as many steps of ADAPT's ``DeepCORAL`` inside ``fit``
(same network, data and batch: see ``bench_adapt``), then prints the op types by self time per
step. Self time is summed over TensorFlow's executor threads (``tf_Compute``); an op's helper
threads (its intra-op pool) are inside its own time, so the shares say which kernels hold the
step, not CPU seconds. The input pipeline's ops (``Dataset``, ``PyFuncStateless``) are listed
too: they run on tf.data's threads, beside the step. Threads' idle time is left out.

Reading the profile needs ``xprof`` (benchmark-only, like ``adapt``: ``pip install xprof``).

    python benchmarks/profile_step.py --data-root ../shared/data        # USPS -> MNIST, LeNet
    python benchmarks/profile_step.py --config demo --steps 3 --no-adapt
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402  (first: sets up paths and TF logging)
from benchmarks import bench_adapt  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ddc.data.pipeline import train_dataset  # noqa: E402
from ddc.data.prepare import prepare_data  # noqa: E402

CONV = "Conv2D"  # every convolution kernel's type has it: forward, fused, both backprops


def op_self_times(logdir: Path) -> dict[str, float]:
    """Op type -> self time in microseconds, from the newest profile under ``logdir``."""
    from xprof.convert import raw_to_tool_data

    files = glob.glob(str(logdir / "plugins" / "profile" / "*" / "*.xplane.pb"))
    if not files:
        raise RuntimeError(f"no profile (*.xplane.pb) under {logdir}")
    newest = max(files, key=lambda f: Path(f).stat().st_mtime)
    data, _ = raw_to_tool_data.xspace_to_tool_data([newest], "framework_op_stats", {})
    table = json.loads(data.decode() if isinstance(data, bytes) else data)
    table = table[0] if isinstance(table, list) else table
    cols = [c["id"] for c in table["cols"]]
    out: dict[str, float] = {}
    for row in table["rows"]:
        r = dict(zip(cols, [c["v"] if c else None for c in row["c"]]))
        out[r["type"]] = out.get(r["type"], 0.0) + float(r["total_self_time"])
    return out


def profile(fn, steps: int, logdir: Path) -> dict[str, float]:
    """Op type -> ms per step while ``fn(steps)`` runs under the profiler."""
    tf.profiler.experimental.start(str(logdir))
    try:
        fn(steps)
    finally:
        tf.profiler.experimental.stop()
    return {t: us / 1e3 / steps for t, us in op_self_times(logdir).items()}


def shares(ms: dict[str, float]) -> dict[str, float]:
    busy = sum(v for t, v in ms.items() if t != "IDLE")
    return {t: 100.0 * v / busy for t, v in ms.items() if t != "IDLE"}


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="usps_mnist_ddc")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-root", default=None, help="default: $DDC_DATA_ROOT or ../shared/data")
    p.add_argument("--steps", type=int, default=30, help="profiled steps per method")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (tracing)")
    p.add_argument("--top", type=int, default=15, help="op types listed")
    p.add_argument("--no-adapt", action="store_true", help="profile ours only")
    p.add_argument("--logdir", default=None, help="keep the profiles here (TensorBoard's "
                   "Profile tab reads them); default: a temporary directory")
    args = p.parse_args(argv)
    try:
        import xprof  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"profile_step: reading the profile needs xprof ({e}); "
                         "pip install xprof")
    cfg = common.load_config(args.config, args.set)
    root = Path(args.data_root) if args.data_root else common.data_root()
    data = prepare_data(cfg, root)
    k = len(data.class_names)
    x_s, y_s, x_t = data.source_train.images, data.source_train.labels, data.target.images
    b = cfg.train.batch_size

    def stream():
        return iter(train_dataset(x_s, y_s, x_t, batch_size=b, seed=cfg.seed,
                                  augment=cfg.data.augment, use_target=True))

    keras.utils.set_random_seed(cfg.seed)
    run = common.build_run(cfg, k)
    it = stream()

    def ours(n: int) -> None:  # as the training loop runs it, host sync included
        for _ in range(n):
            bool(common.one_step(run, it, run.weights)["finite"])

    methods = {"ours DDC (MMD)": ours}
    if not args.no_adapt:
        try:
            bench_adapt.import_adapt()
        except Exception as e:  # say why, profile ours alone
            print(f"note: ADAPT not profiled: {type(e).__name__}: {e}", file=sys.stderr)
        else:
            keras.utils.set_random_seed(cfg.seed)
            model, _, _ = bench_adapt.adapt_model("DeepCORAL", cfg, k, x_t)
            onehot = np.eye(k, dtype=np.float32)[y_s]
            methods["ADAPT DeepCORAL"] = lambda n: bench_adapt.adapt_fit(model, x_s, onehot, b, n)

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.logdir) if args.logdir else Path(tmp)
        ms = {}
        for i, (name, fn) in enumerate(methods.items()):
            fn(args.warmup)
            ms[name] = profile(fn, args.steps, base / f"m{i}")
    names = list(ms)
    share = {n: shares(ms[n]) for n in names}
    types = sorted(set().union(*[share[n] for n in names]),
                   key=lambda t: -max(share[n].get(t, 0.0) for n in names))
    rows = [[t, *[c for n in names for c in (f"{ms[n].get(t, 0.0):.2f}",
                                              f"{share[n].get(t, 0.0):.1f}")]]
            for t in types[:args.top]]
    rows.append(["(all convolutions: *Conv2D*)",
                 *[c for n in names for c in (
                     f"{sum(v for t, v in ms[n].items() if CONV in t):.2f}",
                     f"{sum(v for t, v in share[n].items() if CONV in t):.1f}")]])
    heads = ["op type", *[h for n in names for h in (f"{n} ms/step", f"{n} % of op time")]]
    out = [common.header(f"Op self time per step: {Path(args.config).stem}, batch {b}+{b}",
                         __file__, argv),
           f"{args.steps} profiled steps per method after {args.warmup} warm-up steps; "
           f"{cfg.model.backbone}, {cfg.data.image_size} px", "",
           common.table(heads, rows)]
    text = "\n".join(out) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
