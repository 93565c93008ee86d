"""Accuracy benchmark: tasks x methods x seeds through the library code the CLI uses.

Every run is ``ddc.config.load(base, overrides)`` + ``ddc.train.train_and_evaluate`` (what
``scripts/train_ddc.py --config BASE --set ...`` does), in its own run directory under
``--runs``. The script writes ``docs/RESULTS.md`` (tables: target accuracy mean ± std over the
seeds, mean per-class accuracy, steps, wall time, the exact config) and ``<runs>/results.json``
(machine-readable, a run output: not committed; pass it to ``--reuse`` later).

Resumable: a run whose directory already holds ``results.json`` for the same config is read
back, not rerun. The run directory's name carries a hash of the config, so a changed config
(``--steps``, a new default) gets a new directory instead of clashing with the old one.

``--reuse FILE`` reads cells back from an earlier ``results.json`` (this script's output) when
their resolved config and seeds are identical: a grid grown by new cells can be reported whole
without rerunning the cells whose run directories are gone. The report marks each such cell and
names the file; run directories under ``--runs`` win over it. Leave ``--reuse`` out to rerun
everything.

Methods: source only (``align={}``), DDC (the ``mmd`` term) with each MMD² estimator, also at
extra λ, and every other method of ``ddc.align.REGISTRY`` at each λ of ``ALIGN_LAMBDAS``
(``--set 'align={"<name>": {"weight": λ}}'``): a newly registered term joins the grid as it is.

Hyperparameters are fixed in advance (the papers' defaults or the shipped configs); target labels
are read only for the final report (``target_acc`` of the final step, and the target accuracy at
the step of best source validation accuracy, a step chosen without target labels).

    nice -n 10 python benchmarks/accuracy.py                # the full grid -> docs/
    python benchmarks/accuracy.py --quick                   # a few minutes -> runs/accuracy-quick/
    python benchmarks/accuracy.py --only 'siri_whu_aid/frozen/*' --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared"
CONFIGS = REPO / "configs"


# ----------------------------------------------------------------------------- the grid

@dataclass(frozen=True)
class Task:
    """One adaptation task: a base config file and the freeze variants it is run with."""
    name: str
    title: str
    base: str                          # config file, relative to the repository
    overrides: list                    # --set overrides of every run of the task
    variants: dict                     # variant name ("" = none) -> list of --set overrides
    bar: str                           # what DDC must reach, in words
    min_ddc_acc: float | None = None   # DDC's mean target accuracy must reach this
    min_gain: float = 0.0              # DDC minus source only, mean over seeds, must exceed this
    extra_lambdas: tuple = ()          # DDC also run with these λ (besides the base config's)
    extra_lambda_variants: tuple = ("frozen",)  # ... in these variants (CPU budget)
    variant_methods: dict = field(default_factory=dict)  # variant -> the only methods it runs
    align_variants: tuple = ("",)      # variants that run every other registered method
    combo_variants: tuple = ()         # variants that run the pairs of COMBOS


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    overrides: list
    family: str = ""                   # the method without its λ (default: name)
    lam: float | None = None           # None: the base config's λ
    term: str = ""                     # the alignment term it runs, whose weight λ is ("": none)


# source only, and DDC (the ``mmd`` term) with each MMD² estimator at the base config's λ
METHODS = [
    Method("source_only", "source only (no alignment term)", ["align={}"]),
    Method("ddc_gauss_biased", "DDC, Gaussian multi-bandwidth, biased MMD²",
           ["align.mmd.kernel=\"gaussian\"", "align.mmd.estimator=\"biased\""], term="mmd"),
    Method("ddc_gauss_unbiased", "DDC, Gaussian multi-bandwidth, unbiased MMD²",
           ["align.mmd.kernel=\"gaussian\"", "align.mmd.estimator=\"unbiased\""], term="mmd"),
    Method("ddc_gauss_linear", "DDC, Gaussian multi-bandwidth, linear-time MMD²",
           ["align.mmd.kernel=\"gaussian\"", "align.mmd.estimator=\"linear\""], term="mmd"),
    Method("ddc_linear_kernel", "DDC, linear kernel (original DDC)",
           ["align.mmd.kernel=\"linear\""], term="mmd"),
]
# every other method of ``ddc.align.REGISTRY`` (a new term joins the grid by registering) runs
# alone with its default options at each of these λ: ``--set 'align={"<name>": {"weight": λ}}'``
ALIGN_LAMBDAS = (0.1, 1.0)
# --quick: one λ each, in the frozen MobileNetV2 variant only (cached features: seconds a run;
# a LeNet run through the whole network takes minutes on a shared CPU)
QUICK_ALIGN_LAMBDAS = (1.0,)
QUICK_ALIGN_VARIANTS = ("frozen",)


# pairs of terms, each at λ = 1 (MCC's and the other papers' default), where a task's
# ``combo_variants`` run them: name -> the align mapping
COMBOS = {
    "mmd+mcc": {"mmd": {"weight": 1.0}, "mcc": {"weight": 1.0}},
    "mcc+im": {"mcc": {"weight": 1.0}, "im": {"weight": 1.0}},
    "cdan_e+mcc": {"cdan": {"weight": 1.0, "entropy_conditioning": True}, "mcc": {"weight": 1.0}},
    "mcc+pseudo_label": {"mcc": {"weight": 1.0}, "pseudo_label": {"weight": 1.0}},
}


def combo_methods() -> list[Method]:
    return [Method(name, " + ".join(f"{t} (λ = {o['weight']:g})" for t, o in align.items()),
                   ["align=" + json.dumps(align)], family=name, term="+".join(align))
            for name, align in COMBOS.items()]


def _term_summary(name: str) -> str:
    """The first paragraph of the term module's docstring, without its ````name``:`` prefix."""
    import importlib
    import re

    from ddc.align import REGISTRY
    doc = importlib.import_module(REGISTRY[name].split(":")[0]).__doc__ or ""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    return re.sub(r"^``[^`]+``: ", "", text).rstrip(".") or name


