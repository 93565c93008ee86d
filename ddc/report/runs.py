"""Loading a trained run: config, class names, network, a restored checkpoint, and its data.

A run directory (see ``ddc/train/rundir.py``) holds ``config.json``, ``results.json`` and
``checkpoints/ckpt-<step>``; in every mode (``train`` and ``features``) the checkpoint holds
``model`` (the full ``net.model``), the optimizer and the step. Loading rebuilds the network from
the config and restores the model part only, checking that every model variable was found in
the file.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddc import paths
from ddc.config import Config, ConfigError, DomainConfig, from_dict
from ddc.data.domains import Domain, load_domain
from ddc.data.images import DataError

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^ckpt-(\d+)\.index$")


class ReportError(ValueError):
    """A run or checkpoint that cannot be reported on; the message names the path."""


@dataclass
class LoadedRun:
    """A run rebuilt from its directory.

    Attributes:
        workdir: the run directory.
        cfg: the run's resolved config.
        class_names: the K class names, in the order of the logits.
        net: the network (``net.model(images) -> (logits, features)``).
        checkpoint: the restored checkpoint path; None for the initial weights.
        step: the training step of that checkpoint (0 for the initial weights).
        results: ``results.json`` of the run, or None if the run has not finished.
    """
    workdir: Path
    cfg: Config
    class_names: list
    net: object
    checkpoint: str | None
    step: int
    results: dict | None

    @property
    def image_shape(self) -> tuple:
        return (self.cfg.data.image_size, self.cfg.data.image_size, self.cfg.data.channels)

    def predict(self, images: np.ndarray, batch_size: int | None = None):
        """Logits float32 [N, K] and adaptation-layer features float32 [N, A] of uint8 images."""
        from ddc.train.evaluate import predict_arrays
        from ddc.train.step import predict_fn

        if not hasattr(self, "_predict"):
            self._predict = predict_fn(self.net.model)
        bs = batch_size or self.cfg.train.eval_batch_size
        if len(images) == 0:
            k, a = len(self.class_names), int(self.net.model.outputs[1].shape[-1])
            return np.zeros((0, k), np.float32), np.zeros((0, a), np.float32)
        return predict_arrays(self._predict, images, bs)


def read_json(path: Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None


def load_target_probs(workdir: str | Path) -> np.ndarray | None:
    """float32 [N, K]: the run's final target softmax predictions (``ddc.paths.TARGET_PROBS``),
    or None if it has none (a run from before they were saved: ``ddc.train.rescore``
    recomputes them).

    Raises:
        ReportError: the file is not a 2-d array of probabilities.
    """
    path = Path(workdir) / paths.TARGET_PROBS
    if not path.exists():
        return None
    try:
        probs = np.load(path).astype(np.float32)
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: not a saved array ({e})") from None
    if probs.ndim != 2:
        raise ReportError(f"{path}: expected target probabilities [N, K], got shape {probs.shape}")
    return probs


def read_config(workdir: str | Path) -> Config:
    workdir = Path(workdir)
    data = read_json(workdir / "config.json")
    if data is None:
        raise ReportError(f"{workdir}: not a run directory (no config.json)")
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ReportError(f"{workdir / 'config.json'}: {e}") from None


def list_checkpoints(workdir: str | Path) -> dict[int, str]:
    """Step -> checkpoint path prefix of every checkpoint kept in ``workdir/checkpoints``."""
    ckdir = Path(workdir) / "checkpoints"
    if not ckdir.is_dir():
        return {}
    out = {}
    for p in ckdir.iterdir():
        m = _CKPT.match(p.name)
        if m:
            out[int(m.group(1))] = str(ckdir / f"ckpt-{m.group(1)}")
    return dict(sorted(out.items()))


def resolve_checkpoint(workdir: Path, which, results: dict | None) -> tuple[str | None, int]:
    """Turns ``which`` into (checkpoint path, step).

    ``which``: None or "latest"; "best" (the step of the best source validation accuracy, a
    label-free choice); "init" (no checkpoint: the initial weights); a step number; or a
    checkpoint path prefix.
    """
    if which == "init":
        return None, 0
    kept = list_checkpoints(workdir)
    if which is not None and not isinstance(which, int) and str(which) not in ("latest", "best") \
            and not str(which).isdigit():
        path = str(which)
        if not Path(path + ".index").exists():
            raise ReportError(f"checkpoint not found: {path} (expected {path}.index)")
        m = re.search(r"ckpt-(\d+)$", path)
        return path, int(m.group(1)) if m else -1
    if not kept:
        raise ReportError(f"{workdir}: no checkpoints in {workdir / 'checkpoints'}")
    if which in (None, "latest"):
        step = max(kept)
    elif which == "best":
        step = (results or {}).get("best_source_val_step")
        if step is None:
            raise ReportError(f"{workdir}: results.json has no best_source_val_step (unfinished "
                              "run, or no source validation split)")
    else:
        step = int(which)
    if step not in kept:
        raise ReportError(f"{workdir}: no checkpoint for step {step} (kept: "
                          f"{', '.join(map(str, kept))}; raise train.keep_checkpoints to keep more)")
    return kept[step], step


def _weights_root(weights_root) -> Path:
    return paths.weights_root(weights_root)


def load_run(workdir: str | Path, checkpoint=None, *, weights_root: str | Path | None = None,
             data_root: str | Path | None = None) -> LoadedRun:
    """Rebuilds a run's network and restores a checkpoint (see :func:`resolve_checkpoint`).

    Raises:
        ReportError: not a run directory, no such checkpoint, or a checkpoint that does not
            hold every variable of the network built from the config.
        ConfigError: the pretrained weights file "init" needs is missing.
    """
    import keras
    import tensorflow as tf

    from ddc.models import build_network, resolve_weights

    workdir = Path(workdir)
    cfg = read_config(workdir)
    results = read_json(workdir / "results.json")
    class_names = (results or {}).get("classes") or run_class_names(cfg, data_root)
    path, step = resolve_checkpoint(workdir, checkpoint, results)
    # The checkpoint holds every weight of the network: pretrained weights are only needed for
    # "init", and the run's seed gives the initial head the run drew.
    weights = None
    if path is None:
        weights = resolve_weights(cfg.model.weights, _weights_root(weights_root), cfg.model.backbone)
        keras.utils.set_random_seed(cfg.seed)
    net = build_network(cfg.model, (cfg.data.image_size,) * 2 + (cfg.data.channels,),
                        len(class_names), weights)
    if path is not None:
        try:
            status = tf.train.Checkpoint(model=net.model).restore(path)
            status.expect_partial()  # the optimizer and counters are not rebuilt here
            status.assert_existing_objects_matched()  # every model variable was in the file
        except (AssertionError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise ReportError(f"{path}: checkpoint does not match the network built from "
                              f"{workdir / 'config.json'} ({first})") from None
        log.info("restored %s (step %d)", path, step)
    return LoadedRun(workdir, cfg, list(class_names), net, path, step, results)


def run_class_names(cfg: Config, data_root=None) -> list:
    """The run's classes when results.json is missing: the shared classes of its two domains."""
    from ddc.data.prepare import data_root_from, prepare_data

    return prepare_data(cfg, data_root_from(data_root)).class_names


