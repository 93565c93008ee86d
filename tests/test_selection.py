"""Label-free selection scores and the pseudo-label loss against slow numpy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from ddc.losses import pseudo_label_loss, pseudo_label_mask
from ddc.selection import scores, snd


def _snd_loops(p, t=0.05):
    n = len(p)
    q = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in p]
    total = 0.0
    for i in range(n):
        sims = [sum(a * b for a, b in zip(q[i], q[j])) / t for j in range(n) if j != i]
        m = max(sims)
        e = [math.exp(s - m) for s in sims]
        z = sum(e)
        total += -sum((v / z) * math.log(v / z) for v in e if v > 0)
    return total / n


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n,k,t,chunk", [(7, 3, 0.05, 1024), (23, 5, 0.05, 4), (10, 4, 0.5, 3)])
def test_snd_matches_loops(n, k, t, chunk):
    p = _softmax(np.random.default_rng(n).normal(0, 3, (n, k)))
    assert snd(p, t, chunk=chunk) == pytest.approx(_snd_loops(p.tolist(), t), rel=1e-10)


def test_snd_is_invariant_to_sample_order_and_refuses_bad_input():
    p = _softmax(np.random.default_rng(1).normal(0, 2, (30, 4)))
    assert snd(p[::-1]) == pytest.approx(snd(p), rel=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        snd(p[:1])
    with pytest.raises(ValueError, match="temperature"):
        snd(p, temperature=0)


def test_snd_prefers_clustered_predictions_over_scattered_ones():
    rng = np.random.default_rng(2)
    clustered = _softmax(np.eye(4)[rng.integers(0, 4, 200)] * 8 + rng.normal(0, 0.1, (200, 4)))
    scattered = _softmax(rng.normal(0, 1.5, (200, 4)))
    assert snd(clustered) > snd(scattered)
    s = scores(np.log(clustered))
    assert s["snd"] == pytest.approx(snd(clustered), rel=1e-9) and s["neg_entropy"] < 0


def _mask_loops(logits, threshold, fraction):
    p = _softmax(logits.astype(np.float64))
    conf, cls = p.max(axis=1), p.argmax(axis=1)
    out = []
    for i in range(len(p)):
        peers = [j for j in range(len(p)) if cls[j] == cls[i]]
        rank = sum(1 for j in peers if conf[j] > conf[i] or (conf[j] == conf[i] and j < i))
        out.append(float(conf[i] >= threshold or rank < math.ceil(fraction * len(peers))))
    return np.array(out)


@pytest.mark.parametrize("threshold,fraction", [(0.9, 0.0), (0.6, 0.5), (0.99, 0.25), (1.0, 1.0)])
def test_pseudo_label_mask_and_loss_match_loops(threshold, fraction):
    logits = np.random.default_rng(3).normal(0, 2.5, (40, 5)).astype(np.float32)
    logits[5] = logits[6]                                   # a tie: broken by index
    want = _mask_loops(logits, threshold, fraction)
    got = pseudo_label_mask(logits, threshold, fraction).numpy()
    np.testing.assert_array_equal(got, want)
    p = _softmax(logits.astype(np.float64))
    ce = -np.log(p[np.arange(40), p.argmax(axis=1)])
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss, coverage = pseudo_label_loss(x, threshold, fraction)
    assert float(loss) == pytest.approx((want * ce).mean(), rel=1e-5)
    assert float(coverage) == pytest.approx(want.mean())
    # the labels and mask are constants: the gradient is cross-entropy's towards the argmax
    onehot = np.eye(5)[p.argmax(axis=1)]
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(),
                               want[:, None] * (p - onehot) / 40, atol=1e-6)


def test_class_balanced_selection_labels_a_class_below_the_threshold():
    logits = np.array([[6.0, 0, 0], [5.0, 0, 0], [0, 1.0, 0], [0, 0.8, 0], [0, 0.5, 0]],
                      np.float32)
    assert pseudo_label_mask(logits, 0.9, 0.0).numpy().tolist() == [1, 1, 0, 0, 0]
    # class 1 never reaches 0.9; its most confident two of three (ceil(0.5 * 3)) are labelled
    assert pseudo_label_mask(logits, 0.9, 0.5).numpy().tolist() == [1, 1, 1, 1, 0]


def test_select_by_each_rule_and_the_guard_against_collapse():
    from ddc.selection import RULES, select
    runs = [{"id": "a", "source_val_acc": 0.90, "target_entropy": 0.8, "target_snd": 5.0},
            {"id": "b", "source_val_acc": 0.93, "target_entropy": 0.5, "target_snd": 6.0},
            {"id": "collapsed", "source_val_acc": 0.40, "target_entropy": 0.01,
             "target_snd": 7.5},
            {"id": "old", "source_val_acc": 0.95, "target_entropy": None, "target_snd": None}]
    picks = {rule: select(runs, rule, reference_source_val=0.92)["id"] for rule in RULES}
    assert picks == {"source_val": "old", "entropy": "collapsed", "snd": "collapsed",
                     "snd_guarded": "b", "staged_snd": "b", "staged_snd_diverse": "b"}
    # a per-run reference (each run's own source-only run); none eligible: the guard is dropped
    assert select(runs, "snd_guarded", reference_source_val=lambda r: 0.99)["id"] == "collapsed"
    assert select(runs[3:], "snd") is None
    with pytest.raises(ValueError, match="unknown selection rule"):
        select(runs, "target_acc")


def test_staged_snd_picks_the_input_by_source_accuracy_then_the_method_by_snd():
    from ddc.selection import select

    def run(variant, method, val, snd):
        return {"id": f"{variant}/{method}", "variant": variant, "method": method,
                "source_val_acc": val, "target_snd": snd, "target_entropy": 0.1}
    runs = [run("128", "source_only", 0.88, 5.90), run("128", "im", 0.87, 6.049),
            run("224", "source_only", 0.90, 5.95), run("224", "mcc", 0.89, 6.044),
            run("224", "collapsed", 0.30, 7.00), run("224", "im", 0.88, 6.00)]
    ref = {r["variant"]: r["source_val_acc"] for r in runs if r["method"] == "source_only"}

    def pick(rs, rule):
        return select(rs, rule, reference_source_val=lambda r: ref[r["variant"]],
                      group=lambda r: r["variant"])["id"]
    # SND over everything takes the 128 px cell (or the collapsed one without the guard) ...
    assert pick(runs, "snd_guarded") == "128/im" and pick(runs, "snd") == "224/collapsed"
    # ... staged: 224 px (its source only validates best), then the guarded SND within it
    assert pick(runs, "staged_snd") == "224/mcc"
    # the stage-one order follows the references, not the order of the runs
    assert pick(runs[::-1], "staged_snd") == "224/mcc"
    ref["128"] = 0.95
    assert pick(runs, "staged_snd") == "128/im"
    # a tie between groups goes to the earlier group; without a group: snd_guarded
    ref["128"] = ref["224"]
    assert pick(runs, "staged_snd") == "128/im" and pick(runs[2:] + runs[:2], "staged_snd") == "224/mcc"
    assert select(runs, "staged_snd", reference_source_val=0.9)["id"] == "128/im"


def test_predicted_class_entropy_and_the_diversity_guard():
    from ddc.selection import predicted_class_entropy, scores, select
    assert predicted_class_entropy([5, 0, 0]) == 0.0
    assert predicted_class_entropy([2, 2, 2, 2]) == pytest.approx(np.log(4))
    p = np.array([6, 3, 1]) / 10
    want = -sum(q * np.log(q) for q in p)
    assert predicted_class_entropy([6, 3, 1]) == pytest.approx(want)
    # a confusion matrix (rows: labels, columns: predictions): its column sums, whatever the rows
    conf = [[4, 1, 0], [2, 2, 1], [0, 0, 0]]
    assert predicted_class_entropy(conf) == pytest.approx(predicted_class_entropy([6, 3, 1]))
    with pytest.raises(ValueError, match="non-negative counts"):
        predicted_class_entropy([0, 0])
    logits = np.log(np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    assert scores(logits)["pred_class_entropy"] == pytest.approx(predicted_class_entropy([2, 0, 1]))

    def run(name, snd, spread):
        return {"id": name, "variant": "v", "source_val_acc": 0.9, "target_snd": snd,
                "target_entropy": 0.1, "target_pred_entropy": spread}
    runs = [run("source_only", 5.0, 2.0), run("mcc", 6.0, 2.2),
            run("entropy", 6.3, 1.6)]  # the highest SND: its predictions on fewer classes
    kw = dict(reference_source_val=0.9, group=lambda r: r["variant"],
              reference_spread=lambda r: 2.0)
    assert select(runs, "staged_snd", **kw)["id"] == "entropy"
    assert select(runs, "staged_snd_diverse", **kw)["id"] == "mcc"
    # no run as spread as the reference: the guard is dropped
    assert select(runs, "staged_snd_diverse", **{**kw, "reference_spread": lambda r: 9.0})["id"] == "entropy"