def registry_methods(lambdas: tuple = ALIGN_LAMBDAS) -> list[Method]:
    """One method per registered term that METHODS does not already run (``mmd``: the DDC
    methods), and one per named option set of its ``variants`` (e.g. CDAN+E), at each λ of
    ``lambdas``; in the registry's order."""
    from ddc.align import REGISTRY, term_class
    covered = {m.term for m in METHODS}
    out = []
    for name in REGISTRY:
        if name in covered:
            continue
        for family, opts in [(name, {}), *term_class(name).variants.items()]:
            what = name if not opts else f"{name} with {json.dumps(opts)}"
            out += [Method(f"{family}_lam{lam:g}", f"{what}: {_term_summary(name)}, λ = {lam:g}",
                           ["align=" + json.dumps({name: {"weight": lam, **opts}})],
                           family=family, lam=lam, term=name)
                    for lam in lambdas]
    return out

# MobileNetV2 in mode "features": "frozen" trains only the head on the cached pooled features;
# "frozen_224" is the same at the backbone's native 224 px instead of 128 (better features for
# ~3x the one-off extraction); "last_blocks" caches the output of block_15_add and trains
# block_16, Conv_1 and the head, the backbone part at 0.1 x the learning rate (the base configs
# set train.backbone_lr_mult).
MOBILENET_VARIANTS = {
    "frozen": ["model.freeze.mode=\"backbone\""],
    "frozen_224": ["model.freeze.mode=\"backbone\"", "data.image_size=224"],
    "last_blocks": ["model.freeze.mode=\"until\"", "model.freeze.layer=\"block_15_add\""],
    # the frozen variants with the eight rotations and flips of each image (one drawn per sample
    # and step) and the target also evaluated on the softmax averaged over them (`target_acc_tta`)
    "frozen_d4": ["model.freeze.mode=\"backbone\"", "data.augment=\"d4\"", "train.tta=true"],
    "frozen_224_d4": ["model.freeze.mode=\"backbone\"", "data.image_size=224",
                      "data.augment=\"d4\"", "train.tta=true"],
}
# what the D4 variants run: source only, DDC, the methods that led the frozen grid, and the pairs
RECIPE_METHODS = ("source_only", "ddc_gauss_biased_lam1", "mcc_lam1", "im_lam1", "cdan_e_lam1",
                  "pseudo_label_lam1", *COMBOS)

TASKS = [
    # 1000 steps for every method (CPU budget); the config's own 3000 steps for source only and
    # the default DDC (variant "3000_steps")
    Task("usps_mnist", "USPS -> MNIST (10 classes, LeNet, 28 px; 1000 steps, and the config's "
         "3000 for two methods)", "configs/usps_mnist.json",
         ["data.cache=\"disk\"", "train.keep_checkpoints=1", "train.eval_batch_size=500",
          "train.steps=1000", "train.eval_every=250", "train.checkpoint_every=1000"],
         {"": [], "3000_steps": ["train.steps=3000", "train.eval_every=500",
                                 "train.checkpoint_every=3000"]},
         bar="DDC >= 0.90 and DDC > source only", min_ddc_acc=0.90,
         variant_methods={"3000_steps": ("source_only", "ddc_gauss_biased")}),
    Task("siri_whu_aid", "SIRI-WHU -> AID (11 shared classes, MobileNetV2, 128 px; frozen also "
         "at 224 px)",
         "configs/grid/siri_whu_aid.json", [], MOBILENET_VARIANTS,
         bar="DDC >= source only + 0.03", min_gain=0.03, extra_lambdas=(1.0, 4.0, 16.0),
         extra_lambda_variants=("frozen", "frozen_224", "frozen_d4", "frozen_224_d4"),
         align_variants=("frozen", "frozen_224", "frozen_d4", "frozen_224_d4"),
         combo_variants=("frozen", "frozen_224", "frozen_d4", "frozen_224_d4"),
         variant_methods={"frozen_d4": RECIPE_METHODS, "frozen_224_d4": RECIPE_METHODS}),
    # AID as the source is imbalanced (the merged residential class is 22% of it, against 9% of
    # SIRI-WHU): "frozen_balanced" draws its batches class-balanced (data.balance_source)
    Task("aid_siri_whu", "AID -> SIRI-WHU (11 shared classes, MobileNetV2, 128 px; frozen also "
         "at 224 px and with class-balanced source batches)",
         "configs/grid/aid_siri_whu.json", [],
         {**MOBILENET_VARIANTS,
          "frozen_balanced": MOBILENET_VARIANTS["frozen"] + ["data.balance_source=true"]},
         bar="DDC >= source only + 0.03", min_gain=0.03, extra_lambdas=(1.0, 4.0, 16.0),
         extra_lambda_variants=("frozen", "frozen_224", "frozen_balanced", "frozen_d4",
                                "frozen_224_d4"),
         align_variants=("frozen", "frozen_224", "frozen_balanced", "frozen_d4",
                         "frozen_224_d4"),
         combo_variants=("frozen", "frozen_224", "frozen_d4", "frozen_224_d4"),
         variant_methods={"frozen_d4": RECIPE_METHODS, "frozen_224_d4": RECIPE_METHODS}),
]
TASKS_BY_NAME = {t.name: t for t in TASKS}

