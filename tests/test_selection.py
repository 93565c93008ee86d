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
    for r, (bnm, im, dev, agree) in zip(runs, [(0.30, 1.5, 0.6, 0.90), (0.20, 1.2, 0.4, 0.95),
                                               (0.05, 0.1, 3.0, 0.99), (None, None, None, None)]):
        r.update(target_bnm=bnm, target_im=im, source_val_dev=dev, target_agreement=agree)
    picks = {rule: select(runs, rule, reference_source_val=0.92)["id"] for rule in RULES}
    # the staged rules without groups: the source guard (0.92 - 0.05) keeps a, b; a scores highest
    assert picks == {"source_val": "old", "entropy": "collapsed", "snd": "collapsed",
                     "snd_guarded": "b", "staged_snd": "b", "staged_snd_diverse": "b",
                     "staged_bnm": "a", "staged_im": "a", "staged_agree": "b", "dev": "b",
                     "staged_dev": "b"}
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


def _bnm_reference(p):
    # the nuclear norm as the sum of the square roots of the eigenvalues of the smaller Gram
    # matrix, P^T P or P P^T (no SVD)
    q = np.asarray(p, np.float64)
    ev = np.linalg.eigvalsh(q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T)
    return float(np.sqrt(np.clip(ev, 0, None)).sum() / len(p))


def _im_loops(p):
    n, k = len(p), len(p[0])
    mean = [sum(row[j] for row in p) / n for j in range(k)]
    h_mean = -sum(m * math.log(m) for m in mean if m > 0)
    h_each = sum(-sum(v * math.log(v) for v in row if v > 0) for row in p) / n
    return h_mean - h_each


@pytest.mark.parametrize("n,k", [(9, 3), (40, 7), (5, 11)])
def test_bnm_and_im_match_references(n, k):
    from ddc.selection import bnm, information_maximization
    p = _softmax(np.random.default_rng(n * k).normal(0, 2, (n, k)))
    assert bnm(p) == pytest.approx(_bnm_reference(p), rel=1e-9)
    assert information_maximization(p) == pytest.approx(_im_loops(p.tolist()), rel=1e-9)
    s = scores(np.log(p))
    assert s["bnm"] == pytest.approx(bnm(p), rel=1e-9)
    assert s["im"] == pytest.approx(information_maximization(p), rel=1e-9)


def test_bnm_and_im_score_a_collapse_low_and_confident_diverse_predictions_high():
    from ddc.selection import bnm, information_maximization
    n, k = 60, 4
    collapsed = np.eye(k)[np.zeros(n, int)]
    balanced = np.eye(k)[np.arange(n) % k]
    uniform = np.full((n, k), 1 / k)
    assert bnm(collapsed) == pytest.approx(1 / np.sqrt(n))
    assert bnm(balanced) == pytest.approx(np.sqrt(k / n))
    assert bnm(uniform) == pytest.approx(1 / np.sqrt(n * k))
    assert information_maximization(balanced) == pytest.approx(np.log(k))
    assert information_maximization(collapsed) == pytest.approx(0.0, abs=1e-12)
    assert information_maximization(uniform) == pytest.approx(0.0, abs=1e-12)
    # SND ranks the collapse above the balanced predictions; BNM and IM the other way round
    assert snd(collapsed + 1e-9) > snd(balanced + 1e-9)
    with pytest.raises(ValueError, match="bnm needs"):
        bnm(np.zeros((0, 3)))


