"""Synthetic demo domains (determinism, balance, shift) and a tiny run of the demo."""

import json

import numpy as np
import pytest

from conftest import REPO
from ddc.data.images import DataError
from ddc.data.synthetic import CLASSES, DOMAINS, make_arrays, make_domain


@pytest.mark.parametrize("name", DOMAINS)
def test_domains_are_a_fixed_function_of_the_name(name):
    x1, y1 = make_arrays(name, 16, 3, 6)
    x2, y2 = make_arrays(name, 16, 3, 6)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    # a smaller max_per_class is a prefix of a larger one
    x3, y3 = make_arrays(name, 16, 3, 3)
    np.testing.assert_array_equal(x3, x1[:len(x3)])
    np.testing.assert_array_equal(y3, y1[:len(y3)])


def test_the_two_domains_are_different_images():
    a, _ = make_arrays(DOMAINS[0], 16, 3, 3)
    b, _ = make_arrays(DOMAINS[1], 16, 3, 3)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", DOMAINS)
@pytest.mark.parametrize("size,channels", [(16, 3), (24, 1), (9, 3)])
def test_shapes_dtype_and_balance(name, size, channels):
    x, y = make_arrays(name, size, channels, 4)
    assert x.dtype == np.uint8 and x.shape == (4 * len(CLASSES), size, size, channels)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y, minlength=len(CLASSES)), [4] * len(CLASSES))
    # every image shows something: the shape stands out from the background
    assert (x.reshape(len(x), -1).astype(np.float32).std(axis=1) > 10).all()


def test_domains_differ_in_colour_statistics():
    src, _ = make_arrays("shapes-plain", 24, 3, 20)
    tgt, _ = make_arrays("shapes-textured", 24, 3, 20)
    m_s = src.reshape(-1, 3).astype(np.float64).mean(axis=0)
    m_t = tgt.reshape(-1, 3).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(m_s, m_s[0], atol=1e-9)          # source is grey
    assert m_t[1] - m_t[2] > 20                                  # target has a colour cast
    assert (m_t - m_s)[:2].min() > 20                            # and a brighter background
    # and lower contrast: the per-image spread of the target is smaller
    s_s = src.reshape(len(src), -1).std(axis=1).mean()
    s_t = tgt.reshape(len(tgt), -1).std(axis=1).mean()
    assert s_t < 0.75 * s_s


def test_small_shapes_cover_less_of_the_image_with_the_same_colours():
    src, _ = make_arrays("shapes-plain", 24, 1, 40)
    tgt, _ = make_arrays("shapes-small", 24, 1, 40)
    lit = lambda x: (x > 110).reshape(len(x), -1).mean(axis=1)   # noqa: E731 (shape pixels)
    ratio = lit(tgt).mean() / lit(src).mean()
    assert 0.3 < ratio < 0.55        # area scales with 0.65 ** 2 = 0.42
    bright = lambda x: np.percentile(x.reshape(len(x), -1), 99, axis=1).mean()  # noqa: E731
    assert abs(bright(tgt) - bright(src)) < 15   # the same shape brightness


def test_make_domain_and_unknown_name():
    d = make_domain("shapes-textured", "data.target", 16, 3, max_per_class=2)
    assert len(d) == 2 * len(CLASSES) and d.class_names == list(CLASSES)
    assert d.paths[0] == "synthetic:shapes-textured#0"
    with pytest.raises(DataError, match=r"data\.source\.synthetic.*'nope'"):
        make_domain("nope", "data.source", 16, 3)


def test_demo_config_is_ddc_with_gaussian_biased_mmd():
    from ddc.config import load
    cfg = load(REPO / "configs" / "demo.json")
    assert cfg.data.source.synthetic == "shapes-plain"
    assert cfg.data.target.synthetic == "shapes-small"
    mmd = cfg.align["mmd"]
    assert list(cfg.align) == ["mmd"]
    assert mmd.weight > 0 and mmd.kernel == "gaussian" and mmd.estimator == "biased"


TINY = ["data.source.max_per_class=4", "data.target.max_per_class=4", "data.image_size=12",
        "train.batch_size=4", "train.eval_batch_size=8", "model.adapt_width=8"]


def test_demo_runs_both_methods(tmp_path, capsys):
    from ddc.demo import demo_main, format_table, run_demo
    rows = run_demo(tmp_path / "demo", steps=2, overrides=TINY)
    assert [r["method"] for r in rows] == ["ddc", "source_only"]
    assert rows[0]["lambda"] > 0 and rows[1]["lambda"] == 0
    for method in ("ddc", "source_only"):
        res = json.loads((tmp_path / "demo" / method / "results.json").read_text())
        cfg = json.loads((tmp_path / "demo" / method / "config.json").read_text())
        assert res["steps"] == 2 and 0.0 <= res["target_acc"] <= 1.0
        assert (cfg["align"] == {}) == (method == "source_only")
    table = format_table(rows)
    assert table.splitlines()[0].split()[:3] == ["method", "lambda", "seeds"]
    assert len(table.splitlines()) == 3 and "source_only" in table
    # several seeds: one line per method with mean ± std of the seeds' numbers
    two = [{**r, "target_acc": a} for r, a in zip(rows * 2, (0.5, 0.1, 0.7, 0.3))]
    lines = format_table(two).splitlines()
    assert len(lines) == 3
    assert lines[1].split()[:6] == ["ddc", f"{rows[0]['lambda']:g}", "2", "60.0", "±", "14.1%"]
    assert lines[2].split()[:6] == ["source_only", "0", "2", "20.0", "±", "14.1%"]
    # the CLI: a config without MMD is refused before any training, in one line
    bad = tmp_path / "bad.json"
    data = json.loads((REPO / "configs" / "demo.json").read_text())
    data["align"]["mmd"]["weight"] = 0
    bad.write_text(json.dumps(data))
    assert demo_main(["--config", str(bad), "--workdir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: align: the demo compares")