# λ selection without target labels: among the λ a DDC method was run with, the largest whose
# mean source validation accuracy is at most this far below source only's (as much alignment as
# the source task tolerates)
SOURCE_VAL_TOLERANCE = 0.01


def methods_for(task: Task, variant: str | None = None, quick: bool = False) -> list[Method]:
    """The methods of ``task`` (in ``variant``; None: of any variant): METHODS, each DDC method
    again at each extra λ where the variant runs them, then the registry's other methods
    (``registry_methods``) where the variant runs them (if ``quick``: at
    ``QUICK_ALIGN_LAMBDAS``, in ``QUICK_ALIGN_VARIANTS``)."""
    out = list(METHODS)
    if variant is None or variant in task.extra_lambda_variants:
        for lam in task.extra_lambdas:
            out += [Method(f"{m.name}_lam{lam:g}", f"{m.title}, λ = {lam:g}",
                           m.overrides + [f"align.mmd.weight={lam}"], family=m.name, lam=lam,
                           term=m.term)
                    for m in METHODS if m.term == "mmd"]
    if variant is None or (variant in task.align_variants
                           and (not quick or variant in QUICK_ALIGN_VARIANTS)):
        out += registry_methods(QUICK_ALIGN_LAMBDAS if quick else ALIGN_LAMBDAS)
    if variant is None or (variant in task.combo_variants and not quick):
        out += combo_methods()
    if variant in task.variant_methods:
        out = [m for m in out if m.name in task.variant_methods[variant]]
    return out


def _method(task_name: str, method_name: str) -> Method:
    return next(m for m in methods_for(TASKS_BY_NAME[task_name]) if m.name == method_name)


def method_title(task_name: str, method_name: str) -> str:
    return _method(task_name, method_name).title


def method_family(task_name: str, method_name: str) -> str:
    m = _method(task_name, method_name)
    return m.family or m.name


def method_term(task_name: str, method_name: str) -> str:
    """The alignment term the method runs (``""``: source only)."""
    return _method(task_name, method_name).term

# --quick: one seed, fewer steps and images, only the frozen MobileNetV2 variant
QUICK = {
    "usps_mnist": ["train.steps=300", "train.eval_every=150", "train.checkpoint_every=300",
                   "data.source.max_per_class=200", "data.target.max_per_class=200"],
    "siri_whu_aid": ["train.steps=200", "train.eval_every=100", "train.checkpoint_every=200",
                     "data.target.max_per_class=60"],
    "aid_siri_whu": ["train.steps=200", "train.eval_every=100", "train.checkpoint_every=200",
                     "data.source.max_per_class=60"],
}
QUICK_VARIANTS = {"", "frozen"}

HYPERPARAMETER_RULE = (
    "No hyperparameter was tuned on target labels. Fixed in advance: SIRI-WHU/AID use the DDC "
    "paper's defaults (λ = 0.25, adaptation layer width 256) with the shipped "
    "`configs/siri_whu.json` optimisation (SGD, momentum 0.9, lr 0.01 with the inv schedule, "
    "batch 32+32, 1000 steps, backbone lr x0.1); USPS -> MNIST uses the shipped "
    "`configs/usps_mnist.json` (λ = 1, Adam lr 5e-4, batch 64+64, width 256), 1000 steps for "
    "every method and the config's 3000 for source only and the default DDC (CPU budget). On "
    "SIRI-WHU/AID each DDC method with the frozen backbone (128 and 224 px, and with AID "
    "class-balanced) is also run at λ = 1 (the DAN default), 4 and 16, and one λ per method is "
    "then chosen by source validation accuracy alone (rule below). Every other method of "
    "`ddc.align.REGISTRY` runs alone, its options at their defaults, at λ = "
    + " and ".join(f"{lam:g}" for lam in ALIGN_LAMBDAS) + " (USPS -> MNIST at 1000 steps, and "
    "the frozen SIRI-WHU/AID variants), its λ chosen by the same rule. Target labels are used "
    "only to compute the reported target metrics: `target acc` is the final step's; "
    "`target acc @ best src val` is the target accuracy at the evaluation step with the best "
    "source validation accuracy (a step chosen without target labels).")


@dataclass
class Cell:
    """One grid cell: a task, a variant, a method; run once per seed."""
    task: Task
    variant: str
    method: Method
    extra: list = field(default_factory=list)   # --quick / --steps / --set overrides

    @property
    def id(self) -> str:
        return "/".join(p for p in (self.task.name, self.variant, self.method.name) if p)

    @property
    def common(self) -> list:
        """The overrides shared by every cell of the task in this invocation."""
        return effective(self.task.overrides + self.extra)

    @property
    def own(self) -> list:
        """The overrides that make this cell (variant and method)."""
        return effective(self.task.variants[self.variant] + self.method.overrides)

    def overrides(self, seed: int) -> list:
        # the invocation's own overrides (--steps, --set) come last: they win over the cell's
        return effective(self.task.overrides + self.own + self.extra + [
            f"seed={seed}", f"name=\"{self.id.replace('/', '.')}.s{seed}\""])


