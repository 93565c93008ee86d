"""Our DDC step against ADAPT's ``DeepCORAL`` and ``DANN``: images/s and target accuracy.

ADAPT (``adapt`` 0.4.5) is installed for this benchmark only, never a project dependency::

    pip install --no-deps adapt==0.4.5 && pip install scipy scikit-learn cvxopt
    pip install --no-deps scikeras       # --no-deps: keeps the pinned keras/tensorflow

Setup (same for all three methods): the config's network (default ``configs/usps_mnist_ddc.json``:
USPS -> MNIST, 28 px grey, LeNet + Dense(256) ReLU adaptation layer, batch 64 + 64, Adam
lr 5e-4) built from the same seed. ADAPT gets the network split as ``encoder`` = image ->
adaptation features (preprocessing, backbone, adaptation layer; the very layers of our network)
and ``task`` = the logits layer, one-hot labels and ``CategoricalCrossentropy(from_logits=True)``,
``copy=False``, the same Adam settings for each of its optimizers (task, encoder,
discriminator), ``lambda_`` = 1 for DeepCORAL and ADAPT's default 0.1 for DANN with its default
discriminator (two Dense(10) ReLU layers and a sigmoid unit). Ours: ``TrainStep`` with the
config's alignment terms (``align.mmd``: Gaussian, biased, lambda from the config), built by
``ddc.train.build``, fed by ``train_dataset``.

Speed: alternating blocks after a warm-up round; ADAPT is timed inside ``fit`` from the end of
its first batch to the end of its last (its own tf.data input, as a user runs it), ours as the
training loop runs (next batch, step, host sync). Images per step: B source + B target for all.

Accuracy: each method trains ``--acc-steps`` steps per seed (ADAPT: repeated ``fit`` calls of at
most one epoch each, since ``fit`` does not reset the model; ours: each term's weight and the
training progress per step as the training loop computes them for a run of ``--acc-steps``
steps) and is scored on all target images.

    nice -n 5 python benchmarks/bench_adapt.py             # USPS -> MNIST
    python benchmarks/bench_adapt.py --seeds 0 --batch-sizes 8,16,32,128   # speed by batch size
    python benchmarks/bench_adapt.py --config demo --repeats 1 --steps 1 --acc-steps 2 --seeds 1
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402  (first: sets up paths and TF logging)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ddc.data.pipeline import eval_batches, train_dataset  # noqa: E402
from ddc.data.prepare import prepare_data  # noqa: E402
from ddc.train.schedules import progress_at, term_weights  # noqa: E402
from ddc.train.step import predict_fn  # noqa: E402


warnings.filterwarnings("ignore", message=".*shuffle=True. was passed.*")


def import_adapt():
    """(DeepCORAL, DANN), or raises ImportError with the reason."""
    from adapt.feature_based import DANN, DeepCORAL
    return DeepCORAL, DANN


def split_network(net) -> tuple[keras.Model, keras.Model]:
    """(encoder: image -> adaptation features, task: features -> logits) made of our network's
    own layers. The encoder is rebuilt from the head's layers rather than cut out of
    ``net.model``: a cut would contain the whole nested head, logits layer included, and ADAPT's
    encoder optimizer would then also update the logits."""
    image = keras.Input(net.model.inputs[0].shape[1:], dtype=net.model.inputs[0].dtype)
    x = net.backbone(net.preprocess(image))
    for layer in net.head.layers[1:]:
        if layer.name == "logits":
            break
        x = layer(x)
    encoder = keras.Model(image, x, name="encoder")
    task = keras.Sequential([keras.Input((int(x.shape[-1]),)), net.head.get_layer("logits")],
                            name="task")
    return encoder, task


def adapt_model(kind: str, cfg, num_classes: int, target_images: np.ndarray):
    DeepCORAL, DANN = import_adapt()
    net = common.build_net(cfg, num_classes)[0]
    encoder, task = split_network(net)
    kw = dict(encoder=encoder, task=task, Xt=target_images, copy=False, verbose=0,
              random_state=None, optimizer=keras.optimizers.Adam(cfg.train.lr),
              loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    if kind == "DeepCORAL":
        model = DeepCORAL(lambda_=1.0, **kw)
    else:
        model = DANN(lambda_=0.1, **kw)
    return model, encoder, task


def adapt_fit(model, x_s, y_onehot, batch: int, steps: int, callbacks=()):
    """``steps`` ADAPT training steps: ``fit`` calls of at most one epoch each."""
    per_epoch = math.ceil(max(len(x_s), len(model.Xt)) / batch)
    done = 0
    while done < steps:
        n = min(per_epoch, steps - done)
        model.fit(x_s, y_onehot, epochs=1, batch_size=batch, steps_per_epoch=n, verbose=0,
                  callbacks=list(callbacks))
        done += n
    return done


def accuracy(predict, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    preds = []
    for start, x in eval_batches(images, batch):
        logits = predict(x)
        n = min(batch, len(images) - start)
        preds.append(np.argmax(np.asarray(logits)[:n], axis=1))
    return float(np.mean(np.concatenate(preds) == labels))


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="usps_mnist_ddc")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-root", default=None, help="default: $DDC_DATA_ROOT or ../shared/data")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds")
    p.add_argument("--steps", type=int, default=20, help="timed steps per block")
    p.add_argument("--acc-steps", type=int, default=300, help="training steps per accuracy run")
    p.add_argument("--seeds", type=int, default=3, help="accuracy runs per method (0: none)")
    p.add_argument("--batch-sizes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="also time speed at these batch sizes (comma-separated), one table")
    p.add_argument("--steps-per-call", type=int, default=10,
                   help="also time ours with train.steps_per_call = N (1: not)")
    args = p.parse_args(argv)
    cfg = common.load_config(args.config, args.set)
    name = Path(args.config).stem
    root = Path(args.data_root) if args.data_root else common.data_root()
    try:
        import_adapt()
    except Exception as e:  # record exactly what fails
        text = (common.header(f"ADAPT comparison: {name}", __file__, argv)
                + f"\nadapt does not import: {type(e).__name__}: {e}\n")
        print(text)
        return text

    data = prepare_data(cfg, root)
    k = len(data.class_names)
    src, tgt = data.source_train, data.target
    x_s, y_s, x_t, y_t = src.images, src.labels, tgt.images, tgt.labels
    onehot = np.eye(k, dtype=np.float32)[y_s]
    b = cfg.train.batch_size

    def stream(seed, batch=b):
        return iter(train_dataset(x_s, y_s, x_t, batch_size=batch, seed=seed,
                                  augment=cfg.data.augment, use_target=True))

    def speed(batch: int) -> tuple[dict, int, str]:
        """Images/s per round of every method at batch ``batch`` + ``batch``; (ips, steps, note).
        One fit call per ADAPT block: at most one epoch."""
        cfg_b = common.load_config(args.config, args.set + [f"train.batch_size={batch}"])
        steps = args.steps
        per_epoch = math.ceil(max(len(x_s), len(x_t)) / batch)
        if steps + 1 > per_epoch:
            print(f"note: --steps {steps} cut to {per_epoch - 1} at batch {batch} "
                  "(one ADAPT epoch per block)")
            steps = per_epoch - 1
        if args.steps_per_call > 1 and steps % args.steps_per_call:
            steps = max(args.steps_per_call, steps - steps % args.steps_per_call)
            print(f"note: --steps set to {steps} at batch {batch}, a multiple of "
                  "--steps-per-call")
        keras.utils.set_random_seed(cfg_b.seed)
        ours = common.build_run(cfg_b, k)
        blocks = {"ours DDC (MMD)": common.step_block(ours, stream(cfg_b.seed, batch), steps,
                                                      ours.weights)}
        if args.steps_per_call > 1:
            keras.utils.set_random_seed(cfg_b.seed)
            multi = common.build_run(cfg_b, k)
            blocks[f"ours DDC (MMD), {args.steps_per_call} steps per call"] = \
                common.multi_step_block(multi, stream(cfg_b.seed, batch), steps, multi.weights,
                                        args.steps_per_call)
        for kind in ("DeepCORAL", "DANN"):
            keras.utils.set_random_seed(cfg_b.seed)
            model, _, _ = adapt_model(kind, cfg_b, k, x_t)
            timer = common.BatchTimer()

            def block(model=model, timer=timer):
                adapt_fit(model, x_s, onehot, batch, steps + 1, [timer])
                return timer.seconds

            blocks[f"ADAPT {kind}"] = block
        times = common.alternate(blocks, args.repeats, warmup=1)
        return ({n: [2 * batch * steps / t for t in ts] for n, ts in times.items()}, steps,
                ours.note)

    sweep = {}
    for batch in sorted(set(args.batch_sizes or []) - {b}):
        sweep[batch] = speed(batch)[0]
        print(f"batch {batch}+{batch} done", file=sys.stderr, flush=True)
    ips, args.steps, note = speed(b)
    sweep[b] = ips
    refs = [n for n in ips if n.startswith("ours")]  # ours, and ours with steps per call
    rows = []
    for n, v in ips.items():
        cells = []
        for ref in refs:
            r = common.ratios(ips[ref], v)
            cells.append("1" if n == ref else f"{r.mean:.2f} ± {r.std:.2f}")
        rows.append([n, f"{common.Stats(v).median:.1f}", common.Stats(v).fmt(1), *cells])

    # ---- accuracy at an equal number of steps
    acc = {n: [] for n in ips}
    t_acc = time.perf_counter()
    for seed in range(args.seeds):
        cfg_s = common.load_config(args.config, args.set + [f"seed={seed}"])
        keras.utils.set_random_seed(seed)
        run = common.build_run(cfg_s, k)
        it = stream(seed)
        for i in range(args.acc_steps):  # as the loop runs a run of acc_steps steps
            common.one_step(run, it, term_weights(run.terms, i, args.acc_steps),
                            progress_at(i, args.acc_steps))
        pred = predict_fn(run.net.model)
        acc["ours DDC (MMD)"].append(accuracy(lambda x: pred(x)[0], x_t, y_t))
        for kind in ("DeepCORAL", "DANN"):
            keras.utils.set_random_seed(seed)
            model, encoder, task = adapt_model(kind, cfg_s, k, x_t)
            adapt_fit(model, x_s, onehot, b, args.acc_steps)
            f = tf.function(lambda x, e=encoder, t=task: t(e(x, training=False), training=False))
            acc[f"ADAPT {kind}"].append(accuracy(f, x_t, y_t))
    t_acc = time.perf_counter() - t_acc
    for row in rows:
        same = "same as ours DDC (same steps)" if "steps per call" in row[0] else None
        row.append(same or (common.Stats(acc[row[0]]).fmt(4) if args.seeds else "not run"))

    out = [common.header(f"Our DDC step vs ADAPT DeepCORAL and DANN: {name}, batch {b}+{b}",
                         __file__, argv),
           f"source {src.name}: {len(src)} images; target: {len(tgt)} images; {k} classes; "
           f"{cfg.model.backbone}, {cfg.data.image_size} px"
           + (f"; {note}" if note else ""), "",
           common.table(["method", "median images/s", "images/s mean ± std",
                         *[f"{ref.replace('ours DDC (MMD)', 'ours')} / this (images/s, paired)"
                           for ref in refs],
                         f"target acc after {args.acc_steps} steps ({args.seeds} seeds)"], rows),
           "", f"Speed: {args.repeats} rounds of {args.steps} steps; accuracy runs took "
               f"{t_acc:.0f} s in all."]
    if len(sweep) > 1:
        adapt_names = [n for n in ips if n.startswith("ADAPT")]
        heads = [f"{ref.replace('ours DDC (MMD)', 'ours')} / {a.replace('ADAPT ', '')}"
                 for ref in refs for a in adapt_names]
        srows = [[f"{bs}+{bs}", f"{common.Stats(v[refs[0]]).median:.1f}",
                  *[common.ratios(v[ref], v[a]).fmt(2) for ref in refs for a in adapt_names]]
                 for bs, v in sorted(sweep.items())]
        out += ["", f"#### By batch size (images/s ratios, paired rounds; {args.repeats} rounds "
                    "per batch size)", "",
                common.table(["batch", "ours median images/s", *heads], srows)]
    text = "\n".join(out) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
