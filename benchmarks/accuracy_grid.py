"""The accuracy benchmark's grid: tasks x variants x methods, and the overrides of each cell.

Nothing here runs or reads a run: ``build_grid`` returns the cells ``accuracy.py`` runs (each
once per seed, ``accuracy_run``) and reports (``accuracy_report``). A task is a base config and
its variants (``--set`` overrides); a method is the overrides of an alignment term (or of none);
a cell's overrides are the task's, then the variant's and the method's, then the invocation's
(``--quick``, ``--steps``, ``--set``), the last value of a key winning (``effective``).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFIGS = REPO / "configs"


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
    target: float | None = None        # the target for the cell our rule picks
    variant_methods: dict = field(default_factory=dict)  # variant -> the only methods it runs
    #                                    (names, or fnmatch patterns of names: ``"*_lam1"``)
    align_variants: tuple = ("",)      # variants that run every other registered method
    combo_variants: tuple = ()         # variants that run the pairs of COMBOS
    peer_variants: tuple = ()          # variants that also run ADAPT's methods (PEER_METHODS)


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    overrides: list
    family: str = ""                   # the method without its λ (default: name)
    lam: float | None = None           # None: the base config's λ
    term: str = ""                     # the alignment term it runs, whose weight λ is ("": none)
    peer: str = ""                     # a peer library's method instead of ours (adapt_cells)


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
ALIGN_LAMBDAS = (1.0,)   # the papers' default; add 0.1 here for a λ study (2x the runs)
# --quick: in the frozen MobileNetV2 variant only (cached features: seconds a run; a LeNet run
# through the whole network takes minutes on a shared CPU)
QUICK_ALIGN_VARIANTS = ("frozen",)


# pairs of terms, each at λ = 1 (MCC's and the other papers' default), where a task's
# ``combo_variants`` run them: name -> the align mapping
COMBOS = {
    "mmd+mcc": {"mmd": {"weight": 1.0}, "mcc": {"weight": 1.0}},
    "mcc+im": {"mcc": {"weight": 1.0}, "im": {"weight": 1.0}},
    "cdan_e+mcc": {"cdan": {"weight": 1.0, "entropy_conditioning": True}, "mcc": {"weight": 1.0}},
    "mcc+pseudo_label": {"mcc": {"weight": 1.0}, "pseudo_label": {"weight": 1.0}},
}


# ADAPT's DANN, CDAN and MDD on the same frozen features, steps and seeds
# (benchmarks/adapt_cells.py; ADAPT is a benchmark-only package: without it these cells are
# skipped and the report says so)
PEER_METHODS = [Method(f"adapt_{m}", f"ADAPT {m.upper()} (adapt 0.4.5, λ = 1, its default "
                       "networks; benchmarks/adapt_cells.py)", ["align={}"], family=f"adapt_{m}",
                       peer=m)
                for m in ("dann", "cdan", "mdd")]


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

# MobileNetV2 in mode "features", the backbone frozen (the head trains on its cached pooled
# output): "frozen" at 128 px, one view per image, 1000 steps (the cheap baseline of earlier
# reports); "frozen_224_d4_3000" at the backbone's native 224 px, with the eight rotations and
# flips of each image (one drawn per sample and step; the target also evaluated on the softmax
# averaged over them, `target_acc_tta`), for 3000 steps (at 1000, source validation accuracy was
# still rising). The levers in between (224 px alone, D4 alone, 1000 steps, the last blocks
# trained) were measured by earlier reports: docs/results_reading.md. "frozen_224_d4_3000_ls"
# is the main variant with label smoothing 0.1 on the source cross-entropy (SHOT's source
# recipe; a lever of issue 20), which the rule's first stage weighs like any other variant.
_MAIN_VARIANT = ["model.freeze.mode=\"backbone\"", "data.image_size=224", "data.augment=\"d4\"",
                 "train.tta=true", "train.steps=3000", "train.eval_every=500",
                 "train.checkpoint_every=3000"]
MOBILENET_VARIANTS = {
    "frozen": ["model.freeze.mode=\"backbone\""],
    # the same with AdaBN: each domain's features on BatchNorm statistics of its own images
    "frozen_adabn": ["model.freeze.mode=\"backbone\"", "model.adabn=true"],
    "frozen_224_d4_3000": _MAIN_VARIANT,
    "frozen_224_d4_3000_ls": [*_MAIN_VARIANT, "train.label_smoothing=0.1"],
    # the main variant with BatchNorm in the adaptation layer (TLlib's bottleneck; a lever of
    # issue 20, fixed before any of its runs), LS_METHODS
    "frozen_224_d4_3000_bn": [*_MAIN_VARIANT, "model.adapt_bn=true"],
    # both levers together (fixed on 2026-12-07 before any of its runs), LS_METHODS; listed
    # last, so a tie of the rule's first stage with a variant above goes to that variant
    "frozen_224_d4_3000_ls_bn": [*_MAIN_VARIANT, "train.label_smoothing=0.1",
                                 "model.adapt_bn=true"],
}
# what the 128 px baseline runs: source only, DDC and the three methods that led it before
FROZEN_METHODS = ("source_only", "ddc_gauss_biased", "im_lam1", "mcc_lam1", "cdan_e_lam1")
# ... and its AdaBN twin (a lever; a first run, source only, seed 0: target 45.9%, source
# validation 80.4%, against 52.0 and 88.8% over 3 seeds without)
ADABN_METHODS = ("source_only", "mcc_lam1")
# ... and the main variant, where the label-free rule's first stage lands on both MobileNetV2
# tasks (the best source-only source validation accuracy): every method, λ = 1 (DDC at its
# paper's λ, each registered term, the pairs)
LONG_METHODS = ("source_only", "ddc_gauss_biased", "*_lam1", *COMBOS)
# ... and its label-smoothing twin (fixed before any of its runs): source only, DDC, the terms
# on the target predictions that led the main variant (MCC, IM, self-training) and the pairs
# without the slow CDAN+E one
LS_METHODS = ("source_only", "ddc_gauss_biased", "mcc_lam1", "im_lam1", "pseudo_label_lam1",
              "mmd+mcc", "mcc+im", "mcc+pseudo_label")
# the digit tasks train the whole LeNet (2-6 minutes a run on 2 cores; CDAN's discriminator on
# the 2,560-wide multilinear map is the slowest): the config's 3000 steps for source only, DDC,
# the terms on the target predictions (MCC, IM, and entropy minimisation, whose collapse a
# label-free rule must not reward) and CDAN, the best method at 1000 steps in earlier reports
DIGIT_METHODS = ("source_only", "ddc_gauss_biased", "mcc_lam1", "im_lam1", "entropy_lam1",
                 "cdan_lam1")
# ... and in TLlib's digits network (variant "tllib", fixed before any of its runs): Caffe's
# LeNet with TLlib's two dropouts (backbone lenet_tllib) and BatchNorm in the adaptation layer
# (TLlib's bottleneck: Linear 256, BatchNorm, ReLU); the same methods but entropy minimisation
# (its collapse is measured in variant ""). It replaces variant "bn" (BatchNorm alone), whose
# cells were never run on lenet_caffe.
TLLIB_DIGIT_METHODS = ("source_only", "ddc_gauss_biased", "mcc_lam1", "im_lam1", "cdan_lam1")
# ... and, in variant "tllib" only (fixed on 2026-12-07 before any of their runs), two pairs of
# COMBOS with MCC: IM (confidence and diversity on top of MCC's class confusion) and
# self-training on the confident class-balanced target predictions (a lever of issue 20); the
# two CDAN pairs are left out for their cost (a CDAN run is the slowest digit run)
TLLIB_PAIR_METHODS = (*TLLIB_DIGIT_METHODS, "mcc+im", "mcc+pseudo_label")
DIGIT_VARIANTS = {"": [], "tllib": ["model.backbone=\"lenet_tllib\"", "model.adapt_bn=true"]}
# ... and the budget study of USPS -> MNIST (variant "long_12000", fixed before any of its runs,
# after the rule had picked IM at 3000 steps): 4x the steps for source only and the rule's pick,
# to measure how much of the gap to TLlib's 97.7% (50,000 steps of batch 128) is training budget
BUDGET_DIGIT_METHODS = ("source_only", "im_lam1")
# ... and TLlib's optimiser for its digits network (variant "tllib_sgd", USPS -> MNIST, fixed
# before any of its runs): SGD, lr 0.01, momentum 0.9, weight decay 1e-3 (the values of TLlib's
# digit scripts) annealed by the inv schedule, instead of Adam at a constant 5e-4; the network,
# batch, steps and methods of variant "tllib"
TLLIB_SGD = ["train.optimizer=\"sgd\"", "train.lr=0.01", "train.momentum=0.9",
             "train.weight_decay=0.001", "train.lr_schedule=\"inv\""]
USPS_MNIST_VARIANTS = {**DIGIT_VARIANTS, "long_12000": ["train.steps=12000"],
                       "tllib_sgd": DIGIT_VARIANTS["tllib"] + TLLIB_SGD}
DIGIT_OVERRIDES = ["data.cache=\"disk\"", "train.keep_checkpoints=1", "train.eval_batch_size=500",
                   "train.checkpoint_every=3000"]

TASKS = [
    Task("usps_mnist",
         "USPS -> MNIST (10 classes, 28 px: Caffe's LeNet, and TLlib's in variant tllib; the "
         "config's 3000 steps, 12000 in variant long_12000; TLlib's SGD in variant tllib_sgd)",
         "configs/usps_mnist_ddc.json", DIGIT_OVERRIDES, USPS_MNIST_VARIANTS,
         bar="DDC >= 0.90 and DDC > source only", min_ddc_acc=0.90, target=0.97,
         align_variants=tuple(USPS_MNIST_VARIANTS), combo_variants=("tllib",),
         variant_methods={"": DIGIT_METHODS, "tllib": TLLIB_PAIR_METHODS,
                          "long_12000": BUDGET_DIGIT_METHODS,
                          "tllib_sgd": TLLIB_DIGIT_METHODS}),
    # the other direction, a target domain no recipe or rule of this project was made on
    # (added with the rule staged_bnm, before any run of it): the same recipe, roots swapped
    Task("mnist_usps",
         "MNIST -> USPS (10 classes, 28 px: Caffe's LeNet, and TLlib's in variant tllib; the "
         "usps_mnist_ddc recipe, 3000 steps)",
         "configs/grid/mnist_usps.json", DIGIT_OVERRIDES, DIGIT_VARIANTS,
         bar="DDC > source only", align_variants=tuple(DIGIT_VARIANTS),
         combo_variants=("tllib",),
         variant_methods={"": DIGIT_METHODS, "tllib": TLLIB_PAIR_METHODS}),
    *[Task(name, f"{title} (11 shared classes, MobileNetV2, frozen: 128 px, and 224 px with "
           "D4 views for 3000 steps)", f"configs/grid/{name}.json", [], MOBILENET_VARIANTS,
           bar="DDC >= source only + 0.03", min_gain=0.03, target=0.70,
           align_variants=tuple(MOBILENET_VARIANTS),
           combo_variants=("frozen_224_d4_3000", "frozen_224_d4_3000_ls", "frozen_224_d4_3000_bn",
                           "frozen_224_d4_3000_ls_bn"),
           peer_variants=peers,
           variant_methods={"frozen": FROZEN_METHODS, "frozen_adabn": ADABN_METHODS,
                            "frozen_224_d4_3000": LONG_METHODS,
                            "frozen_224_d4_3000_ls": LS_METHODS,
                            "frozen_224_d4_3000_bn": LS_METHODS,
                            "frozen_224_d4_3000_ls_bn": LS_METHODS})
      # ADAPT's methods beside ours on SIRI-WHU -> AID (the comparison the issue asks for)
      for name, title, peers in (("siri_whu_aid", "SIRI-WHU -> AID", ("frozen_224_d4_3000",)),
                                 ("aid_siri_whu", "AID -> SIRI-WHU", ()))],
]
TASKS_BY_NAME = {t.name: t for t in TASKS}


def methods_for(task: Task, variant: str | None = None, quick: bool = False) -> list[Method]:
    """The methods of ``task`` (in ``variant``; None: of any variant): METHODS, the registry's
    other methods (``registry_methods``) and the pairs where the variant runs them (if
    ``quick``: in ``QUICK_ALIGN_VARIANTS`` only, no pairs, no peers), then only those the
    variant's ``variant_methods`` list."""
    out = list(METHODS)
    if variant is None or (variant in task.align_variants
                           and (not quick or variant in QUICK_ALIGN_VARIANTS)):
        out += registry_methods()
    if variant is None or (variant in task.combo_variants and not quick):
        out += combo_methods()
    if variant in task.variant_methods:
        out = [m for m in out if runs_in(m.name, task.variant_methods[variant])]
    if variant is None or (variant in task.peer_variants and not quick):
        out += PEER_METHODS
    return out


