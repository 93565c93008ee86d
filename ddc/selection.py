"""Label-free model-selection scores: how to rank runs on a target domain without its labels.

Each score reads the target's softmax predictions only (never its labels):

* ``snd``: soft neighbourhood density (Saito et al. 2021, "Tune it the right way"). Rows of the
  target softmax matrix are L2-normalised; each sample's similarities to every *other* sample,
  divided by a temperature (0.05 in the paper), go through a softmax; SND is the mean entropy of
  those neighbourhood distributions. Higher is better: predictions that form dense clusters.
* ``neg_entropy``: minus the mean prediction entropy. Higher is better: confident predictions
  (which a collapsed model also has, so it is a weak rule alone).
* ``bnm``: the nuclear norm of the target softmax matrix over the number of samples (the BNM
  validator of Musgrave et al. 2022, "Three new validators and a large-scale benchmark ranking
  for unsupervised domain adaptation", after Cui et al. 2020's batch nuclear-norm
  maximisation). Higher is better: confident predictions *and* many classes used (every
  sample confidently in one class gives 1/sqrt(N); K classes used equally and confidently,
  the maximum sqrt(K/N)).
* ``im``: the information-maximisation score H(mean prediction) - mean H(prediction), the
  mutual information between a target sample and its predicted class (SHOT's objective, the
  IM validator of the same benchmark). Higher is better: confident and diverse.

``select`` picks a run by one of ``RULES``, some of which also read source validation accuracy
(labelled source data, never target labels).
"""

from __future__ import annotations

import numpy as np

from ddc.metrics import mean_entropy, softmax

SND_TEMPERATURE = 0.05


def snd(probs, temperature: float = SND_TEMPERATURE, chunk: int = 1024) -> float:
    r"""Soft neighbourhood density of softmax predictions ``probs`` [N, K]::

        q_i = p_i / ||p_i||,   s_ij = q_i . q_j / T  (j != i),
        P_ij = exp(s_ij) / sum_{l != i} exp(s_il),   SND = 1/N sum_i -sum_{j != i} P_ij log P_ij

    Computed ``chunk`` rows at a time (memory chunk x N), in float64.
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) < 2:
        raise ValueError(f"snd needs probabilities [N >= 2, K]; got shape {p.shape}")
    if temperature <= 0:
        raise ValueError(f"snd temperature must be > 0; got {temperature}")
    q = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    n = len(q)
    total = 0.0
    for start in range(0, n, chunk):
        s = q[start:start + chunk] @ q.T / temperature
        rows = np.arange(len(s))
        s[rows, start + rows] = -np.inf          # a sample is not its own neighbour
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        P = e / e.sum(axis=1, keepdims=True)
        logP = np.where(P > 0, np.log(np.where(P > 0, P, 1.0)), 0.0)
        total += float(-(P * logP).sum())
    return total / n


def predicted_class_entropy(counts) -> float:
    """Entropy (nats) of the distribution of predicted classes, from their counts [K] (a
    histogram of the argmax predictions; or a confusion matrix [K, K] with predictions along
    its columns, whose column sums are those counts whatever the labels). Total collapse onto
    one class gives 0; equal use of K classes, log K."""
    c = np.asarray(counts, np.float64)
    c = c.sum(axis=0) if c.ndim == 2 else c
    if c.ndim != 1 or c.sum() <= 0 or (c < 0).any():
        raise ValueError(f"predicted_class_entropy needs non-negative counts [K] or [K, K]; got "
                         f"shape {np.shape(counts)}")
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum())


def bnm(probs) -> float:
    r"""Batch nuclear norm of softmax predictions ``probs`` [N, K] per sample::

        BNM = ||P||_* / N = (sum of the singular values of P) / N

    in float64: 1/sqrt(N) for N identical one-hot rows, at most sqrt(K/N) (K classes used
    equally, each sample one-hot), 1/sqrt(N K) for uniform rows."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or not len(p):
        raise ValueError(f"bnm needs probabilities [N >= 1, K]; got shape {p.shape}")
    return float(np.linalg.svd(p, compute_uv=False).sum() / len(p))


