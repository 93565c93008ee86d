"""Evaluation on decoded arrays, and feature extraction for feature-extractor mode."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ddc.data.pipeline import eval_batches
from ddc.metrics import classification_report, mean_entropy, softmax
from ddc.selection import bnm, information_maximization, snd


def predict_arrays(predict, inputs: np.ndarray, batch_size: int):
    """Runs ``predict`` (``x -> (logits, features)``) over ``inputs`` in fixed-size batches.

    Returns:
        (logits float32 [N, K], features float32 [N, A]).
    """
    logits, feats = [], []
    n = len(inputs)
    for start, x in eval_batches(inputs, batch_size):
        lg, ft = predict(tf.convert_to_tensor(x))
        keep = min(batch_size, n - start)
        logits.append(lg.numpy()[:keep])
        feats.append(ft.numpy()[:keep])
    return np.concatenate(logits), np.concatenate(feats)


def evaluate_arrays(predict, inputs, labels, class_names, batch_size: int) -> dict:
    """The classification report of ``predict`` on ``inputs`` plus the label-free scores of its
    predictions (``logits_report``)."""
    logits, _ = predict_arrays(predict, inputs, batch_size)
    return logits_report(logits, labels, class_names)


def logits_report(logits, labels, class_names) -> dict:
    """The classification report of ``logits`` [N, K] against ``labels`` plus the label-free
    scores of the predictions (``ddc.selection``): the mean entropy, the soft neighbourhood
    density, the batch nuclear norm and the information-maximisation score."""
    report = classification_report(labels, logits.argmax(axis=1), class_names)
    p = softmax(logits)
    report["entropy"] = mean_entropy(logits)
    report["snd"] = snd(p) if len(logits) > 1 else None
    report["bnm"] = bnm(p) if len(logits) else None
    report["im"] = information_maximization(p) if len(logits) else None
    return report


def mean_softmax(predict, views, batch_size: int) -> np.ndarray:
    """float [N, K]: the softmax of ``predict``'s logits averaged over ``views`` (arrays of the
    same N inputs, e.g. the eight D4 views)."""
    total = None
    for inputs in views:
        logits, _ = predict_arrays(predict, inputs, batch_size)
        p = softmax(logits)
        total = p if total is None else total + p
    return total / len(views)


def tta_report(predict, views, labels, class_names, batch_size: int) -> dict:
    """The classification report of the view-averaged softmax (test-time augmentation)."""
    probs = mean_softmax(predict, views, batch_size)
    return classification_report(labels, probs.argmax(axis=1), class_names)