# ----------------------------------------------------------------------------- data

def _load(cfg: Config, dom: DomainConfig, key: str, data_root) -> Domain:
    from ddc.data.align import apply_class_map
    from ddc.data.prepare import data_root_from

    d = cfg.data
    cache_dir = paths.cache_dir(d.cache_dir)
    domain = load_domain(dom, key, data_root_from(data_root), d.image_size, d.channels,
                         cache=d.cache, cache_dir=cache_dir, workers=d.decode_workers,
                         skip_bad=d.skip_bad_files)
    return apply_class_map(domain, dom.class_map, key)


def to_run_classes(domain: Domain, class_names: list, key: str) -> Domain:
    """Keeps the images of ``domain`` whose class is one of the run's, labelled by the run's
    class indices (classes the run lacks are dropped and logged).

    Raises:
        DataError: no class in common.
    """
    lut = np.array([class_names.index(c) if c in class_names else -1
                    for c in domain.class_names], np.int32)
    extra = [c for c, i in zip(domain.class_names, lut) if i < 0]
    if len(extra) == len(domain.class_names):
        raise DataError(f"{key}: none of its classes ({', '.join(domain.class_names)}) is a class "
                        f"of the run ({', '.join(class_names)}); give a class map")
    if extra:
        log.warning("%s: dropping classes the run does not know: %s", key, ", ".join(extra))
    new = lut[domain.labels]
    sub = domain.subset(np.flatnonzero(new >= 0))
    sub.labels = new[new >= 0]
    sub.class_names = list(class_names)
    return sub


def load_eval_domain(run: LoadedRun, domain: str = "target", *, folder: str | Path | None = None,
                     class_map: dict | None = None, data_root=None) -> Domain:
    """The images to evaluate on, labelled by the run's class indices.

    Args:
        domain: ``target`` (the run's target, all of it), ``source_val`` or ``source_train``
            (the run's own seeded split of its source); ignored when ``folder`` is given.
        folder: another class-folder tree; ``class_map`` maps its folder names onto the run's
            class names (many-to-one allowed).
    """
    cfg = run.cfg
    if folder is not None:
        dom = DomainConfig(root=str(Path(folder).expanduser().resolve()), class_map=class_map or {})
        return to_run_classes(_load(cfg, dom, str(folder), data_root), run.class_names, str(folder))
    if domain == "target":
        return to_run_classes(_load(cfg, cfg.data.target, "data.target", data_root),
                              run.class_names, "data.target")
    if domain in ("source_val", "source_train"):
        from ddc.data.align import stratified_split

        src = load_source(run, data_root)
        train_idx, val_idx = stratified_split(src.labels, cfg.data.val_fraction, cfg.seed)
        idx = val_idx if domain == "source_val" else train_idx
        return src.subset(idx, domain)
    raise ReportError(f"unknown domain {domain!r} (expected target, source_val or source_train)")


def load_source(run: LoadedRun, data_root=None) -> Domain:
    """All of the run's source images (training and validation split), run class indices."""
    return to_run_classes(_load(run.cfg, run.cfg.data.source, "data.source", data_root),
                          run.class_names, "data.source")