def runs_in(method_name: str, names: tuple) -> bool:
    """Whether a variant whose ``variant_methods`` are ``names`` (names or fnmatch patterns)
    runs the method."""
    return any(fnmatch.fnmatchcase(method_name, n) for n in names)


def _method(task_name: str, method_name: str) -> Method:
    return next(m for m in methods_for(TASKS_BY_NAME[task_name]) if m.name == method_name)


def method_title(task_name: str, method_name: str) -> str:
    return _method(task_name, method_name).title


def method_family(task_name: str, method_name: str) -> str:
    m = _method(task_name, method_name)
    return m.family or m.name


def method_peer(task_name: str, method_name: str) -> str:
    """The peer library's method the cell runs (``""``: one of ours)."""
    return _method(task_name, method_name).peer


def method_term(task_name: str, method_name: str) -> str:
    """The alignment term the method runs (``""``: source only)."""
    return _method(task_name, method_name).term

# --quick: one seed, fewer steps and images, only the frozen MobileNetV2 variant
QUICK = {
    **{name: ["train.steps=300", "train.eval_every=150", "train.checkpoint_every=300",
              "data.source.max_per_class=200", "data.target.max_per_class=200"]
       for name in ("usps_mnist", "mnist_usps")},
    "siri_whu_aid": ["train.steps=200", "train.eval_every=100", "train.checkpoint_every=200",
                     "data.target.max_per_class=60"],
    "aid_siri_whu": ["train.steps=200", "train.eval_every=100", "train.checkpoint_every=200",
                     "data.source.max_per_class=60"],
}
QUICK_VARIANTS = {"", "frozen"}

