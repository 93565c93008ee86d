"""A run's parts: data arrays, network, alignment terms and evaluation (``Run``), and the
trainability, optimizer, traced step and checkpoint of one training stage (``Stage``)."""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf

from ddc.align import needs_target, network_layers
from ddc.config import Config
from ddc.data.prepare import RunData
from ddc.models import apply_freeze, build_network, resolve_weights, variable_counts
from ddc.models.split import split_at_frozen_prefix
from ddc.train.build import backbone_lr_mult, build_step, build_terms
from ddc.train.distribute import make_strategy, worker_index
from ddc.train.evaluate import evaluate_arrays, extract_features
from ddc.train.keras_internals import seed_states
from ddc.train.rundir import RunError
from ddc.train.step import predict_fn

log = logging.getLogger("ddc.train.loop")


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
        log.info("stage %s: %d trainable variables (%d params), %d frozen (%d params)%s%s",
                 "head only" if head_only else "main", counts["trainable_variables"],
                 counts["trainable_params"], counts["frozen_variables"], counts["frozen_params"],
                 f"; alignment terms' own: {len(own)} variables ({counts['alignment_params']} "
                 "params)" if own else "",
                 f"; backbone lr x{run.backbone_lr_mult:g}" if slow else "")
        self.counts = counts


class Run:
    def __init__(self, cfg: Config, workdir: Path, data: RunData, weights_root: Path | None):
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
        if self.features_mode:
            apply_freeze(self.net.backbone, cfg.model.freeze)
            bottom, self.train_model, cut = split_at_frozen_prefix(self.net)
            log.info("feature-extractor mode: caching the output of %s", cut)
            self.arrays = {k: extract_features(bottom, self.net.preprocess, getattr(data, k).images,
                                               t.eval_batch_size, desc=k)
                           for k in ("source_train", "source_val", "target")}
        else:
            self.train_model = self.net.model
            self.arrays = {k: getattr(data, k).images for k in ("source_train", "source_val", "target")}
        self.predict = predict_fn(self.train_model, t.jit_compile)

    def evaluate(self, step: int) -> dict:
        names = self.data.class_names
        t = self.cfg.train
        val = (evaluate_arrays(self.predict, self.arrays["source_val"], self.data.source_val.labels,
                               names, t.eval_batch_size) if len(self.data.source_val) else None)
        tgt = evaluate_arrays(self.predict, self.arrays["target"], self.data.target.labels, names,
                              t.eval_batch_size)
        return {"step": step,
                "source_val_acc": val["accuracy"] if val else None,
                "source_val_mean_class_acc": val["mean_class_accuracy"] if val else None,
                "target_entropy": tgt["entropy"],
                "target_acc": tgt["accuracy"],
                "target_mean_class_acc": tgt["mean_class_accuracy"],
                "_target_report": tgt}
