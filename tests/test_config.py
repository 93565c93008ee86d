"""Config loading: unknown keys, wrong types and impossible values name the key."""

import json

import pytest

from ddc.config import Config, ConfigError, apply_overrides, from_dict, load

REPO_CONFIGS = ["demo", "siri_whu", "siri_whu_finetune", "usps_mnist"]


def base():
    return {"data": {"source": {"synthetic": "shapes-plain"}, "target": {"synthetic": "shapes-textured"}}}


def with_(path, value):
    d = base()
    node = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return d


@pytest.mark.parametrize("name", REPO_CONFIGS)
def test_shipped_configs_load(name):
    from pathlib import Path
    cfg = load(Path(__file__).parents[1] / "configs" / f"{name}.json")
    assert isinstance(cfg, Config)
    # the file is fully explicit where it matters: it round-trips through to_dict
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("path,value,expect", [
    ("train.lrr", 0.1, "train.lrr: unknown key"),
    ("bogus", 1, "bogus: unknown key"),
    ("train.lr", "fast", "train.lr: expected a number"),
    ("train.steps", 1.5, "train.steps: expected an integer"),
    ("train.steps", True, "train.steps: expected an integer"),
    ("data.augment", "yes", "data.augment: expected true or false"),
    ("train.lr", 0, "train.lr: expected a number > 0"),
    ("train.lr", -1e-3, "train.lr: expected a number > 0"),
    ("mmd.weight", -0.1, "mmd.weight: expected a number >= 0"),
    ("train.steps", 0, "train.steps: expected an integer > 0"),
    ("model.backbone", "vgg99", "model.backbone: expected one of"),
    ("mmd.estimator", "quadratic", "mmd.estimator: expected one of"),
    ("train.precision", "float8", "train.precision: expected one of"),
    ("data.val_fraction", 1.0, "data.val_fraction: expected a number in [0, 1)"),
    ("mmd.multipliers", [], "mmd.multipliers: expected a non-empty list"),
    ("model.freeze.mode", "half", "model.freeze.mode: expected one of"),
    ("data.source", "x", "data.source: expected an object"),
])
def test_bad_values_name_the_key(path, value, expect):
    with pytest.raises(ConfigError) as e:
        from_dict(with_(path, value))
    assert str(e.value).startswith(expect), str(e.value)
    assert "\n" not in str(e.value)


def test_estimator_batch_rules():
    d = with_("mmd.estimator", "linear")
    d["train"] = {"batch_size": 5}
    with pytest.raises(ConfigError, match="train.batch_size: expected an even integer"):
        from_dict(d)
    d["train"]["batch_size"] = 6
    assert from_dict(d).train.batch_size == 6
    d = with_("mmd.estimator", "unbiased")
    d["train"] = {"batch_size": 1}
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer >= 2"):
        from_dict(d)
    d["mmd"]["weight"] = 0.0  # no domain loss: no estimator constraint
    assert from_dict(d).train.batch_size == 1


def test_domain_needs_exactly_one_source():
    d = base()
    d["data"]["source"] = {"root": "x", "synthetic": "shapes-plain"}
    with pytest.raises(ConfigError, match="data.source: expected exactly one of"):
        from_dict(d)


def test_overrides_and_types(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(base()))
    cfg = load(p, ["train.lr=0.5", "mmd.kernel=linear", "model.freeze.mode=backbone",
                   "train.steps=7"])
    assert cfg.train.lr == 0.5 and cfg.mmd.kernel == "linear" and cfg.train.steps == 7
    assert cfg.model.freeze.mode == "backbone"
    assert isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match="--set train.lr"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        load(p, ["train.steps=abc"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(bad)
