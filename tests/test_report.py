"""Reports: metrics, A-distance, embeddings, run loading, and the evaluate/predict/compare CLIs
on two tiny synthetic runs (DDC and its lambda = 0 baseline) trained once for this module."""

import csv
import io
import json
import shutil

import numpy as np
import pytest

from conftest import write_image

from ddc.metrics import classification_report, softmax
from ddc.report.adistance import fit_logistic, proxy_a_distance
from ddc.report.embedding import knn_agreement, pca, tsne


# ----------------------------------------------------------------------------- numeric

def test_classification_report_matches_hand_computed_values():
    # true:  a a a b b c      classes a, b, c, d (d has no example and is never predicted)
    # pred:  a a b b c c
    rep = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c", "d"])
    assert rep["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["per_class_accuracy"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 1.0, "d": None})
    assert rep["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precision a 2/2, b 1/2, c 1/2; F1 = 2PR / (P + R)
    f1 = {"a": 2 * 1 * (2 / 3) / (1 + 2 / 3), "b": 0.5, "c": 2 * 0.5 * 1 / 1.5, "d": 0.0}
    assert rep["per_class_f1"] == pytest.approx(f1)
    assert rep["macro_f1"] == pytest.approx((f1["a"] + f1["b"] + f1["c"]) / 3)
    assert rep["counts"] == {"a": 3, "b": 2, "c": 1, "d": 0}
    assert rep["n"] == 6


def test_softmax_rows_sum_to_one_and_match_reference():
    z = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0], [-5.0, 2.0, 1.0]])
    p = softmax(z)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    ref = np.exp(z[2]) / np.exp(z[2]).sum()
    np.testing.assert_allclose(p[2], ref)
    np.testing.assert_allclose(p[0], softmax(z[:1] - 1000.0)[0])


def test_proxy_a_distance_identical_near_zero_separated_near_two():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(200, 32)), 0)
    b = np.maximum(rng.normal(size=(200, 32)), 0)
    assert abs(proxy_a_distance(a, a.copy())["a_distance"]) < 0.1
    assert abs(proxy_a_distance(a, b)["a_distance"]) < 0.5          # same distribution
    far = proxy_a_distance(a, b + 3.0)
    assert far["a_distance"] > 1.9 and far["error"] < 0.03
    mid = proxy_a_distance(a, b + 0.3)["a_distance"]
    assert 0.3 < mid < 1.99                                         # partly separable
    with pytest.raises(ValueError):
        proxy_a_distance(a, b[:, :5])


def test_logistic_regression_matches_gradient_condition():
    # At the optimum the gradient of mean log-loss + l2/2 |w|^2 (bias unpenalised) is zero.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)
    w = fit_logistic(x, y, l2=0.1)
    xb = np.hstack([x, np.ones((120, 1))])
    p = 1 / (1 + np.exp(-xb @ w))
    grad = xb.T @ (p - y) / 120 + 0.1 * np.r_[w[:-1], 0.0]
    np.testing.assert_allclose(grad, 0.0, atol=1e-7)
    assert w[0] > 0.5


def test_pca_matches_covariance_eigenvectors():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    y = pca(x)
    xc = x - x.mean(axis=0)
    vals, vecs = np.linalg.eigh(np.cov(xc, rowvar=False))
    ref = xc @ vecs[:, ::-1][:, :2]
    for k in range(2):  # equal up to the sign of each axis
        assert np.allclose(y[:, k], ref[:, k], atol=1e-8) or np.allclose(y[:, k], -ref[:, k], atol=1e-8)


def test_tsne_keeps_clusters_apart():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 30)
    x = rng.normal(size=(120, 20)) + 6.0 * np.eye(20)[labels]
    y = tsne(x, iterations=300, seed=0)
    assert y.shape == (120, 2) and np.isfinite(y).all()
    # each point's 5 nearest neighbours in the embedding share its cluster
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :5]
    assert (labels[nn] == labels[:, None]).mean() > 0.95
    assert knn_agreement(x, y, 10) > knn_agreement(x, rng.normal(size=(120, 2)), 10) + 0.2
    np.testing.assert_allclose(tsne(x, iterations=300, seed=0), y)  # deterministic


# ----------------------------------------------------------------------------- tiny runs

