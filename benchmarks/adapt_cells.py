"""One ADAPT method (DANN, CDAN or MDD) on one seed of a mode "features" config, for the grid.

``benchmarks/accuracy.py`` calls :func:`run_adapt_cell` next to its own cells, so that ADAPT's
methods and ours train side by side in the same run of the grid, on the same frozen features,
for the same number of steps and the same seeds. ADAPT (``adapt`` 0.4.5) is a benchmark-only
package, never a project dependency (CI does not install it)::

    pip install --no-deps adapt==0.4.5 && pip install scipy scikit-learn cvxopt
    pip install --no-deps scikeras       # --no-deps: keeps the pinned keras/tensorflow

What is the same as our run of the config:

* data: ``prepare_data`` of the config, with ``seed`` as ``cfg.seed`` (the same stratified
  source train/validation split by seed, all target images);
* features: the frozen backbone's pooled output of the identity view of every image of
  source_train, source_val and target, read from the library's disk cache
  (``ddc.train.feature_cache``: the same folder, model key and entries as our run's
  ``Run._extract``, extracted into it where missing), so they are bit-identical to what our head
  trains on. The network is built as ``Run`` builds it (``keras.utils.set_random_seed(seed)``,
  ``prepare_data``, ``build_network``, ``apply_freeze``, ``split_at_frozen_prefix``), so ADAPT's
  encoder and task start from the very initial weights of our head (``tests/test_adapt_cells.py``
  checks both against ``Run``);
* networks: ADAPT's ``encoder`` is our head up to the adaptation layer (for the grid's configs
  ``Dense(adapt_width)`` + ReLU on the pooled features), its ``task`` our logits layer
  ``Dense(num_classes)``;
* optimizer: the config's (SGD lr 0.01 momentum 0.9 and weight decay, or Adam) for each of
  ADAPT's three optimizers (task, encoder, discriminator), each with the config's learning-rate
  schedule. ADAPT takes Keras optimizers, so the ``inv`` schedule is kept: each optimizer's
  learning rate is ``ddc.train.optim.progress_lr`` of the config at the optimizer's own
  ``iterations``, which equal the step count since each applies once per step (no constant-lr
  fallback was needed);
* steps and batches: ``cfg.train.steps`` gradient steps of ``cfg.train.batch_size`` source +
  ``cfg.train.batch_size`` target examples each. ADAPT's ``fit`` counts epochs and does not reset
  the model, so it is called repeatedly with ``steps_per_epoch`` of at most one of its epochs
  (as ``bench_adapt.adapt_fit``); the optimizer's ``iterations`` are checked to equal the steps;
* λ: ``lambda_ = 1`` for all three (the grid's λ of our adversarial terms; ``--lambda`` or
  ``run_adapt_cell(..., lambda_=)`` for another). ADAPT's own defaults are 0.1 for DANN and MDD
  and 1 for CDAN. ADAPT's MDD at λ = 1 collapses on SIRI-WHU -> AID (its domain loss saturates
  at 4 x -log(EPS) within 50 steps, the adaptation layer's ReLUs die and one class is
  predicted for every image: ``target_predicted_classes`` = 1); at 0.1 it trains;
* evaluation: argmax of ADAPT's ``predict`` on the target features (all target images) and on
  the source validation features, scored with ``ddc.metrics.classification_report`` as our runs
  are; ``target_entropy`` and ``target_snd`` are the same label-free scores of its softmax.

Where ADAPT differs from our setup (its own design, kept as a user gets it):

* ``task`` ends with a softmax and is trained with ``CategoricalCrossentropy()`` on
  probabilities and one-hot labels (ours: softmax cross-entropy on logits). CDAN's multilinear
  map and entropy weights and MDD's argmax disparity read the task's output as probabilities,
  so ADAPT needs it; the argmax, hence every accuracy, is that of the logits;
* discriminators are ADAPT's defaults: DANN and CDAN two ``Dense(10)`` ReLU layers and a sigmoid
  unit (ours: 1024-1024 with dropout 0.5); CDAN's on the full 256 x K multilinear map (below
  ADAPT's ``max_features`` = 4096 for K <= 16, so no random projection) with its entropy
  weighting; MDD's adversarial head is a copy of the task with 1 % multiplicative noise,
  ``gamma`` = 4 (ours: an adversarial MLP head, margin 4);
* adversarial training by three optimizers in one step (encoder on task − λ·domain loss,
  discriminator on the domain loss), equivalent to a gradient reversal of constant coefficient
  λ from the first step: ADAPT has no warm-up of λ (ours ramps the reversal coefficient with
  DANN's schedule; ADAPT's ``UpdateLambda`` callback is not used);
* batches come from ADAPT's own input pipeline (each domain shuffled, the smaller one repeated
  to the larger one's length each epoch), not from our training stream: the same batch size
  and seed, but not the same draws; ``data.balance_source`` and ``data.augment`` are not
  applied (the identity view only);
* ADAPT's draws (discriminator init, its pipeline's shuffles, MDD's noise) start from
  ``keras.utils.set_random_seed(seed)`` once the features are in hand, so they do not depend on
  whether the features were extracted or read from the cache; with ``deterministic`` in the
  config op determinism is enabled as our runs do;
* float32 only, one device (``train.precision``, ``train.distribute``, ``steps_per_call`` and
  ``jit_compile`` are ignored, except that a non-float32 precision is refused); the whole
  backbone must be frozen (``model.freeze`` whose cached part is the pooled output).

From the command line (one process, the cells one after the other; run directories under
``--runs``, not committed)::

    nice -n 10 python benchmarks/adapt_cells.py --config configs/grid/siri_whu_aid.json \
        --set 'model.freeze.mode="backbone"' --seeds 0,1,2

``train_time_s`` is the wall time of the ``fit`` calls (their tracing included, as our runs'
``train_time_s`` includes the step's), ``setup_time_s`` that of data and features (decoding or
the image cache, building the network, extraction or the feature cache), ``eval_time_s`` the
predictions and scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"

ADAPT_METHODS = ("dann", "cdan", "mdd")
LAMBDA = 1.0  # the grid's λ of our adversarial terms, for all three ADAPT methods
_CLASSES = {"dann": "DANN", "cdan": "CDAN", "mdd": "MDD"}


def available() -> str | None:
    """None if ADAPT's DANN, CDAN and MDD import, else the reason."""
    try:
        from adapt.feature_based import CDAN, DANN, MDD  # noqa: F401
    except Exception as e:  # ImportError, or a Keras incompatibility at import time
        return f"adapt does not import: {type(e).__name__}: {e}"
    return None