def test_staged_bnm_picks_the_input_then_the_highest_bnm_within_the_guard():
    from ddc.selection import select

    def run(variant, method, val, bnm):
        return {"id": f"{variant}/{method}", "variant": variant, "source_val_acc": val,
                "target_bnm": bnm, "target_snd": 6.0, "target_entropy": 0.1}
    runs = [run("128", "source_only", 0.88, 0.10), run("128", "mcc", 0.87, 0.30),
            run("224", "source_only", 0.90, 0.11), run("224", "mcc", 0.89, 0.25),
            run("224", "broken", 0.80, 0.40), run("224", "im", 0.88, 0.20)]
    ref = {"128": 0.88, "224": 0.90}
    kw = dict(reference_source_val=lambda r: ref[r["variant"]], group=lambda r: r["variant"])
    bnm = dict(rule="staged_bnm", **kw)
    assert select(runs, **bnm)["id"] == "224/mcc"   # not 128/mcc (other input), not broken (guard)
    assert select(runs, guard=0.2, **bnm)["id"] == "224/broken"
    # the input is chosen among every run, scored or not: without BNM in the 224 px group there
    # is no pick (not the best BNM of the other input)
    no_bnm = [{**r, "target_bnm": None} if r["variant"] == "224" else r for r in runs]
    assert select(no_bnm, **bnm) is None
    assert select(no_bnm[:2], **bnm)["id"] == "128/mcc"


# ----------------------------------------------------------------------------- agreement

def _agreement_loops(probs):
    """Each model's share of samples whose argmax is the argmax of the models' mean, by loops."""
    m, n, k = len(probs), len(probs[0]), len(probs[0][0])
    out = []
    for a in range(m):
        hits = 0
        for i in range(n):
            mean = [sum(probs[b][i][c] for b in range(m)) / m for c in range(k)]
            vote = max(range(k), key=lambda c: (mean[c], -c))
            own = max(range(k), key=lambda c: (probs[a][i][c], -c))
            hits += own == vote
        out.append(hits / n)
    return out


@pytest.mark.parametrize("m,n,k", [(1, 5, 3), (4, 50, 7), (7, 200, 11)])
def test_consensus_agreement_matches_loops(m, n, k):
    from ddc.selection import consensus_agreement
    rng = np.random.default_rng(m * n)
    probs = rng.dirichlet(np.full(k, 0.3), size=(m, n))
    got = consensus_agreement(list(probs))
    np.testing.assert_allclose(got, _agreement_loops(probs.tolist()), atol=1e-12)
    assert m > 1 or got[0] == 1.0   # one model agrees with itself
    with pytest.raises(ValueError, match=r"\[M, N, K\]"):
        consensus_agreement(probs[0])


def test_group_agreement_votes_with_eligible_runs_only_and_scores_per_group():
    from ddc.selection import DEFAULT_RULE, group_agreement, select
    assert DEFAULT_RULE == "staged_agree"
    rng = np.random.default_rng(0)
    preds = {name: [rng.dirichlet(np.ones(4), size=30) for _ in range(seeds)]
             for name, seeds in (("so", 2), ("mcc", 2), ("im", 2), ("broken", 2), ("b/so", 1))}
    runs = [{"id": "so", "variant": "a", "source_val_acc": 0.90},
            {"id": "mcc", "variant": "a", "source_val_acc": 0.88},
            {"id": "im", "variant": "a", "source_val_acc": 0.86},
            {"id": "broken", "variant": "a", "source_val_acc": 0.50},
            {"id": "b/so", "variant": "b", "source_val_acc": 0.80}]
    ref = {"a": 0.90, "b": 0.80}
    kw = dict(reference_source_val=lambda r: ref[r["variant"]], group=lambda r: r["variant"])
    got = group_agreement(runs, lambda r: preds[r["id"]], **kw)
    # group a: the six seeds of so, mcc and im vote (broken is 0.40 below its reference)
    voters = [p for name in ("so", "mcc", "im") for p in preds[name]]
    each = _agreement_loops([p.tolist() for p in voters])
    assert got[:3] == pytest.approx([np.mean(each[0:2]), np.mean(each[2:4]),
                                     np.mean(each[4:6])], abs=1e-12)
    assert got[3] is None and got[4] == 1.0   # not eligible; one run of one seed in its group
    # a group with an eligible run whose predictions are missing gets no score
    missing = group_agreement(runs, lambda r: None if r["id"] == "im" else preds[r["id"]], **kw)
    assert missing[:4] == [None] * 4 and missing[4] == 1.0
    # the rule reads the score: group a (the higher reference), then the highest agreement
    scored = [{**r, "target_agreement": a} for r, a in zip(runs, got)]
    best = max(range(3), key=lambda i: got[i])
    assert select(scored, "staged_agree", **kw)["id"] == runs[best]["id"]
    with pytest.raises(ValueError, match="differ in shape"):
        group_agreement(runs, lambda r: [p[:20] for p in preds[r["id"]]] if r["id"] == "im"
                        else preds[r["id"]], **kw)


