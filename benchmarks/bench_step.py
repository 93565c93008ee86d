"""Images/s of our training step against Keras ``model.fit`` on the same model, data and batch.

Variants, all in one process, alternating block by block after a warm-up round:

* ``ours finetune``: the config with ``align={}`` (no term: source batches only), its
  ``TrainStep`` built by ``ddc.train.build``, fed as the training loop feeds it (next batch
  from a tf.data iterator, step, step counter, host sync each step).
* ``fit finetune``: a functional Keras model with the same layers (image -> logits), compiled
  with an identical optimizer (``ddc.train.build.build_step``'s: same class, schedule, backbone
  lr multiplier) and sparse cross-entropy on the logits, ``jit_compile=False``, ``fit`` over a
  tf.data stream of the same uint8 batches (``steps_per_epoch``, ``epochs=1``, verbose 0).
* ``ours DDC``: the config's step (its ``mmd`` term, required) at the config's lambda.
* ``fit DDC``: a ``keras.Model`` subclass wrapping the same kind of network, whose
  ``train_step`` computes cross-entropy + lambda * L over the same built alignment terms (the
  ``mmd`` term: ``ddc.losses.mmd2``, the config's settings).
* ``ours DDC, MMD = 0``: the DDC step with the ``mmd`` term's loss replaced by 0
  (``bench_mmd.MMDReplacedByZero``; its time difference to ``ours DDC`` is the MMD's marginal
  cost inside the step).
* ``ours DDC XLA``: the DDC step with ``jit_compile=True``.
* ``MMD alone``: the biased Gaussian MMD² forward + backward on [B, 256] features, per step.

Each block times ``steps`` steps after one priming step (``fit``: from the end of its first batch
to the end of its last, reading the loss back at every batch as our loop does). Images are
counted as the step sees them: B per finetune step, 2B (source + target) per DDC step.
Ratios are per round (paired), mean ± std over the rounds.

    nice -n 5 python benchmarks/bench_step.py                      # MobileNetV2, 32+32
    python benchmarks/bench_step.py --config demo --repeats 2 --steps 1 --no-xla
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402  (first: sets up paths and TF logging)
from benchmarks.bench_mmd import NUM_CLASSES, WITHOUT_MMD, mmd_block, require_mmd  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ddc.align import StepInputs  # noqa: E402


class DDCFitModel(keras.Model):
    """DDC as a ``fit``-able Keras model: ``x = (x_s, x_t)``, ``y = labels_s``;
    loss = mean sparse cross-entropy on the source logits + sum_i w_i * L_i over built
    alignment terms without variables of their own (DDC: lambda * MMD²(f_s, f_t))."""

    def __init__(self, net_model: keras.Model, terms: list, weights: list, **kwargs):
        super().__init__(**kwargs)
        if any(t.trainable_variables for t in terms):
            raise ValueError("DDCFitModel: terms with variables of their own are not trained "
                             "by this train_step")
        self.net, self._terms, self._lams = net_model, tuple(terms), tuple(map(float, weights))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True  # the wrapped network is built; nothing to infer from data

    def call(self, inputs, training=False):
        if isinstance(inputs, (tuple, list)):
            inputs = tf.concat(list(inputs), axis=0)
        return self.net(inputs, training=training)[0]

    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, data):
        (x_s, x_t), y = data
        n = tf.shape(x_s)[0]
        with tf.GradientTape() as tape:
            logits, features = self.net(tf.concat([x_s, x_t], axis=0), training=True)[:2]
            ce = keras.losses.sparse_categorical_crossentropy(y, logits[:n], from_logits=True)
            f, lg = tf.cast(features, tf.float32), tf.cast(logits, tf.float32)
            inputs = StepInputs(f[:n], f[n:], lg[:n], lg[n:], y, tf.constant(0.0),
                                tf.constant(0, tf.int64))
            loss = tf.reduce_mean(ce)
            for term, lam in zip(self._terms, self._lams):
                loss += lam * term(inputs)[0]
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def fit_model(cfg, num_classes: int, ddc: bool) -> keras.Model:
    """A freshly built network (same seed, freeze, terms and optimizer as ours: ``cfg``'s DDC
    run, or its source-only run) compiled for ``fit``."""
    keras.utils.set_random_seed(cfg.seed)
    run = common.build_run(cfg if ddc else common.source_only(cfg), num_classes)
    net, opt = run.net, run.optimizer
    if ddc:
        model = DDCFitModel(net.model, run.terms, run.weights)
        model.compile(optimizer=opt, jit_compile=False)
    else:
        model = keras.Model(net.model.inputs, net.model.outputs[0])
        model.compile(optimizer=opt,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=False)
    return model


def fit_block(model: keras.Model, ds: tf.data.Dataset, steps: int):
    timer = common.BatchTimer()

    def block() -> float:
        model.fit(ds, steps_per_epoch=steps + 1, epochs=1, verbose=0, shuffle=False,
                  callbacks=[timer])
        return timer.seconds

    return block


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="siri_whu_ddc")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds")
    p.add_argument("--steps", type=int, default=5, help="timed steps per block")
    p.add_argument("--no-xla", action="store_true", help="skip the jit_compile=True variant")
    args = p.parse_args(argv)
    cfg = common.load_config(args.config, args.set)
    name = Path(args.config).stem
    k = NUM_CLASSES.get(name, 10)
    require_mmd(cfg, "bench_step", name)
    mmd_opts, b = cfg.align["mmd"], cfg.train.batch_size
    data = common.batch_dataset(common.random_batches(cfg, k))
    ft_ours = data.map(lambda xs, y, xt: (xs, y, xt[:0]))  # the loop's source-only stream
    ft_fit = data.map(lambda xs, y, xt: (xs, y))
    ddc_fit = data.map(lambda xs, y, xt: ((xs, xt), y))

    variants = {}  # name -> (block, images per step)
    notes = set()

    def ours(label, run_cfg, **kw):
        keras.utils.set_random_seed(cfg.seed)
        run = common.build_run(run_cfg, k, **kw)
        notes.add(run.note)
        it = iter(data if run.use_target else ft_ours)
        variants[label] = (common.step_block(run, it, args.steps, run.weights),
                           run.images_per_step)

    ours("ours finetune", common.source_only(cfg))
    variants["fit finetune"] = (fit_block(fit_model(cfg, k, False), ft_fit, args.steps), b)
    ours("ours DDC", cfg)
    variants["fit DDC"] = (fit_block(fit_model(cfg, k, True), ddc_fit, args.steps), 2 * b)
    ours("ours DDC, MMD = 0", cfg, replace_terms=WITHOUT_MMD)
    if not args.no_xla:
        ours("ours DDC XLA", cfg, jit_compile=True)
    mmd = mmd_block(b, cfg.model.adapt_width or 256, mmd_opts.kernel, mmd_opts.estimator,
                    args.steps)
    variants["MMD alone"] = (lambda: mmd() * args.steps, 2 * b)

    times = common.alternate({n: v[0] for n, v in variants.items()}, args.repeats, warmup=1)
    ips = {n: [variants[n][1] * args.steps / t for t in ts] for n, ts in times.items()}
    rows = []
    for n, vals in ips.items():
        s = common.Stats(vals)
        ms = common.Stats([t / args.steps * 1e3 for t in times[n]])
        rows.append([n, variants[n][1], f"{s.median:.1f}", s.fmt(1), ms.fmt(1)])
    out = [common.header(f"Training step vs keras fit: {name}, batch {b}+{b}", __file__, argv),
           common.table(["variant", "images/step", "median images/s", "images/s mean ± std",
                         "ms/step mean ± std"], rows), ""]

    def ratio_row(label, a, c, target=None, scale=1.0, digits=3):
        r = common.Stats([x / y * scale for x, y in zip(a, c)])
        ok = "" if target is None else ("yes" if target(r.mean) else "NO")
        return [label, f"{r.mean:.{digits}f} ± {r.std:.{digits}f}", f"{r.median:.{digits}f}", ok]

    t = times
    rrows = [
        ratio_row("finetune: ours / fit (images/s)", ips["ours finetune"], ips["fit finetune"],
                  lambda v: v >= 0.95),
        ratio_row("DDC: ours / fit with DDC train_step (images/s)", ips["ours DDC"],
                  ips["fit DDC"]),
        ratio_row("DDC step time / finetune step time (ours)", t["ours DDC"],
                  t["ours finetune"]),
        ratio_row("MMD share of the DDC step, isolated (%)", t["MMD alone"], t["ours DDC"],
                  lambda v: v < 5.0, scale=100.0, digits=2),
        ratio_row("MMD share of the DDC step, in-step Δ (%)",
                  [a - c for a, c in zip(t["ours DDC"], t["ours DDC, MMD = 0"])], t["ours DDC"],
                  lambda v: v < 5.0, scale=100.0, digits=2),
    ]
    if "ours DDC XLA" in ips:
        rrows.append(ratio_row("DDC: ours XLA / ours no XLA (images/s)", ips["ours DDC XLA"],
                               ips["ours DDC"]))
    out += [f"Paired per-round ratios over {args.repeats} rounds of {args.steps} steps:", "",
            common.table(["comparison", "mean ± std", "median", "meets target"], rrows)]
    notes.discard("")
    if notes:
        out.append("\nnote: " + "; ".join(sorted(notes)))
    text = "\n".join(out) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