def adapt_version() -> str | None:
    try:
        return importlib.metadata.version("adapt")
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- data, features

@dataclasses.dataclass
class CellInputs:
    """What one ADAPT cell trains on: the run's data, the frozen features of its splits (the
    identity view), the network built as our run builds it, and the setup's costs."""
    data: object              # ddc.data.prepare.RunData
    features: dict            # split -> float32 [N, F]
    net: object               # ddc.models.Network (its head: our initial head)
    setup: dict               # seconds and counts
    cache_key: str


def prepare_inputs(cfg, data_root=None, weights_root=None) -> CellInputs:
    """Data and frozen features of ``cfg`` exactly as ``Run`` gets them in mode "features"
    (``cfg.seed`` is the seed: the caller sets it). Call under the float32 policy."""
    import keras
    import tensorflow as tf

    from ddc import paths
    from ddc.data.prepare import prepare_data
    from ddc.models import apply_freeze, build_network, resolve_weights
    from ddc.models.split import split_at_frozen_prefix
    from ddc.train.feature_cache import FeatureCache, weights_identity

    if cfg.mode != "features":
        raise ValueError(f"run_adapt_cell needs a mode \"features\" config; got mode {cfg.mode!r}")
    if cfg.train.precision != "float32":
        raise ValueError(f"run_adapt_cell trains in float32 only; got train.precision="
                         f"{cfg.train.precision!r}")
    keras.utils.set_random_seed(cfg.seed)  # as train_and_evaluate, before data and network
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    t0 = time.perf_counter()
    data = prepare_data(cfg, paths.data_root(data_root), paths.cache_dir())
    decode_s = time.perf_counter() - t0
    weights = resolve_weights(cfg.model.weights, paths.weights_root(weights_root),
                              cfg.model.backbone)
    d = cfg.data
    shape = (d.image_size, d.image_size, d.channels)
    net = build_network(cfg.model, shape, len(data.class_names), weights)
    apply_freeze(net.backbone, cfg.model.freeze)
    bottom, _, cut = split_at_frozen_prefix(net)
    if cut != "pooled":
        raise ValueError(f"run_adapt_cell needs the whole backbone frozen (its cached part is "
                         f"the pooled output); model.freeze caches the output of {cut!r}")
    t1 = time.perf_counter()
    # the describe dict and cache folder of Run._extract: the same model key, the same entries
    describe = {"backbone": cfg.model.backbone, "alpha": cfg.model.alpha,
                "weights": weights_identity(weights), "cut": cut,
                "image_size": d.image_size, "channels": d.channels}
    root = paths.cache_dir(d.cache_dir) if d.feature_cache else None
    cache = FeatureCache(bottom, net.preprocess, root, describe)
    features = {k: cache.features(getattr(data, k).images, (0,), desc=k)[:, 0]
                for k in ("source_train", "source_val", "target")}
    s = cache.stats()
    setup = {"setup_time_s": round(time.perf_counter() - t0, 3),
             "decode_time_s": round(decode_s, 3),
             "extract_time_s": round(time.perf_counter() - t1, 3),
             "features_extracted": s["extracted"], "features_from_cache": s["from_cache"]}
    return CellInputs(data, features, net, setup, cache.key)