# ----------------------------------------------------------------------------- DEV

def _dev_risk_loops(w, l):
    n = len(w)
    weighted = [w[i] * l[i] for i in range(n)]
    mean_w, mean_wl = sum(w) / n, sum(weighted) / n
    cov = sum((weighted[i] - mean_wl) * (w[i] - mean_w) for i in range(n)) / (n - 1)
    var = sum((w[i] - mean_w) ** 2 for i in range(n)) / (n - 1)
    eta = -cov / var
    return mean_wl + eta * mean_w - eta


@pytest.mark.parametrize("n", [2, 7, 300])
def test_dev_risk_and_per_sample_cross_entropy_match_loops(n):
    from ddc.selection import dev_risk, per_sample_cross_entropy
    rng = np.random.default_rng(n)
    w, l = rng.exponential(1.0, n), rng.exponential(0.5, n)
    assert dev_risk(w, l) == pytest.approx(_dev_risk_loops(w.tolist(), l.tolist()), rel=1e-9)
    # equal weights: no control variate, DEV is the plain mean loss
    assert dev_risk(np.full(n, 1.0), l) == pytest.approx(l.mean(), rel=1e-12)
    logits, labels = rng.normal(0, 3, (n, 5)), rng.integers(0, 5, n)
    ref = [math.log(sum(math.exp(v) for v in row)) - row[y]
           for row, y in zip(logits.tolist(), labels.tolist())]
    np.testing.assert_allclose(per_sample_cross_entropy(logits, labels), ref, rtol=1e-9)
    with pytest.raises(ValueError, match="dev_risk needs"):
        dev_risk(w[:1], l[:1])


def test_logistic_regression_matches_plain_gradient_descent():
    from ddc.selection import logistic_regression
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 2))
    y = (x[:, 0] + 0.5 * rng.normal(size=40) > 0.3).astype(float)
    l2 = 0.05
    w = np.zeros(3)                               # the slow obvious way: [w1, w2, bias]
    for _ in range(20000):
        g = np.zeros(3)
        for xi, yi in zip(x, y):
            p = 1 / (1 + math.exp(-(w[0] * xi[0] + w[1] * xi[1] + w[2])))
            g += (p - yi) * np.array([xi[0], xi[1], 1.0]) / len(x)
        g[:2] += l2 * w[:2]
        w -= 0.5 * g
        if np.abs(g).max() < 1e-10:
            break
    np.testing.assert_allclose(logistic_regression(x, y, l2), w, atol=1e-7)


