"""A run's parts: data arrays, network, alignment terms and evaluation (``Run``), and the
trainability, optimizer, traced step and checkpoint of one training stage (``Stage``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import tensorflow as tf

from ddc import paths
from ddc.align import needs_target, network_layers
from ddc.config import Config
from ddc.data.prepare import RunData
from ddc.data.views import D4, ViewedImages, augment_views
from ddc.metrics import softmax
from ddc.models import apply_freeze, build_network, resolve_weights, variable_counts
from ddc.models.adabn import cached_statistics, statistics_applied
from ddc.models.split import split_at_frozen_prefix
from ddc.selection import DEV_FOLDS, dev, per_sample_cross_entropy
from ddc.train.build import backbone_lr_mult, build_step, build_terms
from ddc.train.distribute import make_strategy, worker_index
from ddc.train.evaluate import logits_report, predict_arrays, tta_report
from ddc.train.feature_cache import FeatureCache, image_keys, weights_identity
from ddc.train.keras_internals import seed_states
from ddc.train.rundir import RunError
from ddc.train.step import predict_fn

log = logging.getLogger("ddc.train.loop")


def _pooled_stats(stats) -> dict:
    """``FeatureCache.stats()`` of several caches (AdaBN: the source's and the target's) as one:
    counts and seconds summed, the rate recomputed, the first cache's batch size and folder."""
    stats = list(stats)
    out = dict(stats[0])
    for k in ("extracted", "from_cache"):
        out[k] = sum(st[k] for st in stats)
    for k in ("extract_compute_s", "extract_total_s"):
        out[k] = round(sum(st[k] for st in stats), 3)
    out["extract_images_per_s"] = (round(out["extracted"] / out["extract_compute_s"], 1)
                                   if out["extracted"] and out["extract_compute_s"] > 0 else None)
    return out


class Stage:
    """Trainability, optimizer, traced step and checkpoint of one training stage.

    Two-stage finetuning (``train.head_only_steps``) rebuilds all four at the switch: the traced
    step and the optimizer capture the trainable-variable list when built.
    """

    def __init__(self, run: "Run", head_only: bool):
        cfg, net = run.cfg, run.net
        if head_only:
            net.backbone.trainable = False
        else:
            apply_freeze(net.backbone, cfg.model.freeze)
        model = run.train_model
        slow = net.backbone.trainable_variables
        self.optimizer, self.step = build_step(cfg, model, net.backbone, run.terms, run.step_var,
                                               lr_mult=run.backbone_lr_mult, taps=run.taps,
                                               strategy=run.strategy)
        # the full network is saved in every mode, so any checkpoint restores a whole model
        # Each stage saves its optimizer under its own key: a main-stage restore from the
        # checkpoint written at the switch then starts a fresh optimizer, as the uninterrupted
        # run does, instead of loading the head-only optimizer's slots by position.
        opt_key = "head_optimizer" if head_only else "optimizer"
        ckpt = tf.train.Checkpoint(model=net.model, step=run.step_var,
                                   skipped_steps=run.skipped_var, rng=seed_states(net.model),
                                   align={t.name: t.state() for t in run.terms},
                                   **{opt_key: self.optimizer})
        self.manager = tf.train.CheckpointManager(ckpt, str(run.ckpt_dir),
                                                  max_to_keep=cfg.train.keep_checkpoints)
        self.checkpoint = ckpt
        counts = variable_counts(model)
        own = [v for t in run.terms for v in t.trainable_variables]
        counts["alignment_params"] = int(sum(int(tf.size(v)) for v in own))
        cached = ""
        if run.bottom is not None:  # mode "features": the cached frozen part is frozen too
            part = variable_counts(run.bottom)
            counts["frozen_variables"] += part["trainable_variables"] + part["frozen_variables"]
            n = part["trainable_params"] + part["frozen_params"]
            counts["frozen_params"] += n
            counts["cached_frozen_params"] = n
            cached = f", {n} of them in the frozen part whose output is cached"
        log.info("stage %s: %d trainable variables (%d params), %d frozen (%d params%s)%s%s",
                 "head only" if head_only else "main", counts["trainable_variables"],
                 counts["trainable_params"], counts["frozen_variables"], counts["frozen_params"],
                 cached,
                 f"; alignment terms' own: {len(own)} variables ({counts['alignment_params']} "
                 "params)" if own else "",
                 f"; backbone lr x{run.backbone_lr_mult:g}" if slow else "")
        self.counts = counts