def split_head(net, num_classes: int):
    """(encoder: pooled features -> adaptation features, task: -> softmax probabilities), made
    of our head's own layers (its initial weights), as ``bench_adapt.split_network`` splits the
    whole network."""
    import keras

    head = net.head
    inp = keras.Input(head.inputs[0].shape[1:])
    x = inp
    for layer in head.layers[1:]:
        if layer.name == "logits":
            break
        x = layer(x)
    encoder = keras.Model(inp, x, name="encoder")
    z = keras.Input((int(x.shape[-1]),))
    probs = keras.layers.Activation("softmax", dtype="float32")(head.get_layer("logits")(z))
    task = keras.Model(z, probs, name="task")
    if probs.shape[-1] != num_classes:
        raise ValueError(f"the logits layer has {probs.shape[-1]} units for {num_classes} classes")
    return encoder, task


# ----------------------------------------------------------------------------- ADAPT

def _schedule(train_cfg):
    """The config's learning rate at the optimizer's own iterations (= steps taken)."""
    import keras
    import tensorflow as tf

    from ddc.train.optim import progress_lr

    class ConfigLR(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, iterations):
            return tf.cast(progress_lr(train_cfg, iterations), tf.float32)

        def get_config(self):
            return {"lr": train_cfg.lr, "schedule": train_cfg.lr_schedule,
                    "steps": train_cfg.steps}

    return ConfigLR()


def make_optimizer(train_cfg):
    """One optimizer with the config's settings (a fresh one per ADAPT network)."""
    import keras

    wd = train_cfg.weight_decay or None
    if train_cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=_schedule(train_cfg),
                                    momentum=train_cfg.momentum, weight_decay=wd)
    return keras.optimizers.Adam(learning_rate=_schedule(train_cfg), weight_decay=wd)


def adapt_model(method: str, cfg, encoder, task, target_features, lambda_: float = LAMBDA):
    """ADAPT's ``method`` on our encoder and task, ``lambda_`` (1), its default discriminator."""
    import keras
    from adapt import feature_based

    cls = getattr(feature_based, _CLASSES[method])
    t = cfg.train
    model = cls(encoder=encoder, task=task, Xt=target_features, lambda_=lambda_, copy=False,
                verbose=0, random_state=None,  # seeded globally: ADAPT re-seeds each fit
                optimizer_enc=make_optimizer(t), optimizer_disc=make_optimizer(t))
    # compiled here, not by ``fit``: given in __init__, ADAPT would rebuild the optimizer from
    # its config (it matches the model's ``name`` attribute to an optimizer argument), and a
    # Keras 3 optimizer cannot be rebuilt from a config holding a schedule. ``pretrain_`` is
    # what ``fit`` sets before compiling (none of these three methods pretrains).
    model.pretrain_ = False
    model.compile(optimizer=make_optimizer(t), loss=keras.losses.CategoricalCrossentropy())
    return model


def adapt_fit(model, x_s, y_onehot, batch: int, steps: int, callbacks: Sequence = ()) -> int:
    """``steps`` gradient steps: ``fit`` calls of at most one ADAPT epoch each (``fit`` extends
    the training). Returns the steps taken by ADAPT's task optimizer."""
    per_epoch = math.ceil(max(len(x_s), len(model.Xt)) / batch)
    done = 0
    while done < steps:
        n = min(per_epoch, steps - done)
        with warnings.catch_warnings():  # Keras on ADAPT's own (shuffled) tf.data input
            warnings.filterwarnings("ignore", message=".*shuffle=True. was passed.*")
            model.fit(x_s, y_onehot, epochs=1, batch_size=batch, steps_per_epoch=n, verbose=0,
                      callbacks=list(callbacks))
        done += n
    taken = int(model.optimizer.iterations.numpy())
    if taken != steps or int(model.optimizer_enc.iterations.numpy()) != steps:
        raise RuntimeError(f"ADAPT took {taken} steps, {steps} were asked for")
    return taken


