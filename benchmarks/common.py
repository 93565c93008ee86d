"""Shared helpers of the speed benchmarks: header, timing, statistics, tables, step building.

Every benchmark measures side by side: its variants run in alternating blocks (A, B, A, B, ...)
after a warm-up, so slow drifts of a shared machine's load hit all of them alike, and it reports
per-round ratios (A_i / B_i) next to mean ± std and median of each variant.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dataclasses  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ddc import config as ddc_config  # noqa: E402
from ddc.align import network_layers  # noqa: E402
from ddc.models import apply_freeze, build_network, resolve_weights  # noqa: E402
from ddc.train.build import backbone_lr_mult, build_step, build_terms  # noqa: E402
from ddc.train.step import TrainStep  # noqa: E402

CONFIGS = REPO / "configs"
SHARED = REPO.parent / "shared"


def data_root() -> Path:
    return Path(os.environ.get("DDC_DATA_ROOT", SHARED / "data"))


def weights_root() -> Path:
    return Path(os.environ.get("DDC_WEIGHTS_ROOT", SHARED / "weights"))


# ----------------------------------------------------------------------------- header

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line(script: str, args: list[str] | None = None) -> str:
    """The command that runs ``script`` with ``args`` (default: this process's arguments), with
    ``nice -n N`` when this process is niced."""
    args = sys.argv[1:] if args is None else args
    try:
        script = str(Path(script).resolve().relative_to(REPO))
    except ValueError:
        pass
    cmd = "python " + " ".join(shlex.quote(a) for a in [script, *args])
    niceness = os.nice(0)
    return f"nice -n {niceness} {cmd}" if niceness else cmd


def header(title: str, script: str, args: list[str] | None = None) -> str:
    """Markdown lines: title, exact command, machine, versions, load (the machine is shared)."""
    gpus = tf.config.list_physical_devices("GPU")
    try:
        load = "%.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        load = "n/a"
    return "\n".join([
        f"### {title}",
        "",
        f"- command: `{command_line(script, args)}`",
        f"- machine: nproc={os.cpu_count()}, CPU: {cpu_model()}"
        + (f", GPU: {', '.join(g.name for g in gpus)}" if gpus else ", no GPU"),
        f"- versions: tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"python {platform.python_version()}",
        f"- load average at start (1/5/15 min): {load}; date: {time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ])


# ----------------------------------------------------------------------------- statistics

@dataclass
class Stats:
    values: list

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def fmt(self, digits: int = 1) -> str:
        """``mean ± std`` at ``digits`` decimals."""
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def ratios(a: list, b: list) -> Stats:
    """Per-round ratios a_i / b_i (paired: measured back to back)."""
    return Stats([x / y for x, y in zip(a, b)])


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; cells are formatted with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_tables(text: str) -> list[list[dict]]:
    """Every markdown table in ``text``, as lists of row dicts keyed by the header (for tests)."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.strip().startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            tables.append([dict(zip(block[0], row)) for row in block[2:]])
        block = []
    return tables


def number(cell: str) -> float:
    """The leading number of a table cell such as ``12.3 ± 0.4``, ``1.05x`` or ``0.2 -> 0.1``."""
    return float(cell.replace("x", " ").split()[0])


# ----------------------------------------------------------------------------- timing

def alternate(blocks: dict[str, Callable[[], float]], repeats: int,
              warmup: int = 1) -> dict[str, list[float]]:
    """Runs every block ``warmup`` times, then ``repeats`` rounds of all blocks in turn.

    Args:
        blocks: name -> callable that runs one timed block and returns its seconds.
        repeats: rounds; round ``r`` runs the blocks in the order given, rotated by ``r``
            (A, B, C; B, C, A; C, A, B; ...), so that no block always runs first (right after
            the other blocks' Python garbage, or a pause) or last.
        warmup: untimed rounds first (tracing, compilation, caches), in the order given.

    Returns:
        name -> list of ``repeats`` seconds, in round order.
    """
    for _ in range(warmup):
        for fn in blocks.values():
            fn()
    names = list(blocks)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(blocks[name]())
    return out


def sync(value) -> None:
    """Waits until ``value`` (a tensor or a structure of tensors) has been computed."""
    leaves = [v for v in tf.nest.flatten(value) if hasattr(v, "numpy")]
    if leaves:
        leaves[0].numpy()


class BatchTimer(keras.callbacks.Callback):
    """Times ``fit``: seconds from the end of its first batch to the end of its last one.

    Each batch end reads the loss back (a host sync, as our loop does once per step), so the
    interval covers the computation of batches 2..N.
    """

    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        value = logs.get("loss", next(iter(logs.values()), None))
        if value is not None:
            np.asarray(value)
        self.ends.append(time.perf_counter())

    @property
    def seconds(self) -> float:
        return self.ends[-1] - self.ends[0]

    @property
    def timed_steps(self) -> int:
        return len(self.ends) - 1


# ----------------------------------------------------------------------------- building runs

def load_config(name_or_path: str, overrides: list[str] | None = None) -> ddc_config.Config:
    """A shipped config by name (``demo``, ``siri_whu``) or a path, with ``--set`` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIGS / f"{name_or_path}.json"
    return ddc_config.load(path, overrides or [])


def resolve_weights_or_none(cfg: ddc_config.Config) -> tuple[str | None, str]:
    """(weights, note): the configured weights file, or None with a note when it is absent
    (speed does not depend on the weight values)."""
    try:
        return resolve_weights(cfg.model.weights, weights_root()), ""
    except ddc_config.ConfigError:
        return None, f"weights file {cfg.model.weights} not found: random init"


def source_only(cfg: ddc_config.Config) -> ddc_config.Config:
    """``cfg`` with no alignment term (``align={}``): the finetune / source-only run."""
    return dataclasses.replace(cfg, align={})


@dataclass
class Run:
    """A network with its freeze, alignment terms, optimizer and traced step, built by
    ``ddc.train.build`` as the training loop builds them."""
    cfg: ddc_config.Config
    net: object
    optimizer: object
    step: TrainStep
    step_var: tf.Variable
    terms: list
    note: str
    done: int = 0  # steps run through ``one_step`` / ``multi_step_block`` (the step index)

    @property
    def use_target(self) -> bool:
        """Whether the target batch goes through the network (some term needs it)."""
        return self.step.use_target

    @property
    def weights(self) -> list[float]:
        """Each term's weight λ, its schedule not applied (a step's time does not depend on
        the values): what a benchmark step passes as ``weights``."""
        return [float(t.options.weight) for t in self.terms]

    @property
    def images_per_step(self) -> int:
        return self.cfg.train.batch_size * (2 if self.use_target else 1)


def build_net(cfg: ddc_config.Config, num_classes: int):
    """(network with the config's freeze applied, the extra layers its terms read, the resolved
    weights or None, note). The global precision policy must already be
    ``cfg.train.precision``."""
    weights, note = resolve_weights_or_none(cfg)
    shape = (cfg.data.image_size, cfg.data.image_size, cfg.data.channels)
    taps = network_layers(cfg.align)
    net = build_network(cfg.model, shape, num_classes, weights, taps)
    apply_freeze(net.backbone, cfg.model.freeze)
    return net, taps, weights, note


def build_run(cfg: ddc_config.Config, num_classes: int, *, jit_compile: bool | None = None,
              fused: bool = True, replace_terms: dict | None = None) -> Run:
    """Network, freeze, the config's alignment terms, optimizer and ``TrainStep``, built by
    ``ddc.train.build`` (``fused=False``: Keras's own optimizer update instead of the fused
    kernels). ``replace_terms``: term name -> an ``AlignTerm`` class built instead of the
    registered one, with the same options (e.g. a term whose loss is 0). A source-only run is
    ``build_run(source_only(cfg), ...)``."""
    net, taps, weights, note = build_net(cfg, num_classes)
    terms = build_terms(cfg, net, num_classes)
    for i, term in enumerate(terms):
        cls = (replace_terms or {}).get(term.name)
        if cls is not None:
            terms[i] = cls(term.options, num_classes=term.num_classes, seed=term.seed)
            terms[i].build(term.feature_dim)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    opt, step = build_step(cfg, net.model, net.backbone, terms, step_var,
                           lr_mult=backbone_lr_mult(cfg, weights), taps=taps, fused=fused,
                           jit_compile=jit_compile)
    return Run(cfg, net, opt, step, step_var, terms, note)


def random_batches(cfg: ddc_config.Config, num_classes: int, count: int = 4,
                   seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``count`` random ``(x_s uint8, labels int32, x_t uint8)`` batches of the config's shape
    (a step's time does not depend on pixel values)."""
    rng = np.random.default_rng(seed)
    b, s, c = cfg.train.batch_size, cfg.data.image_size, cfg.data.channels
    return [(rng.integers(0, 256, (b, s, s, c), dtype=np.uint8),
             rng.integers(0, num_classes, b).astype(np.int32),
             rng.integers(0, 256, (b, s, s, c), dtype=np.uint8)) for _ in range(count)]


