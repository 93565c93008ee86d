"""Config loading: unknown keys, wrong types and impossible values name the key."""

import json

import pytest

from ddc.config import Config, ConfigError, apply_overrides, from_dict, load

REPO_CONFIGS = ["demo", "siri_whu", "siri_whu_finetune", "siri_whu_ddc", "usps_mnist",
                "usps_mnist_ddc"]


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
    ("align.mmd.weight", -0.1, "align.mmd.weight: expected a number >= 0"),
    ("align.mcc.temperature", 0, "align.mcc.temperature: expected a number > 0"),
    ("align.mcc.temprature", 1, "align.mcc.temprature: unknown key"),
    ("align.dann.hidden", [0], "align.dann.hidden: expected a list of positive integers"),
    ("align.cdan.schedule", "ramp", "align.cdan.schedule: expected one of"),
    ("align.mmd", 1, "align.mmd: expected an object"),
    ("align.mdd.margin", -1, "align.mdd.margin: expected a number > 0"),
    ("align", [], "align: expected an object"),
    ("train.steps", 0, "train.steps: expected an integer > 0"),
    ("model.backbone", "vgg99", "model.backbone: expected one of"),
    ("align.mmd.estimator", "quadratic", "align.mmd.estimator: expected one of"),
    ("mmd.estimator", "quadratic", "mmd.estimator: expected one of"),
    ("train.precision", "float8", "train.precision: expected one of"),
    ("data.val_fraction", 1.0, "data.val_fraction: expected a number in [0, 1)"),
    ("train.label_smoothing", 1.0, "train.label_smoothing: expected a number in [0, 1)"),
    ("train.label_smoothing", -0.1, "train.label_smoothing: expected a number in [0, 1)"),
    ("align.mmd.multipliers", [], "align.mmd.multipliers: expected a non-empty list"),
    ("align.jmmd.multipliers", [1, -1], "align.jmmd.multipliers: expected a non-empty list"),
    ("model.freeze.mode", "half", "model.freeze.mode: expected one of"),
    ("model.adapt_bn", "yes", "model.adapt_bn: expected true or false"),
    ("data.source", "x", "data.source: expected an object"),
])
def test_bad_values_name_the_key(path, value, expect):
    with pytest.raises(ConfigError) as e:
        from_dict(with_(path, value))
    assert str(e.value).startswith(expect), str(e.value)
    assert "\n" not in str(e.value)


def test_adapt_bn_needs_an_adaptation_layer():
    d = with_("model.adapt_width", 0)
    d["model"]["adapt_bn"] = True
    with pytest.raises(ConfigError, match=r"^model.adapt_bn: expected false without an "):
        from_dict(d)
    d["model"]["adapt_width"] = 8
    assert from_dict(d).model.adapt_bn is True


def test_estimator_batch_rules():
    d = with_("align.mmd.estimator", "linear")
    d["train"] = {"batch_size": 5}
    with pytest.raises(ConfigError, match="train.batch_size: expected an even integer"):
        from_dict(d)
    d["train"]["batch_size"] = 6
    assert from_dict(d).train.batch_size == 6
    d = with_("align.mmd.estimator", "unbiased")
    d["train"] = {"batch_size": 1}
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer >= 2"):
        from_dict(d)
    d["align"]["mmd"]["weight"] = 0.0  # an inactive term: no estimator constraint
    assert from_dict(d).train.batch_size == 1


def test_domain_needs_exactly_one_source():
    d = base()
    d["data"]["source"] = {"root": "x", "synthetic": "shapes-plain"}
    with pytest.raises(ConfigError, match="data.source: expected exactly one of"):
        from_dict(d)


def test_overrides_and_types(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(base()))
    cfg = load(p, ["train.lr=0.5", "align.mmd.kernel=linear", "model.freeze.mode=backbone",
                   "train.steps=7"])
    assert cfg.train.lr == 0.5 and cfg.align["mmd"].kernel == "linear" and cfg.train.steps == 7
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


def test_align_overrides_replace_or_add_one_term(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({**base(), "align": {"mmd": {"weight": 0.25}}}))
    cfg = load(p, ["align.mcc.weight=1"])                       # adds a term
    assert list(cfg.align) == ["mmd", "mcc"] and cfg.align["mcc"].weight == 1.0
    assert cfg.align["mcc"].temperature == 2.5                  # the term's own default
    cfg = load(p, ['align={"coral": {"weight": 2}}'])           # replaces the mapping
    assert list(cfg.align) == ["coral"] and cfg.align["coral"].weight == 2.0
    assert load(p, ["align={}"]).align == {}                     # source only
    with pytest.raises(ConfigError, match=r"^align\.coarl: unknown method \(known: mmd, "):
        load(p, ["align.coarl.weight=1"])
    round_trip = from_dict(load(p, ["align.im.weight=0.5"]).to_dict())
    assert round_trip.align["im"].weight == 0.5 and round_trip.align["mmd"].weight == 0.25


def test_legacy_mmd_block_becomes_align_mmd():
    old = {**base(), "mmd": {"weight": 0.5, "estimator": "unbiased"}}
    cfg = from_dict(old)
    assert list(cfg.align) == ["mmd"]
    assert (cfg.align["mmd"].weight, cfg.align["mmd"].estimator) == (0.5, "unbiased")
    assert cfg.to_dict()["align"]["mmd"]["kernel"] == "gaussian"
    assert from_dict({**base(), "mmd": {"weight": 0.0}}).align == {}       # source only
    assert from_dict({**base(), "mmd": {}}).align["mmd"].weight == 0.25   # the old default
    with pytest.raises(ConfigError, match="^mmd: this config has an align mapping"):
        from_dict({**base(), "mmd": {"weight": 0.0}, "align": {}})
    with pytest.raises(ConfigError, match="^mmd.estimator: expected one of"):
        from_dict({**base(), "mmd": {"estimator": "quadratic"}})


@pytest.mark.parametrize("override,key", [
    ("train.lr=Infinity", "train.lr"), ("train.lr=NaN", "train.lr"),
    ("train.momentum=-Infinity", "train.momentum"), ("align.mmd.weight=NaN", "align.mmd.weight"),
    ("align.mmd.multipliers=[1, Infinity]", "align.mmd.multipliers"),
    ("data.val_fraction=NaN", "data.val_fraction"),
])
def test_non_finite_numbers_are_refused_with_the_key(tmp_path, override, key):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(base()))
    with pytest.raises(ConfigError) as e:
        load(p, [override])
    assert str(e.value).startswith(f"{key}: expected finite numbers"), str(e.value)


def test_unreadable_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load(tmp_path)
    notepad = tmp_path / "notepad.json"          # UTF-16 with a byte-order mark
    notepad.write_bytes(json.dumps(base()).encode("utf-16"))
    assert load(notepad).data.source.synthetic == "shapes-plain"
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(base()).encode())
    assert load(bom).data.source.synthetic == "shapes-plain"
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x00\xff\xfe\x80 not text")
    with pytest.raises(ConfigError) as e:
        load(binary)
    assert str(e.value).startswith(str(binary)) and "UTF-8" in str(e.value)