def test_importance_weights_recover_a_gaussian_density_ratio():
    """Source N(0, I), target N(mu, I): p_t / p_s = exp(mu.x - |mu|^2 / 2), linear in x on the
    log scale, so the cross-fitted logistic domain classifier must recover it."""
    from ddc.selection import importance_weights
    rng = np.random.default_rng(0)
    mu = np.array([0.8, -0.4, 0.0, 0.0, 0.0])
    xs, xt = rng.normal(size=(1500, 5)), rng.normal(size=(3000, 5)) + mu
    w, penalty = importance_weights(xs, xt, max_target=3000)
    true = np.exp(xs @ mu - mu @ mu / 2)
    assert np.corrcoef(np.log(w), np.log(true))[0, 1] > 0.98
    assert np.abs(np.log(w) - np.log(true)).mean() < 0.15
    assert w.mean() == pytest.approx(1.0, abs=0.1)   # E_source[p_t / p_s] = 1
    assert penalty in (1e-3, 1e-2, 1e-1, 1.0)
    # the same domains: the weights stay near 1
    same, _ = importance_weights(xs, rng.normal(size=(3000, 5)))
    assert np.abs(np.log(same)).mean() < 0.1
    # wider than max_dim: three noisy copies of each of the two shifted coordinates and two
    # pure-noise dimensions; the copies' blocks lead the principal components (after
    # standardising, each block's variance is about 3, the noise's 1), so projecting the 8
    # dimensions onto 2 keeps the ratio
    def wide(x):
        copies = np.repeat(x[:, :2], 3, axis=1) + 0.1 * rng.normal(size=(len(x), 6))
        return np.hstack([copies, x[:, 3:]])
    narrow, _ = importance_weights(wide(xs), wide(xt), max_target=3000, max_dim=2)
    assert np.abs(np.log(narrow) - np.log(true)).mean() < 0.15
    kept_noise, _ = importance_weights(wide(xs)[:, 6:], wide(xt)[:, 6:], max_target=3000)
    assert np.abs(np.log(kept_noise) - np.log(true)).mean() > 0.3  # the shift is not there


def test_dev_estimates_the_target_risk_of_a_known_loss():
    """The loss is 2 where x0 > 0 and 0.1 elsewhere: the true target risk (on target samples,
    whose losses DEV never sees) is much higher for a target shifted to x0 > 0 than for one
    shifted the other way, and DEV tracks both from the source samples alone."""
    from ddc.selection import dev
    rng = np.random.default_rng(1)

    def loss(x):
        return np.where(x[:, 0] > 0, 2.0, 0.1)
    xs = rng.normal(size=(2000, 3))
    for shift in (0.7, -0.7):
        xt = rng.normal(size=(4000, 3)) + [shift, 0.0, 0.0]
        true = loss(xt).mean()
        assert dev(xs, loss(xs), xt, max_target=4000) == pytest.approx(true, rel=0.1)
    assert dev(xs, loss(xs), xs[::-1] + 0.7) > 1.2 > 0.9 > dev(xs, loss(xs), xs[::-1] - 0.7)


def test_dev_rules_pick_the_lowest_dev():
    from ddc.selection import RULES, select

    def run(variant, method, val, dev):
        return {"id": f"{variant}/{method}", "variant": variant, "source_val_acc": val,
                "source_val_dev": dev, "target_snd": 6.0, "target_entropy": 0.1}
    runs = [run("a", "source_only", 0.88, 0.9), run("a", "mcc", 0.87, 0.2),
            run("b", "source_only", 0.90, 0.8), run("b", "mcc", 0.89, 0.5),
            run("b", "im", 0.88, 0.6), {**run("b", "old", 0.9, 0.0), "source_val_dev": None}]
    ref = {"a": 0.88, "b": 0.90}
    assert {"dev", "staged_dev"} <= set(RULES)
    assert select(runs, "dev")["id"] == "a/mcc"
    assert select(runs, "staged_dev", reference_source_val=lambda r: ref[r["variant"]],
                  group=lambda r: r["variant"])["id"] == "b/mcc"


def test_leading_components_span_the_top_singular_subspace():
    """The randomised range finder against numpy's full SVD, on features whose 12 leading
    directions carry most of the variance."""
    from ddc.selection import _leading_components
    rng = np.random.default_rng(4)
    basis, _ = np.linalg.qr(rng.normal(size=(300, 300)))
    scales = np.r_[np.linspace(10, 5, 12), np.full(288, 0.3)]
    x = (rng.normal(size=(500, 300)) * scales) @ basis.T
    v = _leading_components(x, 12, np.random.default_rng(0))
    exact = np.linalg.svd(x, full_matrices=False)[2][:12].T
    cosines = np.linalg.svd(exact.T @ v, compute_uv=False)   # of the principal angles
    assert cosines.min() > 0.999
    np.testing.assert_allclose(v.T @ v, np.eye(12), atol=1e-9)