def batch_dataset(batches) -> tf.data.Dataset:
    """An infinite prefetched tf.data stream cycling over ``batches``."""
    xs, ys, xt = (np.stack(a) for a in zip(*batches))
    return tf.data.Dataset.from_tensor_slices((xs, ys, xt)).repeat().prefetch(tf.data.AUTOTUNE)


def one_step(run: Run, batches_iter, weights: list[float], progress: float = 0.0) -> dict:
    """One training step as the loop runs it: next batch, the step (each term at its weight in
    ``weights``, training progress ``progress``, the step's index), the step counter. Returns
    the step's outputs (not yet read back: ``bool(out["finite"])`` is the loop's host sync)."""
    x_s, y_s, x_t = next(batches_iter)
    out = run.step(x_s, y_s, x_t, weights, progress, run.done)
    run.step_var.assign_add(1)
    run.done += 1
    return out


def step_block(run: Run, batches_iter, steps: int, weights: list[float]) -> Callable[[], float]:
    """A block of ``steps + 1`` steps as the training loop runs them (``one_step`` and the host
    sync); returns the seconds of the last ``steps`` (the first one only primes)."""

    def block() -> float:
        t0 = None
        for _ in range(steps + 1):
            bool(one_step(run, batches_iter, weights)["finite"])
            if t0 is None:
                t0 = time.perf_counter()
        return time.perf_counter() - t0

    return block


def multi_step_block(run: Run, batches_iter, steps: int, weights: list[float],
                     per_call: int) -> Callable[[], float]:
    """Like ``step_block`` with ``train.steps_per_call = per_call``: ``steps / per_call`` calls
    of ``TrainStep.steps`` (batches read inside the graph; one host sync per call) after one
    priming call; returns their seconds."""
    if steps % per_call:
        raise ValueError(f"steps ({steps}) must be a multiple of steps per call ({per_call})")
    per_step, progress = [list(weights)] * per_call, [0.0] * per_call

    def block() -> float:
        t0 = None
        for _ in range(steps // per_call + 1):
            m = run.step.steps(batches_iter, per_step, progress, run.step_var)
            run.done += per_call
            bool(m["finite"].numpy().all())
            if t0 is None:
                t0 = time.perf_counter()
        return time.perf_counter() - t0

    return block


def check_finite(run: Run, batches_iter, weights: list[float]) -> bool:
    return bool(one_step(run, batches_iter, weights)["finite"])