def information_maximization(probs) -> float:
    r"""``H(mean_i p_i) - mean_i H(p_i)`` (nats) of softmax predictions ``probs`` [N, K]."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or not len(p):
        raise ValueError(f"information_maximization needs probabilities [N >= 1, K]; got shape "
                         f"{p.shape}")

    def h(q):
        return -(q * np.log(np.where(q > 0, q, 1.0))).sum(axis=-1)

    return float(h(p.mean(axis=0)) - h(p).mean())


def scores(logits) -> dict:
    """Every label-free score of target ``logits`` [N, K], higher is better."""
    z = np.asarray(logits)
    p = softmax(z)
    return {"snd": snd(p), "neg_entropy": -mean_entropy(z), "bnm": bnm(p),
            "im": information_maximization(p),
            "pred_class_entropy": predicted_class_entropy(
                np.bincount(z.argmax(axis=1), minlength=z.shape[1]))}


# ----------------------------------------------------------------------------- choosing a run

# rule -> what it maximises, over finished runs (dicts with ``source_val_acc``, ``target_entropy``,
# ``target_snd``, ``target_bnm``, ``target_im``, as in ``results.json``); none reads a target label
_STAGED = ("first the input pipeline (the group of runs, e.g. resolution, views and schedule, "
           "whose source-only reference has the highest source validation accuracy: how good the "
           "features are is a supervised question that source labels answer), then, among that "
           "group's runs whose source validation accuracy is at most SOURCE_GUARD below their "
           "source-only reference's, ")
RULES = {
    "source_val": "the highest source validation accuracy",
    "entropy": "the lowest mean target prediction entropy",
    "snd": "the highest target SND",
    "snd_guarded": "the highest target SND among the runs whose source validation accuracy is at "
                   "most SOURCE_GUARD below their source-only reference's (a collapsed or "
                   "source-breaking run has a high SND: all its predictions look alike)",
    "staged_snd": _STAGED + "the highest SND (which alignment method and λ: the question SND "
                            "was made for)",
    "staged_snd_diverse": "staged_snd, a run also eligible only if its target predictions are "
                          "spread over the classes at least as evenly as its source-only "
                          "reference's (predicted-class entropy): SND is highest for a model "
                          "that puts every target sample in one class",
    "staged_bnm": _STAGED + "the highest BNM (the nuclear norm of the target softmax matrix: "
                            "confident predictions over many classes; a collapse scores low)",
    "staged_im": _STAGED + "the highest information-maximisation score (mutual information "
                           "between a target sample and its predicted class)",
}
# Pre-registered on 2026-12-04, before any run's BNM was computed (the previous rule,
# staged_snd, picked the collapsing entropy-minimisation cell on both MobileNetV2 tasks and
# source only on USPS -> MNIST: docs/RESULTS.md of 50c7b5f): BNM because it scores low for
# a collapse by construction and was the best target-only validator of Musgrave et al. 2022's
# 1,000,000-checkpoint benchmark. Whoever chose it had seen that grid's target accuracies.
DEFAULT_RULE = "staged_bnm"
# Adapting to the target costs some source accuracy (2-4 points for MCC, IM and CDAN+E on frozen
# MobileNetV2 features of SIRI-WHU -> AID); a collapsed or source-breaking run loses far more.
# First set at 0.01, which excluded every adapted run of the accuracy grid's first D4 run;
# widened to 0.05 after that run (whose target accuracies were printed): see docs/RESULTS.md.
SOURCE_GUARD = 0.05
_SCORE_KEY = {"source_val": "source_val_acc", "entropy": "target_entropy",
              "staged_bnm": "target_bnm", "staged_im": "target_im"}


def score(run: dict, rule: str) -> float | None:
    """What ``rule`` maximises for ``run`` (None: the run lacks that score)."""
    v = run.get(_SCORE_KEY.get(rule, "target_snd"))
    return None if v is None else (-v if rule == "entropy" else v)


def select(runs: list[dict], rule: str = DEFAULT_RULE, *, reference_source_val=None,
           guard: float = SOURCE_GUARD, group=None, reference_spread=None) -> dict | None:
    """The run ``rule`` (one of ``RULES``) picks from ``runs``, or None if no run has the score.

    ``reference_source_val``: for ``snd_guarded`` and the ``staged_*`` rules, a source
    validation accuracy per run (a callable ``run -> float``, e.g. its variant's source-only
    run's) or one number for all; a run below it by more than ``guard`` is not eligible (if none
    is, the guard is dropped). ``group``: for the ``staged_*`` rules, a callable ``run -> key``
    (e.g. its variant); only the runs of the group whose reference is highest are candidates
    (without ``group`` or a reference: one group). ``reference_spread``: for
    ``staged_snd_diverse``, a callable ``run -> float``, the predicted-class entropy
    (``target_pred_entropy``) of the run's source-only reference; a run below it is not
    eligible (if none is, that guard is dropped). Ties go to the earlier run (the earlier
    group)."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(RULES)}")
    scored = [r for r in runs if score(r, rule) is not None]
    staged = rule.startswith("staged_")
    ref = (None if reference_source_val is None else reference_source_val
           if callable(reference_source_val) else (lambda r, v=reference_source_val: v))
    if staged and group is not None and ref is not None:
        refs = {}                                # group -> its reference, in order of first run
        for r in scored:
            if ref(r) is not None:
                refs.setdefault(group(r), ref(r))
        if refs:
            best = max(refs, key=refs.get)  # max keeps the first of equals
            scored = [r for r in scored if group(r) == best]
    if (staged or rule == "snd_guarded") and ref is not None:
        ok = [r for r in scored if r.get("source_val_acc") is not None and ref(r) is not None
              and r["source_val_acc"] >= ref(r) - guard]
        scored = ok or scored
    if rule == "staged_snd_diverse" and reference_spread is not None:
        ok = [r for r in scored if r.get("target_pred_entropy") is not None
              and reference_spread(r) is not None
              and r["target_pred_entropy"] >= reference_spread(r) - 1e-9]
        scored = ok or scored
    if not scored:
        return None
    return max(scored, key=lambda r: score(r, rule))  # max keeps the first of equals