def _scores(model, x, labels, names, batch: int) -> dict:
    from ddc.metrics import classification_report

    probs = model.predict(x, batch_size=batch, verbose=0)
    rep = classification_report(labels, probs.argmax(axis=1), names)
    return {"report": rep, "probs": probs}


def run_adapt_cell(method: str, cfg, seed: int, *, data_root=None, weights_root=None,
                   workdir: Path, callbacks: Sequence = (), lambda_: float = LAMBDA) -> dict:
    """Trains ADAPT's ``method`` (one of :data:`ADAPT_METHODS`) on seed ``seed`` of the mode
    "features" config ``cfg`` (``seed`` replaces ``cfg.seed``) and scores it on all target images.

    ``callbacks``: Keras callbacks given to every ``fit`` call (tests count steps with them).
    ``lambda_``: ADAPT's trade-off; the grid's 1 unless told (ADAPT's own defaults: DANN 0.1,
    CDAN 1, MDD 0.1).

    Returns (and writes to ``workdir/results.json``, atomically): ``target_acc``,
    ``target_mean_class_acc``, ``source_val_acc``, ``train_time_s`` (the fit),
    ``setup_time_s`` (data + features), ``steps``, ``method`` (``adapt_<method>``),
    ``adapt_version``, and details (seed, λ, lr schedule, counts, the feature cache's key).
    """
    if method not in ADAPT_METHODS:
        raise ValueError(f"method: expected one of {', '.join(ADAPT_METHODS)}; got {method!r}")
    reason = available()
    if reason:
        raise ImportError(reason)
    import keras
    import numpy as np

    from ddc.metrics import mean_entropy
    from ddc.selection import snd
    from ddc.train.rundir import write_json_atomic

    cfg = dataclasses.replace(cfg, seed=int(seed))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        inputs = prepare_inputs(cfg, data_root, weights_root)
        data, f = inputs.data, inputs.features
        names = data.class_names
        k = len(names)
        encoder, task = split_head(inputs.net, k)
        keras.utils.set_random_seed(cfg.seed)  # ADAPT's draws: the same whatever the cache held
        model = adapt_model(method, cfg, encoder, task, f["target"], lambda_)
        onehot = np.eye(k, dtype=np.float32)[data.source_train.labels]
        t0 = time.perf_counter()
        steps = adapt_fit(model, f["source_train"], onehot, cfg.train.batch_size,
                          cfg.train.steps, callbacks)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        b = cfg.train.eval_batch_size
        tgt = _scores(model, f["target"], data.target.labels, names, b)
        val = (_scores(model, f["source_val"], data.source_val.labels, names, b)["report"]
               if len(data.source_val) else None)
        probs = tgt["probs"].astype(np.float64)
        entropy = mean_entropy(np.log(np.clip(probs, 1e-30, None)))  # softmax(log p) = p
        nd = snd(probs) if len(probs) > 1 else None
        eval_s = time.perf_counter() - t1
        rep = tgt["report"]
        res = {
            "name": cfg.name,
            "method": f"adapt_{method}",
            "adapt_version": adapt_version(),
            "seed": cfg.seed,
            "steps": steps,
            "target_acc": rep["accuracy"],
            "target_mean_class_acc": rep["mean_class_accuracy"],
            "target_macro_f1": rep["macro_f1"],
            "target_per_class_acc": rep["per_class_accuracy"],
            "target_entropy": entropy,
            # 1 when the network collapsed to one class (ADAPT's MDD at λ = 1 does here)
            "target_predicted_classes": int(len(np.unique(probs.argmax(axis=1)))),
            "target_nonfinite_predictions": int((~np.isfinite(probs).all(axis=1)).sum()),
            "target_snd": nd,
            "source_val_acc": val["accuracy"] if val else None,
            "source_val_mean_class_acc": val["mean_class_accuracy"] if val else None,
            "train_time_s": round(train_s, 3),
            **inputs.setup,
            "eval_time_s": round(eval_s, 3),
            "lambda": float(lambda_),
            "optimizer": cfg.train.optimizer,
            "lr": cfg.train.lr,
            "lr_schedule": cfg.train.lr_schedule,
            "batch_size": cfg.train.batch_size,
            "classes": names,
            "source_train_images": len(data.source_train),
            "source_val_images": len(data.source_val),
            "target_images": len(data.target),
            "feature_cache_key": inputs.cache_key,
        }
        write_json_atomic(workdir / "results.json", res)
        return res
    finally:
        keras.mixed_precision.set_global_policy(before)
        keras.backend.clear_session()  # one process runs the whole grid


