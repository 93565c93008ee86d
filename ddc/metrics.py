"""Classification metrics in numpy: accuracy, per-class accuracy, confusion matrix, macro-F1.

Target domains have other class frequencies than the source (AID is 21% residential, SIRI-WHU
9%), so every report gives the mean per-class accuracy beside the overall accuracy.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """[K, K] counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, int), np.asarray(preds, int)), 1)
    return cm


def classification_report(labels, preds, class_names: list) -> dict:
    """Overall and per-class accuracy, mean per-class accuracy, macro-F1 and counts.

    Classes without a true example get per-class accuracy ``None`` and are left out of the
    means; precision of a class never predicted is 0.
    """
    k = len(class_names)
    cm = confusion_matrix(labels, preds, k)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    present = support > 0
    recall = np.where(present, tp / np.maximum(support, 1), np.nan)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    denom = precision + np.nan_to_num(recall)
    f1 = np.where(denom > 0, 2 * precision * np.nan_to_num(recall) / np.where(denom > 0, denom, 1), 0.0)
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "mean_class_accuracy": float(np.nanmean(recall)) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class_accuracy": {c: (None if not present[i] else float(recall[i]))
                               for i, c in enumerate(class_names)},
        "per_class_f1": {c: float(f1[i]) for i, c in enumerate(class_names)},
        "counts": {c: int(support[i]) for i, c in enumerate(class_names)},
        "n": n,
        "confusion": cm.tolist(),
    }


def mean_entropy(logits) -> float:
    """Mean entropy (nats) of the softmax predictions: a label-free model-selection signal."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return float(-(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1).mean())


def softmax(logits) -> np.ndarray:
    """Row-wise softmax probabilities float64 [N, K] of ``logits`` [N, K] (each row sums to 1)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)