def _tiny_cfg(weight: float, mode: str = "train") -> dict:
    model = {"backbone": "lenet", "adapt_width": 32}
    if mode == "features":
        model["freeze"] = {"mode": "backbone"}
    return {"name": f"tiny_w{weight}", "seed": 0, "mode": mode,
            "data": {"source": {"synthetic": "shapes-plain", "max_per_class": 12},
                     "target": {"synthetic": "shapes-textured", "max_per_class": 12},
                     "image_size": 16, "channels": 3, "val_fraction": 0.25},
            "model": model,
            "align": {"mmd": {"weight": weight}} if weight else {},
            "train": {"steps": 10, "batch_size": 8, "optimizer": "adam", "lr": 0.001,
                      "eval_every": 5, "log_every": 2, "checkpoint_every": 5,
                      "eval_batch_size": 16}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from ddc.config import from_dict
    from ddc.train import train_and_evaluate

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for key, weight, mode in (("ddc", 0.5, "train"), ("base", 0.0, "train"),
                              ("features", 0.5, "features")):
        train_and_evaluate(from_dict(_tiny_cfg(weight, mode)), root / key)
        out[key] = root / key
    return out


def test_load_run_restores_every_trained_variable(runs):
    import tensorflow as tf

    from ddc.report.runs import load_run

    run = load_run(runs["ddc"])
    assert run.step == 10 and run.checkpoint.endswith("ckpt-10")
    assert run.class_names == ["circle", "plus", "ring", "square", "triangle"]
    # The optimizer's copy of each trained variable in the file: another route to the values.
    for i, v in enumerate(run.net.model.trainable_variables):
        saved = tf.train.load_variable(run.checkpoint,
                                       f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(v.numpy(), saved)
    init = load_run(runs["ddc"], "init")
    assert init.checkpoint is None and init.step == 0
    assert not np.array_equal(init.net.model.trainable_variables[0].numpy(),
                              run.net.model.trainable_variables[0].numpy())


def test_features_mode_run_scores_as_in_training(runs):
    from ddc.report.evaluate import evaluate_run
    from ddc.report.runs import load_run

    w = runs["features"]
    m = evaluate_run(w, embedding="none", tensorboard=False)
    res = json.loads((w / "results.json").read_text())
    assert m["matches_results"] is True
    assert m["per_class_accuracy"] == pytest.approx(res["target_per_class_acc"])
    # the frozen random backbone came back from the checkpoint, not from the seed
    run, init = load_run(w), load_run(w, "init")
    for a, b in zip(run.net.backbone.weights, init.net.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(run.net.head.weights[0].numpy(), init.net.head.weights[0].numpy())


def test_load_run_rejects_checkpoint_of_another_network(runs, tmp_path):
    from ddc.report.runs import ReportError, load_run

    other = tmp_path / "other"
    shutil.copytree(runs["ddc"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["adapt_width"] = 8
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ReportError, match="does not match"):
        load_run(other)
    with pytest.raises(ReportError, match="no checkpoint for step 7"):
        load_run(runs["ddc"], 7)
    with pytest.raises(ReportError, match="not a run directory"):
        load_run(tmp_path)


def test_evaluate_cli_writes_report_matching_results(runs, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ddc.report.cli import evaluate_main

    w = runs["ddc"]
    assert evaluate_main(["--run", str(w), "--baseline-run", str(runs["base"]),
                          "--embed-per-domain", "40"]) == 0
    assert "proxy A-distance" in capsys.readouterr().out
    out = w / "eval" / "target"
    for name in ("metrics.json", "confusion.csv", "confusion.png", "predictions.csv",
                 "predictions.png", "learning_curves.png", "embedding.png"):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    res = json.loads((w / "results.json").read_text())
    assert m["step"] == 10 and m["n"] == 60
    assert m["accuracy"] == pytest.approx(res["target_acc"])
    assert m["mean_class_accuracy"] == pytest.approx(res["target_mean_class_acc"])
    assert m["per_class_accuracy"] == pytest.approx(res["target_per_class_acc"])
    assert m["matches_results"] is True
    assert sum(m["counts"].values()) == 60
    with open(out / "confusion.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == m["class_names"]
    cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_array_equal(cm, m["confusion"])
    assert cm.sum() == 60 and np.trace(cm) == round(m["accuracy"] * 60)
    with open(out / "predictions.csv") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 60
    assert np.mean([p["true"] == p["predicted"] for p in preds]) == pytest.approx(m["accuracy"])
    f = m["features"]
    assert f["before_model"].startswith("base")
    for key in ("proxy_a_distance_before", "proxy_a_distance_after"):
        assert -2.0 <= f[key]["a_distance"] <= 2.0
    acc = EventAccumulator(str(w / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"report/target/confusion_matrix", "report/learning_curves",
            "report/target/embedding", "report/target/predictions"} <= tags


def test_evaluate_earlier_checkpoint_and_other_folder(runs, tmp_path):
    from ddc.data.synthetic import make_domain
    from ddc.report.evaluate import evaluate_run

    w = runs["base"]
    m = evaluate_run(w, checkpoint=5, embedding="none", tensorboard=False)
    assert m["name"] == "target-step5" and m["step"] == 5
    assert "features" not in m and "matches_results" not in m
    best = json.loads((w / "results.json").read_text())["best_source_val_step"]
    assert evaluate_run(w, checkpoint="best", domain="source_val", embedding="none",
                        tensorboard=False)["step"] == best

    # Another folder: other folder names, mapped onto the run's classes; one unknown class.
    dom = make_domain("shapes-textured", "x", 16, 3, max_per_class=3)
    folder = tmp_path / "other_domain"
    for i, (img, y) in enumerate(zip(dom.images, dom.labels)):
        write_image(folder / f"C_{dom.class_names[y]}" / f"{i}.png", img)
    write_image(folder / "unknown" / "0.png", dom.images[0])
    cmap = {f"C_{c}": c for c in dom.class_names}
    m = evaluate_run(w, folder=folder, class_map=cmap, embedding="pca", tensorboard=False)
    assert m["name"] == "other_domain" and m["n"] == 15
    assert m["counts"] == {c: 3 for c in m["class_names"]}
    assert (w / "eval" / "other_domain" / "embedding.png").exists()
    assert m["features"]["before_model"].startswith("initial weights")


def test_predict_cli_probabilities_sum_to_one(runs, tmp_path, capsys):
    from ddc.data.synthetic import make_domain
    from ddc.report.cli import predict_main

    dom = make_domain("shapes-textured", "x", 24, 3, max_per_class=2)  # another size: resized
    folder = tmp_path / "imgs"
    for i, img in enumerate(dom.images):
        write_image(folder / "sub" / f"{i}.png", img)
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "one.jpg"
    write_image(single, dom.images[0])
    assert predict_main(["--run", str(runs["ddc"]), str(folder), str(single)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(dom.images) + 1
    names = ["circle", "plus", "ring", "square", "triangle"]
    for r in rows:
        p = np.array([float(r[f"p_{c}"]) for c in names])
        assert p.sum() == pytest.approx(1.0, abs=1e-5)
        assert r["class"] == names[int(p.argmax())]
        assert float(r["probability"]) == pytest.approx(p.max())
    out = tmp_path / "pred.csv"
    assert predict_main(["--run", str(runs["ddc"]), str(single), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert predict_main(["--run", str(runs["ddc"]), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_compare_cli_table_lists_differing_keys(runs, tmp_path, capsys):
    from ddc.report.cli import compare_main

    assert compare_main([str(runs["ddc"]), str(runs["base"])]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0]
    assert "align.mmd.weight" in header and "name" in header
    assert "train.lr" not in header                     # same in both runs
    for col in ("target acc", "mean per-class acc", "best source val acc", "steps", "wall time"):
        assert col in header
    res = json.loads((runs["base"] / "results.json").read_text())
    base_row = next(l for l in table.splitlines() if str(runs["base"]) in l)
    assert "| {} |" in base_row and f"{res['target_acc']:.4f}" in base_row  # source only
    # the two runs saved their target predictions: each has an agreement, and one is picked
    assert "agreement" in header and "Label-free pick (`staged_agree`" in table
    assert compare_main([str(runs["ddc"]), str(tmp_path)]) == 2


def _fake_run(path, align, source_val, probs):
    (path / "eval").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"name": path.name, "align": align}))
    (path / "results.json").write_text(json.dumps({"target_acc": 0.5,
                                                   "source_val_acc": source_val}))
    if probs is not None:
        np.save(path / "eval" / "target_probs.npy", np.asarray(probs, np.float16))


def test_compare_shows_each_runs_agreement_and_the_label_free_pick(tmp_path):
    from ddc.report.compare import compare_runs
    from ddc.report.runs import ReportError

    rng = np.random.default_rng(3)
    probs = {n: rng.dirichlet(np.full(4, 0.5), size=40) for n in ("so", "a", "b", "broken")}
    runs = {"so": ({}, 0.90), "a": ({"mcc": {"weight": 1}}, 0.88),
            "b": ({"im": {"weight": 1}}, 0.86), "broken": ({"mcc": {"weight": 9}}, 0.50)}
    for n, (align, val) in runs.items():
        _fake_run(tmp_path / n, align, val, probs[n])
    dirs = [tmp_path / n for n in runs]
    table = compare_runs(dirs)
    # the vote of the runs within 5 points of source only's 0.90 (not "broken"), by hand
    voters = ["so", "a", "b"]
    vote = np.mean([probs[n].astype(np.float16).astype(np.float64) for n in voters], 0).argmax(1)
    agree = {n: float((probs[n].astype(np.float16).argmax(1) == vote).mean()) for n in voters}
    rows = {n: next(l for l in table.splitlines() if l.startswith(f"| {tmp_path / n} |"))
            for n in runs}
    for n in voters:
        assert rows[n].rstrip(" |").endswith(f"{agree[n]:.4f}"), (n, rows[n])
    assert rows["broken"].rstrip(" |").endswith("—")
    best = max(voters, key=lambda n: (agree[n], -voters.index(n)))
    assert f"Label-free pick (`staged_agree` over these runs as one group): {tmp_path / best}," \
        in table and "(0.9000)" in table
    # a run without saved predictions: no pick, and the table says why
    (tmp_path / "b" / "eval" / "target_probs.npy").unlink()
    assert "No label-free pick: an eligible run has no saved target predictions" in \
        compare_runs(dirs)
    # runs of another target (fewer samples): no pick; a file that is not an array: an error
    _fake_run(tmp_path / "other", {}, 0.9, probs["a"][:10])
    assert "not the same target" in compare_runs([tmp_path / "so", tmp_path / "other"])
    (tmp_path / "other" / "eval" / "target_probs.npy").write_text("nonsense")
    with pytest.raises(ReportError, match="target_probs.npy: not a saved array"):
        compare_runs([tmp_path / "so", tmp_path / "other"])


def test_log_run_summary_writes_hparams_and_final_metrics(runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from ddc.report.tb import log_run_summary, read_scalars

    w = tmp_path / "run"
    shutil.copytree(runs["base"], w)
    cfg = json.loads((w / "config.json").read_text())
    res = json.loads((w / "results.json").read_text())
    res["target_confusion"] = [[1, 0], [1, 2]]
    res["classes"] = ["x", "y"]
    log_run_summary(w, cfg, res)
    acc = EventAccumulator(str(w / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["align"].string_value == "{}"  # source only: no alignment term
    assert info.hparams["model.backbone"].string_value == "lenet"
    assert info.hparams["data.source.class_map"].string_value == "{}"
    scalars = read_scalars(w / "tensorboard")
    steps, vals = scalars["final/target_acc"]
    assert steps.tolist() == [10] and vals[0] == pytest.approx(res["target_acc"])
    assert "eval/target_acc" in scalars  # the training curves are still read
    # DEV: computed at the final evaluation only, so one point of its curve, the final value
    steps, vals = scalars["final/source_val_dev"]
    assert vals[0] == pytest.approx(res["source_val_dev"])
    assert scalars["eval/source_val_dev"][0].tolist() == [10]
    assert len(scalars["eval/target_acc"][0]) > 1
    tags = set(acc.Tags()["tensors"])
    assert {"report/learning_curves", "report/target_confusion"} <= tags
    assert (w / "eval" / "learning_curves.png").exists()


def test_read_scalars_keeps_last_value_of_a_repeated_step(tmp_path):
    import tensorflow as tf

    from ddc.report.tb import read_scalars

    for values in ([1.0, 2.0, 3.0], [20.0, 30.0]):  # a resumed run repeats steps 2 and 3
        writer = tf.summary.create_file_writer(str(tmp_path))
        with writer.as_default():
            for s, v in zip(range(4 - len(values), 4), values):
                tf.summary.scalar("train/cls_loss", v, step=s)
        writer.close()
    steps, vals = read_scalars(tmp_path)["train/cls_loss"]
    assert steps.tolist() == [1, 2, 3] and vals.tolist() == [1.0, 20.0, 30.0]