class Run:
    """A run's data arrays, network, alignment terms and evaluation.

    ``arrays``: the network's inputs of each split (images, or in mode "features" the frozen
    part's output for the identity view); ``train_arrays`` / ``train_views``: what the training
    stream draws from (in mode "features" with ``data.augment``, ``[N, V, ...]`` features of
    the V views ``train_views[k]``); ``tta_arrays``: the eight D4 views of source validation and
    target for ``train.tta``. ``setup``: the seconds and counts of feature extraction.
    """

    def __init__(self, cfg: Config, workdir: Path, data: RunData, weights_root: Path | None,
                 cache_dir: Path | None = None):
        self.cfg, self.workdir, self.data = cfg, workdir, data
        t = cfg.train
        self.features_mode = cfg.mode == "features"
        self.loss_scale = t.precision == "mixed_float16"
        self.strategy = make_strategy(t.distribute)
        replicas = self.strategy.num_replicas_in_sync
        if t.batch_size % replicas:
            raise RunError(f"train.batch_size: {t.batch_size} is not a multiple of the "
                           f"{replicas} replicas of train.distribute={t.distribute}")
        worker = worker_index() if t.distribute == "multi_worker" else None
        self.is_chief = worker is None
        self.ckpt_dir = workdir / ("checkpoints" if self.is_chief else f".worker{worker}")
        weights = resolve_weights(cfg.model.weights, weights_root, cfg.model.backbone)
        shape = (cfg.data.image_size, cfg.data.image_size, cfg.data.channels)
        classes = len(data.class_names)
        self.taps = network_layers(cfg.align)  # layers terms read
        with self.strategy.scope():
            self.net = build_network(cfg.model, shape, classes, weights, self.taps)
        self.terms = build_terms(cfg, self.net, classes, self.strategy)
        self.use_target = needs_target(self.terms)
        gpus = tf.config.list_logical_devices("GPU")
        log.info("devices: %s; distribution: %s, %d replica(s), global batch %d + %d; "
                 "alignment: %s", f"{len(gpus)} GPU(s)" if gpus else "CPU only (no GPU found)",
                 t.distribute, replicas, t.batch_size, t.batch_size if self.use_target else 0,
                 ", ".join(f"{tm.name} (weight {tm.options.weight:g}, {tm.options.schedule})"
                           for tm in self.terms) or "none (source only)")
        with self.strategy.scope():
            self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.skipped_var = tf.Variable(0, dtype=tf.int64, trainable=False,
                                           name="skipped_steps")
        self.backbone_lr_mult = backbone_lr_mult(cfg, weights)
        self.bottom, self.setup = None, {}
        splits = ("source_train", "source_val", "target")
        aug = augment_views(cfg.data.augment)
        if self.features_mode:
            apply_freeze(self.net.backbone, cfg.model.freeze)
            self.bottom, self.train_model, cut = split_at_frozen_prefix(self.net)
            self._extract(cut, weights, cache_dir, aug)
        else:
            self.train_model = self.net.model
            self.arrays = {k: getattr(data, k).images for k in splits}
            self.train_arrays = {k: self.arrays[k] for k in ("source_train", "target")}
            self.train_views = {"source_train": None, "target": None}
            self.tta_arrays = ({k: [ViewedImages(self.arrays[k], v) for v in D4]
                                for k in ("source_val", "target")} if t.tta else {})
        self.predict = predict_fn(self.train_model, t.jit_compile)

    def _extract(self, cut: str, weights, cache_dir: Path | None, aug: tuple) -> None:
        """Mode "features": the frozen part's output of every split and view it needs, from
        the disk cache (``ddc.train.feature_cache``) or extracted into it."""
        cfg, d = self.cfg, self.cfg.data
        t0 = time.perf_counter()
        tta = D4 if cfg.train.tta else (0,)
        views = {"source_train": aug, "source_val": tta,
                 "target": tuple(dict.fromkeys((0,) + aug + tta))}
        describe = {"backbone": cfg.model.backbone, "alpha": cfg.model.alpha,
                    "weights": weights_identity(weights), "cut": cut,
                    "image_size": d.image_size, "channels": d.channels}
        root = None
        if d.feature_cache:  # the loop passes paths.cache_dir(data.cache_dir) too
            root = Path(cache_dir) if cache_dir else paths.cache_dir(d.cache_dir)
        cache = FeatureCache(self.bottom, self.net.preprocess, root, describe)
        log.info("feature-extractor mode: the output of %s (%s) for %s; cache %s", cut,
                 "x".join(map(str, cache.item_shape)),
                 ", ".join(f"{k} {len(v)} view(s)" for k, v in views.items()),
                 cache.folder or "off (data.feature_cache)")
        if cfg.model.adabn:  # each domain on BatchNorm statistics of its own images
            stacked, caches = {}, []
            for domain, splits, images in (
                    ("source", ("source_train", "source_val"), self.data.source_train.images),
                    ("target", ("target",), self.data.target.images)):
                stats = cached_statistics(self.bottom, self.net.preprocess, images,
                                          cache.batch_size, root / "adabn" if root else None,
                                          cache.key + "".join(image_keys(images)))
                with statistics_applied(self.bottom, stats):  # (its key hashes the statistics)
                    caches.append(FeatureCache(self.bottom, self.net.preprocess, root,
                                               {**describe, "batch_norm": f"{domain} (AdaBN)"}))
                    stacked.update({k: caches[-1].features(getattr(self.data, k).images,
                                                           views[k], desc=f"{k} (AdaBN)")
                                    for k in splits})
            log.info("AdaBN: the source's and the target's features each on BatchNorm "
                     "statistics of its own images (%d layers)", len(stats))
        else:
            caches = [cache]
            stacked = {k: cache.features(getattr(self.data, k).images, v, desc=k)
                       for k, v in views.items()}
        self.arrays = {k: a[:, 0] for k, a in stacked.items()}  # view 0: the image itself
        train = ("source_train", "target")
        self.train_arrays = {k: stacked[k] if len(aug) > 1 else self.arrays[k] for k in train}
        self.train_views = {k: views[k] if len(aug) > 1 else None for k in train}
        self.tta_arrays = ({k: [stacked[k][:, views[k].index(v)] for v in D4]
                            for k in ("source_val", "target")} if cfg.train.tta else {})
        self.setup = {**_pooled_stats(c.stats() for c in caches),
                      "extract_time_s": round(time.perf_counter() - t0, 3)}
        s = self.setup
        speed = (f" ({s['extract_images_per_s']:.1f} images/s, batches of up to "
                 f"{s['extract_batch_size']})" if s["extract_images_per_s"] else "")
        log.info("features: %d views extracted%s, %d read from the cache, in %.1f s",
                 s["extracted"], speed, s["from_cache"], s["extract_time_s"])

    def evaluate(self, step: int, final: bool = False) -> dict:
        """The evaluation record of ``step``: source validation and target accuracies, the
        label-free scores of the target predictions and, with ``final`` (the run's last
        evaluation; it costs a few seconds), DEV (``ddc.selection.dev``)."""
        names = self.data.class_names
        t = self.cfg.train
        has_val = len(self.data.source_val) > 0
        if has_val:
            val_logits, val_feats = predict_arrays(self.predict, self.arrays["source_val"],
                                                   t.eval_batch_size)
            val = logits_report(val_logits, self.data.source_val.labels, names)
        else:
            val = None
        tgt_logits, tgt_feats = predict_arrays(self.predict, self.arrays["target"],
                                               t.eval_batch_size)
        tgt = logits_report(tgt_logits, self.data.target.labels, names)
        dev_risk = None
        if final and has_val and min(len(val_logits), len(tgt_logits)) >= 2 * DEV_FOLDS:
            dev_risk = dev(val_feats, per_sample_cross_entropy(
                val_logits, self.data.source_val.labels), tgt_feats, seed=self.cfg.seed)
        rec = {"step": step,
               "source_val_acc": val["accuracy"] if val else None,
               "source_val_mean_class_acc": val["mean_class_accuracy"] if val else None,
               "target_entropy": tgt["entropy"],
               "target_snd": tgt["snd"],
               "target_bnm": tgt["bnm"],
               "target_im": tgt["im"],
               # source labels and target features, no target label; lower is better
               "source_val_dev": dev_risk,
               "target_acc": tgt["accuracy"],
               "target_mean_class_acc": tgt["mean_class_accuracy"],
               "_target_report": tgt,
               # saved by the run's last evaluation (``final``) only
               "_target_probs": softmax(tgt_logits) if final else None}
        if t.tta:  # softmax averaged over the eight D4 views
            val_tta = (tta_report(self.predict, self.tta_arrays["source_val"],
                                  self.data.source_val.labels, names, t.eval_batch_size)
                       if len(self.data.source_val) else None)
            tgt_tta = tta_report(self.predict, self.tta_arrays["target"],
                                 self.data.target.labels, names, t.eval_batch_size)
            rec.update({"source_val_acc_tta": val_tta["accuracy"] if val_tta else None,
                        "target_acc_tta": tgt_tta["accuracy"],
                        "target_mean_class_acc_tta": tgt_tta["mean_class_accuracy"],
                        "_target_report_tta": tgt_tta})
        return rec
