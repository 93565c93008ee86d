"""Feature-extractor mode trains exactly the model that full-network mode trains."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from ddc.config import ConfigError, from_dict
from ddc.train import train_and_evaluate


@pytest.fixture(autouse=True)
def _own_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DDC_CACHE_DIR", str(tmp_path / "cache"))  # the feature cache too


@pytest.mark.parametrize("freeze,augment,adapt_bn", [
    ({"mode": "until", "layer": "pool1"}, False, False),
    ({"mode": "backbone"}, False, False),
    ({"mode": "until", "layer": "pool1"}, "d4", False),
    ({"mode": "backbone"}, True, False),
    ({"mode": "backbone"}, "d4", True)])
def test_features_mode_matches_full_network_mode(tmp_path, tiny_trees, freeze, augment,
                                                 adapt_bn):
    """Also with augmentation: mode "features" picks the precomputed features of the view that
    mode "train" applies to the image (the same draw), so both train the same model; also with
    a BatchNorm in the head (its moving statistics are in the checkpoints compared)."""
    base = tiny_config(*tiny_trees, steps=5, optimizer="sgd", lr=0.05)
    base["model"]["freeze"] = freeze
    base["model"]["adapt_bn"] = adapt_bn
    base["data"]["augment"] = augment
    base["deterministic"] = True
    full = train_and_evaluate(from_dict(base), tmp_path / "full")
    feat = train_and_evaluate(from_dict({**base, "mode": "features"}), tmp_path / "feat")
    assert feat["variables"]["trainable_params"] == full["variables"]["trainable_params"]
    # the cached frozen part counts as frozen (it did not read "0 frozen")
    assert feat["variables"]["frozen_params"] == full["variables"]["frozen_params"] > 0
    assert feat["features_extracted"] > 0 and full["features_extracted"] is None
    np.testing.assert_allclose(feat["target_entropy"], full["target_entropy"], rtol=1e-4)
    assert feat["target_acc"] == full["target_acc"]
    # the checkpoints hold the whole network in both modes, with the same trained weights
    a = tf.train.load_checkpoint(str(tmp_path / "full" / "checkpoints" / "ckpt-5"))
    b = tf.train.load_checkpoint(str(tmp_path / "feat" / "checkpoints" / "ckpt-5"))
    names = sorted(n for n in a.get_variable_to_shape_map() if "CHECKPOINTABLE" not in n)
    assert names == sorted(n for n in b.get_variable_to_shape_map() if "CHECKPOINTABLE" not in n)
    assert len(names) > 10  # weights, slots, step
    for n in names:
        np.testing.assert_allclose(a.get_tensor(n), b.get_tensor(n), rtol=1e-4, atol=1e-6,
                                   err_msg=n)


def test_features_mode_config_rules(tiny_trees):
    base = tiny_config(*tiny_trees)
    with pytest.raises(ConfigError, match="model.freeze.mode: expected a frozen start"):
        from_dict({**base, "mode": "features"})
    base["model"]["freeze"] = {"mode": "backbone"}
    for ok in (False, True, "flips", "d4"):  # every augmentation works on cached features
        base["data"]["augment"] = ok
        assert from_dict({**base, "mode": "features"}).data.augment == ok
    base["data"]["augment"] = "d8"
    with pytest.raises(ConfigError, match='data.augment: expected true or false, "flips" or'):
        from_dict({**base, "mode": "features"})


@pytest.mark.parametrize("mode", ["features", "train"])
def test_rescore_recomputes_the_final_evaluation_from_the_checkpoint(tmp_path, tiny_trees, mode):
    """``rescore`` rebuilds the run from its config.json and latest checkpoint: its record is
    the run's own final evaluation (so a score added later is that of the trained model)."""
    from ddc.train import RunError, rescore
    from ddc.selection import bnm, dev, information_maximization, per_sample_cross_entropy

    cfg = tiny_config(*tiny_trees, steps=4, checkpoint_every=4, eval_every=4)
    cfg.update(mode=mode, deterministic=True)
    cfg["model"]["freeze"] = {"mode": "until", "layer": "pool1"}
    cfg["align"] = {"mcc": {"weight": 1.0}}
    res = train_and_evaluate(from_dict(cfg), tmp_path / "run")
    rec = rescore(tmp_path / "run")
    assert rec["step"] == 4
    for key in ("target_acc", "target_mean_class_acc", "source_val_acc", "target_entropy",
                "target_snd", "target_bnm", "target_im", "source_val_dev"):
        assert rec[key] == pytest.approx(res[key], rel=1e-6, abs=1e-9), key
    assert 0 < res["target_bnm"] and 0 <= res["target_im"]
    # the scores are those of the trained network's target predictions, loaded independently
    from ddc.report.runs import load_eval_domain, load_run
    run = load_run(tmp_path / "run")
    dom = load_eval_domain(run, "target")
    logits, _ = run.predict(dom.images, 16)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert bnm(p) == pytest.approx(res["target_bnm"], rel=1e-5)
    assert information_maximization(p) == pytest.approx(res["target_im"], rel=1e-5)
    # the run saved those target predictions (float16, the target's order), and rescore
    # returns them too
    from ddc.paths import TARGET_PROBS
    from ddc.report.runs import load_target_probs
    saved = load_target_probs(tmp_path / "run")
    assert np.load(tmp_path / "run" / TARGET_PROBS).dtype == np.float16
    np.testing.assert_allclose(saved, p, atol=2e-3)
    np.testing.assert_allclose(rec["target_probs"], p, atol=1e-5)
    assert (saved.argmax(1) == dom.labels).mean() == pytest.approx(res["target_acc"])
    assert load_target_probs(tmp_path / "nothing") is None
    # DEV: the source validation losses weighed by a domain classifier on the features of the
    # source validation images against the target's (no target label)
    val = load_eval_domain(run, "source_val")
    val_logits, val_feats = run.predict(val.images, 16)
    _, tgt_feats = run.predict(dom.images, 16)
    expected = dev(val_feats, per_sample_cross_entropy(val_logits, val.labels), tgt_feats,
                   seed=cfg["seed"])
    assert res["source_val_dev"] == pytest.approx(expected, rel=1e-3)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert history[-1]["source_val_dev"] == res["source_val_dev"]
    with pytest.raises(RunError, match="no config.json"):
        rescore(tmp_path / "nothing")