HYPERPARAMETER_RULE = (
    "No hyperparameter was tuned on target labels. Fixed in advance: SIRI-WHU/AID use the DDC "
    "paper's defaults (λ = 0.25, adaptation layer width 256) with the shipped "
    "`configs/siri_whu_ddc.json` optimisation (SGD, momentum 0.9, lr 0.01 with the inv "
    "schedule, batch 32+32, backbone lr x0.1); USPS -> MNIST uses the shipped "
    "`configs/usps_mnist_ddc.json` (λ = 1, Adam lr 5e-4, batch 64+64, width 256, 3000 steps). "
    "Every other method of `ddc.align.REGISTRY` runs alone at λ = 1 (the papers' default), "
    "its options at their defaults, and the pairs of terms (`COMBOS`) run each term at λ = 1: "
    "all of them in the main MobileNetV2 variant (`frozen_224_d4_3000`), a fixed few in the "
    "128 px baseline (`FROZEN_METHODS`), in the main variant's label-smoothing twin "
    "(`LS_METHODS`; ε = 0.1, SHOT's value, fixed before its runs) and its BatchNorm twin "
    "(`frozen_224_d4_3000_bn`: BatchNorm in the adaptation layer as TLlib's bottleneck, "
    "`LS_METHODS`, fixed before its runs) and the two together (`frozen_224_d4_3000_ls_bn`, "
    "`LS_METHODS`, fixed before its runs), and on the digit tasks (`DIGIT_METHODS`, and "
    "`TLLIB_DIGIT_METHODS` in TLlib's digits network, `lenet_tllib` with that BatchNorm, "
    "fixed before its runs; `BUDGET_DIGIT_METHODS` at 4x the steps on USPS -> MNIST; "
    "`TLLIB_DIGIT_METHODS` with TLlib's SGD (lr 0.01, momentum 0.9, weight decay 1e-3, inv "
    "schedule) on USPS -> MNIST, fixed before its runs; `TLLIB_PAIR_METHODS`, two pairs with MCC "
    "in variant `tllib`, fixed before their runs; "
    "CPU budget; "
    "MNIST -> USPS with USPS -> MNIST's recipe). Target labels are used only to compute the "
    "reported target metrics: `target acc` is the final step's; `target acc @ best src val` "
    "is the target accuracy at the evaluation step with the best source validation accuracy "
    "(a step chosen without target labels).")


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