def effective(overrides: list) -> list:
    """``overrides`` without the ones a later override of the same key replaces."""
    last = {o.split("=", 1)[0]: i for i, o in enumerate(overrides)}
    return [o for i, o in enumerate(overrides) if last[o.split("=", 1)[0]] == i]


def matches(cell_id: str, patterns: list[str]) -> bool:
    """``cell_id`` matches a glob pattern itself or is below one (``usps_mnist`` matches all
    of that task's cells)."""
    return any(fnmatch.fnmatchcase(cell_id, p) or fnmatch.fnmatchcase(cell_id, p.rstrip("/") + "/*")
               for p in patterns)


def scoped(overrides: list[str], task: str) -> list[str]:
    """The overrides that apply to ``task``: unscoped ones (``key=value``) and the ones scoped
    to it (``task:key=value``)."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        if ":" not in key:
            out.append(o)
        elif key.split(":", 1)[0] == task:
            out.append(o.split(":", 1)[1])
    return out


def build_grid(quick: bool, only: list[str] | None, extra: list[str]) -> list[Cell]:
    cells = []
    for task in TASKS:
        for variant in task.variants:
            if quick and variant not in QUICK_VARIANTS:
                continue
            for method in methods_for(task, variant, quick):
                over = (QUICK[task.name] if quick else []) + scoped(extra, task.name)
                cell = Cell(task, variant, method, over)
                if not only or matches(cell.id, only):
                    cells.append(cell)
    if only:  # in the order of the patterns (cheap or important cells first)
        cells.sort(key=lambda c: next(i for i, p in enumerate(only) if matches(c.id, [p])))
    return cells


# ----------------------------------------------------------------------------- running

def config_hash(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def finished_run(cell_dir: Path, seed: int, config: dict) -> tuple[dict, dict, Path] | None:
    """``(results, meta, run directory)`` of a finished run of ``config`` under ``cell_dir``
    (configs compared ``normalised``: a run made before a new default-valued key still matches)."""
    from ddc.config import normalised
    want = normalised(config)
    if want is None:
        return None
    for workdir in sorted(cell_dir.glob(f"seed{seed}-*")):
        paths = [workdir / n for n in ("config.json", "results.json", "accuracy_benchmark.json")]
        if all(p.exists() for p in paths) and normalised(json.loads(paths[0].read_text())) == want:
            return json.loads(paths[1].read_text()), json.loads(paths[2].read_text()), workdir
    return None


def has_finished_runs(cell: Cell, seeds: list[int], runs: Path) -> bool:
    from ddc.config import load
    return all(finished_run(runs / cell.id, seed,
                            load(REPO / cell.task.base, cell.overrides(seed)).to_dict()) is not None
               for seed in seeds)


def _relative(path: Path) -> str:
    """``path`` relative to the repo when it is inside it (no machine path in the report)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def run_cell_seed(cell: Cell, seed: int, runs: Path, data_root: Path, weights_root: Path) -> dict:
    """Trains one seed of ``cell`` (or reads back a finished run of the same config).

    Returns:
        The run's ``results.json`` plus ``run_dir``, ``overrides``, ``config``, ``resumed`` and
        ``total_wall_s`` (data loading, feature extraction, training and evaluation).
    """
    import keras

    from ddc.config import load
    from ddc.train import train_and_evaluate

    overrides = cell.overrides(seed)
    cfg = load(REPO / cell.task.base, overrides)
    config = cfg.to_dict()
    workdir = runs / cell.id / f"seed{seed}-{config_hash(config)}"
    finished = finished_run(runs / cell.id, seed, config)
    if finished is not None:
        res, meta, workdir = finished
        resumed = True
    else:
        t0 = time.time()
        res = train_and_evaluate(cfg, workdir, data_root=data_root, weights_root=weights_root)
        meta = {"total_wall_s": time.time() - t0, "overrides": overrides,
                "base": cell.task.base, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        (workdir / "accuracy_benchmark.json").write_text(json.dumps(meta, indent=2))
        keras.backend.clear_session()  # one process runs the whole grid
        resumed = False
    return {**res, "run_dir": _relative(workdir), "overrides": overrides, "config": config,
            "resumed": resumed, "total_wall_s": meta["total_wall_s"]}


def load_reusable(path: str | None) -> tuple[dict, str]:
    """The cell summaries of an earlier ``results.json`` (by cell id) and where they came from."""
    if not path:
        return {}, ""
    try:
        data = json.loads(Path(path).read_text())
        cells = {s["id"]: s for s in data["cells"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--reuse {path}: not a results file of this script ({e})") from e
    machine = str(data.get("machine", "unknown machine")).split(";")[0]
    return cells, f"{path} of {data.get('date', 'unknown date')} ({machine})"


def reused_summary(cell: Cell, seeds: list[int], reusable: dict, origin: str) -> dict | None:
    """An earlier summary of ``cell`` if it ran with the same seeds and the same resolved config
    (compared on seed 0's, which differs from the other seeds' only in ``seed`` and ``name``;
    both ``normalised``)."""
    from ddc.config import load, normalised

    prior = reusable.get(cell.id)
    if prior is None or prior.get("seeds") != seeds:
        return None
    config = normalised(load(REPO / cell.task.base, cell.overrides(seeds[0])).to_dict())
    if config is None or normalised(prior.get("config_seed0") or {}) != config:
        return None
    # the same resolved config: the overrides that make it now are this cell's (an earlier
    # file's may have been written for another config format, such as the old mmd block)
    return {**prior, "config_seed0": config, "common_overrides": cell.common,
            "overrides": cell.own, "reused_from": prior.get("reused_from") or origin}


# ----------------------------------------------------------------------------- summarising

def _mean_std(values: list) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(cell: Cell, runs: list[dict]) -> dict:
    out = {"id": cell.id, "task": cell.task.name, "variant": cell.variant,
           "method": cell.method.name, "base": cell.task.base,
           "common_overrides": cell.common, "overrides": cell.own,
           "seeds": [r["config"]["seed"] for r in runs]}
    for key in ("target_acc", "target_mean_class_acc", "target_acc_at_best_source_val",
                "source_val_acc", "wall_time_s", "total_wall_s"):
        out[key], out[key + "_std"] = _mean_std([r.get(key) for r in runs])
        out[key + "_per_seed"] = [r.get(key) for r in runs]
    for key in ("setup_time_s", "train_time_s", "target_acc_tta", "target_snd", "target_entropy"):
        out[key], out[key + "_std"] = _mean_std([r.get(key) for r in runs])
    for key in ("features_extracted", "features_from_cache"):
        out[key] = sum(r.get(key) or 0 for r in runs if not r["resumed"])
    out["steps"] = sorted({r["steps"] for r in runs})
    out["classes"] = runs[0]["classes"]
    out["dropped_classes"] = runs[0]["dropped_classes"]
    out["config_seed0"] = runs[0]["config"]
    out["run_dirs"] = [r["run_dir"] for r in runs]
    return out


def check_bars(summaries: list[dict]) -> list[dict]:
    """Each DDC cell (the ``mmd`` term's) against its task's bar: beats source only (same task
    and variant) on the mean over seeds by more than ``min_gain``, and reaches
    ``min_ddc_acc``. The other methods' cells are compared in the tables (``Δ``), not barred."""
    base = {(s["task"], s["variant"]): s for s in summaries if s["method"] == "source_only"}
    checks = []
    for s in summaries:
        if (method_term(s["task"], s["method"]) != "mmd"
                or (s["task"], s["variant"]) not in base):
            continue
        task = TASKS_BY_NAME[s["task"]]
        gain = s["target_acc"] - base[(s["task"], s["variant"])]["target_acc"]
        ok = gain > task.min_gain and (task.min_ddc_acc is None or s["target_acc"] >= task.min_ddc_acc)
        checks.append({"id": s["id"], "bar": task.bar, "target_acc": s["target_acc"],
                       "gain": gain, "passed": ok})
    return checks


def _lambda(s: dict) -> float:
    """A cell's λ: the weight of its method's term in its resolved config."""
    return s["config_seed0"]["align"][method_term(s["task"], s["method"])]["weight"]


def select_lambdas(summaries: list[dict]) -> list[dict]:
    """For each method run at several λ: the λ chosen by source validation only.

    Rule: the largest λ whose mean source validation accuracy is at least source only's
    (same task and variant) minus ``SOURCE_VAL_TOLERANCE``; the smallest λ if none is.
    Target accuracy is looked up only after the choice, for the report.
    """
    base = {(s["task"], s["variant"]): s for s in summaries if s["method"] == "source_only"}
    groups: dict = {}
    for s in summaries:
        if s["method"] != "source_only":
            key = (s["task"], s["variant"], method_family(s["task"], s["method"]))
            groups.setdefault(key, []).append(s)
    out = []
    for (task, variant, family), cands in groups.items():
        ref = base.get((task, variant))
        if len(cands) < 2 or ref is None:
            continue
        cands = sorted(cands, key=_lambda)
        ok = [c for c in cands if c["source_val_acc"] >= ref["source_val_acc"] - SOURCE_VAL_TOLERANCE]
        chosen = ok[-1] if ok else cands[0]
        out.append({"task": task, "variant": variant, "method": family, "id": chosen["id"],
                    "source_only_source_val_acc": ref["source_val_acc"],
                    "candidates": [{"lambda": _lambda(c), "id": c["id"],
                                    "source_val_acc": c["source_val_acc"]} for c in cands],
                    "lambda": _lambda(chosen),
                    "target_acc": chosen["target_acc"], "target_acc_std": chosen["target_acc_std"],
                    "gain": chosen["target_acc"] - ref["target_acc"]})
    return out


def model_selection(summaries: list[dict]) -> list[dict]:
    """For each task and each rule of ``ddc.selection.RULES``: the cell it picks among the
    task's cells that have the rule's score (mean over seeds; cells read back from a file
    without SND are not candidates), and, for honesty only, the best cell by target accuracy
    among the same candidates. ``snd_guarded`` compares each cell with its own variant's source
    only. Target accuracy is looked up only after the choice."""
    from ddc.selection import RULES, select

    base = {(s["task"], s["variant"]): s for s in summaries if s["method"] == "source_only"}

    def reference(s):
        ref = base.get((s["task"], s["variant"]))
        return ref["source_val_acc"] if ref else None

    def row(s):
        return {k: s.get(k) for k in ("id", "target_acc", "target_acc_std", "target_acc_tta",
                                      "source_val_acc", "target_snd", "target_entropy")}

    out = []
    for task in TASKS:
        cands = [s for s in summaries if s["task"] == task.name and s.get("target_snd") is not None]
        if not cands:
            continue
        oracle = max(cands, key=lambda s: s["target_acc"])
        for rule in RULES:
            pick = select(cands, rule, reference_source_val=reference)
            out.append({"task": task.name, "rule": rule, "candidates": len(cands), **row(pick),
                        "best_cell": row(oracle)})
    return out


def _pct(mean, std=None) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _machine() -> str:
    import keras
    import tensorflow as tf
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    load = "%.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else "n/a"
    return (f"nproc={os.cpu_count()}, CPU: {cpu}, "
            + (f"GPU: {', '.join(g.name for g in gpus)}" if gpus else "no GPU")
            + f"; tensorflow {tf.__version__}, keras {keras.__version__}, python "
            f"{platform.python_version()}; load average at the end (1/5/15 min): {load} "
            "(a shared machine: wall times are indicative only)")


def render(summaries: list[dict], checks: list[dict], command: str, machine: str, date: str,
           notes: list[str], selected: list[dict] | None = None,
           picks: list[dict] | None = None) -> str:
    """The markdown report."""
    lines = ["# Accuracy benchmark: DDC and the other alignment methods vs source only", "",
             "Generated by `benchmarks/accuracy.py`; do not edit by hand.", "",
             f"- command: `{command}`", f"- machine: {machine}", f"- date: {date}",
             f"- hyperparameters: {HYPERPARAMETER_RULE}", ""]
    for note in notes:
        lines.append(f"- {note}")
    if notes:
        lines.append("")
    lines += ["Accuracies in %, mean ± std over the seeds. `Δ` is the method minus source only "
              "(same task and backbone variant). `src val` is source validation accuracy at the final "
              "step. `setup s` is the run's own `setup_time_s`: decoding (or reading the image cache), "
              "building the network and, in mode \"features\", extracting the frozen part's output "
              "or reading it from the disk cache; `train s` the training loop with its evaluations.", ""]
    by_task: dict = {}
    for s in summaries:
        by_task.setdefault(s["task"], []).append(s)
    for task in TASKS:
        rows = by_task.get(task.name)
        if not rows:
            continue
        common = " ".join(f"`--set {o}`" for o in rows[0]["common_overrides"]) or "none"
        lines += [f"## {task.title}", "", f"Base config `{task.base}`; bar: {task.bar}. "
                  f"Classes ({len(rows[0]['classes'])}): {', '.join(rows[0]['classes'])}.",
                  f"Overrides of every run of this task: {common}; each row adds its own, "
                  "and `--set seed=<seed>`."]
        dropped = {k: v for k, v in rows[0]["dropped_classes"].items() if v}
        if dropped:
            lines.append("Dropped for lack of a counterpart: " + "; ".join(
                f"{k}: {', '.join(v)}" for k, v in dropped.items()) + ".")
        lines += ["", "| cell | method | seeds | steps | target acc | Δ | with D4 TTA | "
                  "mean per-class acc | target acc @ best src val | src val | SND | setup s | "
                  "train s | overrides |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        base = {s["variant"]: s for s in rows if s["method"] == "source_only"}
        for s in rows:
            title = method_title(s["task"], s["method"]) + (" †" if s.get("reused_from") else "")
            ref = base.get(s["variant"])
            delta = ("" if s["method"] == "source_only" or ref is None
                     else f"{100 * (s['target_acc'] - ref['target_acc']):+.1f}")
            setup = s.get("setup_time_s")  # older results: everything but the training loop
            setup = (s["total_wall_s"] or 0) - (s["wall_time_s"] or 0) if setup is None else setup
            over = " ".join(f"`--set {o}`" for o in s["overrides"])
            lines.append(
                f"| {s['id']} | {title} | {len(s['seeds'])} | {'/'.join(map(str, s['steps']))} | "
                f"{_pct(s['target_acc'], s['target_acc_std'])} | {delta} | "
                f"{_pct(s.get('target_acc_tta'), s.get('target_acc_tta_std'))} | "
                f"{_pct(s['target_mean_class_acc'], s['target_mean_class_acc_std'])} | "
                f"{_pct(s['target_acc_at_best_source_val'], s['target_acc_at_best_source_val_std'])} | "
                f"{_pct(s['source_val_acc'])} | "
                f"{'' if s.get('target_snd') is None else format(s['target_snd'], '.3f')} | "
                f"{setup:.0f} | {s['wall_time_s']:.0f} | {over} |")
        lines.append("")
    if selected:
        lines += ["## λ chosen by source validation", "",
                  "Where a method ran at several λ, the λ below is chosen without target labels: "
                  "the largest λ whose mean source validation accuracy is at least source only's "
                  f"minus {100 * SOURCE_VAL_TOLERANCE:g} points (as much alignment as the source "
                  "task tolerates; the smallest λ if none qualifies). Target accuracy is read only "
                  "after the choice.", "",
                  "| task / variant | method | src val: source only | src val per λ | chosen λ | "
                  "target acc | Δ |", "|---|---|---|---|---|---|---|"]
        for c in selected:
            per = ", ".join(f"λ={x['lambda']:g}: {_pct(x['source_val_acc'])}" for x in c["candidates"])
            lines.append(f"| {c['task']}/{c['variant']} | {c['method']} | "
                         f"{_pct(c['source_only_source_val_acc'])} | {per} | {c['lambda']:g} | "
                         f"{_pct(c['target_acc'], c['target_acc_std'])} | {100 * c['gain']:+.1f} |")
        lines.append("")
    if picks:
        from ddc.selection import DEFAULT_RULE, RULES, SOURCE_GUARD
        lines += ["## Model chosen without target labels", "",
                  "Each rule picks one cell of a task among its cells that have the rule's score "
                  "(mean over seeds; cells read back from an earlier file without SND are not "
                  "candidates). Rules (`ddc.selection`): "
                  + "; ".join(f"`{k}`: {v.replace('SOURCE_GUARD', f'{100 * SOURCE_GUARD:g} point')}"
                              for k, v in RULES.items())
                  + f". **`{DEFAULT_RULE}` was fixed in advance as the rule whose pick we call "
                  "ours.** `best cell` is the candidate with the highest target accuracy, printed "
                  "for honesty and never used.", "",
                  "| task | rule | candidates | picked cell | target acc | with D4 TTA | src val | "
                  "SND | entropy | best cell (not used) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for p in picks:
            b = p["best_cell"]
            mark = "**" if p["rule"] == DEFAULT_RULE else ""
            lines.append(
                f"| {p['task']} | {mark}{p['rule']}{mark} | {p['candidates']} | {p['id']} | "
                f"{mark}{_pct(p['target_acc'], p['target_acc_std'])}{mark} | "
                f"{_pct(p['target_acc_tta'])} | {_pct(p['source_val_acc'])} | "
                f"{p['target_snd']:.3f} | {p['target_entropy']:.3f} | "
                f"{b['id']}: {_pct(b['target_acc'], b['target_acc_std'])} |")
        lines.append("")
    if checks:
        chosen = {c["id"] for c in selected or []}
        lines += ["## Bars", ""]
        for label, subset in (("DDC cells", checks),
                              ("DDC cells with λ chosen by source validation",
                               [c for c in checks if c["id"] in chosen])):
            if subset:
                lines.append(f"- {label}: {sum(c['passed'] for c in subset)} of {len(subset)} "
                             "pass their task's bar.")
        lines += ["", "| cell | bar | target acc | Δ vs source only | passed |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['id']} | {c['bar']} | {_pct(c['target_acc'])} | {100 * c['gain']:+.1f} | "
                  f"{'yes' if c['passed'] else '**no**'} |" for c in checks]
        lines.append("")
    lines += ["## Exact configs", "",
              "Each run is `python scripts/train_ddc.py --config <base> --set ...` with the overrides "
              "of its row plus `--set seed=<seed>` (and a `name`). The resolved config of seed 0 of "
              "each cell:", ""]
    for s in summaries:
        lines += [f"<details><summary>{s['id']}</summary>", "", "```json",
                  json.dumps(s["config_seed0"], indent=1), "```", "", "</details>", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a small grid (one seed, fewer steps and images, frozen MobileNetV2 only; "
                   "the registry's other methods at one λ there)")
    p.add_argument("--only", default="", help="comma-separated glob patterns of cell ids, e.g. "
                   "'usps_mnist/source_only,siri_whu_aid/frozen/*'; cells run in the patterns' "
                   "order")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0)")
    p.add_argument("--steps", type=int, default=None, help="override train.steps of every run "
                   "(evaluation at the end only)")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="cap images per class in both domains (tests)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra config override for every run, or for one task's runs "
                   "with TASK:KEY=VALUE (e.g. usps_mnist:train.steps=1500)")
    p.add_argument("--runs", default=None, help="folder of the run directories (default "
                   "runs/accuracy, quick: runs/accuracy-quick)")
    p.add_argument("--out", default=None, help="markdown report (default docs/RESULTS.md; "
                   "quick: <runs>/RESULTS.md)")
    p.add_argument("--json", default=None, help="machine-readable results (default "
                   "<runs>/results.json)")
    p.add_argument("--reuse", default=None, metavar="RESULTS_JSON",
                   help="read cells back from an earlier results.json where their resolved "
                   "config and seeds are identical (marked † in the report)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's header "
                   "(for example what a reduced grid left out)")
    p.add_argument("--data-root", default=os.environ.get("DDC_DATA_ROOT", str(SHARED / "data")))
    p.add_argument("--weights-root",
                   default=os.environ.get("DDC_WEIGHTS_ROOT", str(SHARED / "weights")))
    return p.parse_args(argv)


def command_line(argv: list[str]) -> str:
    cmd = "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in argv)
    niceness = os.nice(0)
    return (f"nice -n {niceness} " if niceness else "") + cmd.strip()


def main(argv: list[str] | None = None) -> str:
    """Runs the grid; writes and returns the markdown report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    extra = list(args.overrides)
    if args.steps is not None:
        extra += [f"train.steps={args.steps}", f"train.eval_every={args.steps}",
                  f"train.checkpoint_every={args.steps}", f"train.log_every={args.steps}"]
    if args.max_per_class is not None:
        extra += [f"data.source.max_per_class={args.max_per_class}",
                  f"data.target.max_per_class={args.max_per_class}"]
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    cells = build_grid(args.quick, only, extra)
    if not cells:
        raise SystemExit(f"--only {args.only!r} matches no cell")
    runs = Path(args.runs or REPO / ("runs/accuracy-quick" if args.quick else "runs/accuracy"))
    out_md = Path(args.out or (runs / "RESULTS.md" if args.quick else REPO / "docs/RESULTS.md"))
    out_json = Path(args.json or runs / "results.json")  # a run output: not committed
    command = command_line(argv)
    text = _run_grid(args, cells, seeds, runs, out_md, out_json, command)
    print(f"wrote {out_md} and {out_json}", file=sys.stderr)
    return text


def reductions(cells: list[Cell], summaries: list[dict], seeds: list[int], quick: bool) -> list[str]:
    """Lines saying how this report differs from the full grid (cells, seeds, steps)."""
    lines = []
    if quick:
        lines.append("**quick grid** (`--quick`: fewer steps and images, frozen MobileNetV2 only; "
                     "the registry's other methods at one λ, frozen MobileNetV2 only): a smoke "
                     "run, not the benchmark")
    done = {s["id"] for s in summaries}
    missing = [c.id for c in build_grid(False, None, []) if c.id not in done]
    if missing and not quick:
        lines.append(f"**reduced grid**: {len(missing)} of {len(missing) + len(done)} cells not "
                     f"run: {', '.join(missing)}")
    if seeds != [0, 1, 2]:
        lines.append(f"seeds: {', '.join(map(str, seeds))} (the full grid uses 0, 1, 2)")
    for task in TASKS:
        rows = [s for s in summaries if s["task"] == task.name]
        if not rows:
            continue
        base = json.loads((REPO / task.base).read_text()).get("train", {}).get("steps", 1000)
        steps = sorted({n for s in rows for n in s["steps"]})
        if steps != [base]:
            lines.append(f"{task.name}: {'/'.join(map(str, steps))} training steps instead of "
                         f"the base config's {base}")
    return lines


def _run_grid(args, cells, seeds, runs, out_md, out_json, command) -> str:
    t_start = time.time()
    summaries = []
    total = len(cells) * len(seeds)
    reusable, origin = load_reusable(args.reuse)
    text = ""
    for i, cell in enumerate(cells):
        # this invocation's own finished runs win over --reuse
        prior = (reused_summary(cell, seeds, reusable, origin)
                 if cell.id in reusable and not has_finished_runs(cell, seeds, runs) else None)
        if prior is not None:
            print(f"[accuracy {i * len(seeds) + 1}/{total}] {cell.id}: read back from {origin}",
                  file=sys.stderr, flush=True)
            summaries.append(prior)
        else:
            results = []
            for j, seed in enumerate(seeds):
                k = i * len(seeds) + j + 1
                print(f"[accuracy {k}/{total}, {time.time() - t_start:.0f} s] {cell.id} seed "
                      f"{seed}", file=sys.stderr, flush=True)
                results.append(run_cell_seed(cell, seed, runs, Path(args.data_root),
                                             Path(args.weights_root)))
            summaries.append(summarize(cell, results))
        # written after every cell, so a long grid's partial results can be read (and resumed)
        text = _write_report(args, cells, seeds, summaries, out_md, out_json, command,
                             time.time() - t_start)
    return text


def _write_report(args, cells, seeds, summaries, out_md, out_json, command,
                  elapsed: float) -> str:
    checks = check_bars(summaries)
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    notes = reductions(cells, summaries, seeds, args.quick) + list(args.note)
    origins = sorted({s["reused_from"] for s in summaries if s.get("reused_from")})
    if origins:
        n = sum(bool(s.get("reused_from")) for s in summaries)
        notes.append(f"† {n} cells read back from {'; '.join(origins)} (`--reuse`: that run's "
                     "summaries, with the identical resolved config and seeds; their run "
                     "directories are not kept). Leave `--reuse` out to rerun them.")
    notes.append(f"{len(summaries)} of {len(cells)} cells done; {elapsed:.0f} s in this "
                 "invocation (runs read back from earlier invocations cost ~0 s)")
    extracted = sum(s.get("features_extracted") or 0 for s in summaries)
    cached = sum(s.get("features_from_cache") or 0 for s in summaries)
    if extracted or cached:
        notes.append(
            "mode \"features\" runs read the frozen part's output from the library's disk cache "
            "(`ddc.train.feature_cache`, as a CLI run does): the first run of a backbone variant "
            f"extracts it; {extracted} views extracted, {cached} read from the cache by the runs "
            "of this report. `setup s` is what the same config costs from the command line.")
    selected = select_lambdas(summaries)
    picks = model_selection(summaries)
    text = render(summaries, checks, command, _machine(), date, notes, selected, picks)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"command": command, "date": date, "machine": _machine(),
                                    "hyperparameter_rule": HYPERPARAMETER_RULE,
                                    "seeds": seeds, "cells": summaries, "bars": checks,
                                    "lambda_by_source_val": selected,
                                    "model_selection": picks}, indent=1))
    return text


if __name__ == "__main__":
    main()
