"""Label-free model-selection scores: how to rank runs on a target domain without its labels.

Each score reads the target's softmax predictions only (never its labels):

* ``snd``: soft neighbourhood density (Saito et al. 2021, "Tune it the right way"). Rows of the
  target softmax matrix are L2-normalised; each sample's similarities to every *other* sample,
  divided by a temperature (0.05 in the paper), go through a softmax; SND is the mean entropy of
  those neighbourhood distributions. Higher is better: predictions that form dense clusters.
* ``neg_entropy``: minus the mean prediction entropy. Higher is better: confident predictions
  (which a collapsed model also has, so it is a weak rule alone).

The rules that also read source validation accuracy live in the accuracy benchmark's report.
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


def scores(logits) -> dict:
    """Every label-free score of target ``logits`` [N, K], higher is better."""
    return {"snd": snd(softmax(logits)), "neg_entropy": -mean_entropy(logits)}