# ----------------------------------------------------------------------------- command line

def _fmt(values: list, scale: float = 100.0, digits: int = 1) -> str:
    v = [x * scale for x in values if x is not None]
    if not v:
        return "n/a"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.{digits}f} ± {sd:.{digits}f}"


def main(argv: list[str] | None = None) -> str:
    import shlex

    from ddc.config import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs/grid/siri_whu_aid.json"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--methods", default=",".join(ADAPT_METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lambda", dest="lambda_", type=float, default=LAMBDA,
                   help=f"ADAPT's lambda_ for every method (default {LAMBDA:g}, the grid's)")
    p.add_argument("--runs", default=str(REPO / "runs/adapt_cells"),
                   help="folder of the run directories (a run output: not committed)")
    p.add_argument("--data-root", default=os.environ.get("DDC_DATA_ROOT", str(SHARED / "data")))
    p.add_argument("--weights-root",
                   default=os.environ.get("DDC_WEIGHTS_ROOT", str(SHARED / "weights")))
    args = p.parse_args(argv)
    reason = available()
    if reason:
        raise SystemExit(reason)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(x) for x in args.seeds.split(",")]
    stem = Path(args.config).stem
    argv = sys.argv[1:] if argv is None else list(argv)
    niceness = os.nice(0)
    command = ((f"nice -n {niceness} " if niceness else "") + "python benchmarks/adapt_cells.py "
               + " ".join(shlex.quote(a) for a in argv)).strip()
    rows = []
    t_all = time.time()
    for method in methods:
        res = []
        for seed in seeds:
            cfg = load(args.config, list(args.overrides) + [f"seed={seed}"])
            t0 = time.time()
            r = run_adapt_cell(method, cfg, seed, data_root=args.data_root,
                               weights_root=args.weights_root,
                               workdir=Path(args.runs) / stem / f"{method}_lam{args.lambda_:g}"
                               / f"seed{seed}", lambda_=args.lambda_)
            r["total_wall_s"] = round(time.time() - t0, 3)
            res.append(r)
            print(f"[adapt_cells] {method} seed {seed}: target {r['target_acc']:.4f}, source val "
                  f"{r['source_val_acc']:.4f}, {r['steps']} steps, train {r['train_time_s']:.1f}"
                  f" s, setup {r['setup_time_s']:.1f} s ({r['features_extracted']} views "
                  f"extracted, {r['features_from_cache']} from the cache), total "
                  f"{r['total_wall_s']:.1f} s; {r['target_predicted_classes']} classes predicted",
                  file=sys.stderr, flush=True)
        rows.append((method, res))
    head = ["method", "target acc %", "target mean class acc %", "source val acc %",
            "train s (per seed)", "setup s (per seed)", "steps", "classes predicted"]
    lines = [f"### ADAPT on {stem} (adapt {adapt_version()}, λ = {args.lambda_:g}, seeds "
             f"{', '.join(map(str, seeds))})", "", f"    {command}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, res in rows:
        lines.append("| " + " | ".join([
            f"adapt_{method}", _fmt([r["target_acc"] for r in res]),
            _fmt([r["target_mean_class_acc"] for r in res]),
            _fmt([r["source_val_acc"] for r in res]),
            ", ".join(f"{r['train_time_s']:.1f}" for r in res),
            ", ".join(f"{r['setup_time_s']:.1f}" for r in res),
            "/".join(sorted({str(r["steps"]) for r in res})),
            ", ".join(str(r["target_predicted_classes"]) for r in res)]) + " |")
    r0 = rows[0][1][0]
    lines += ["", f"{r0['source_train_images']} source train, {r0['source_val_images']} source "
              f"validation, {r0['target_images']} target images, {len(r0['classes'])} classes; "
              f"{time.time() - t_all:.0f} s in all"]
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
