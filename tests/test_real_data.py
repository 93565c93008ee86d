"""Short runs of the shipped configs on the real datasets and weights (skipped without them)."""

import json

import pytest

from conftest import DATA_ROOT, REPO, WEIGHTS_ROOT, needs_data, needs_weights
from test_cli import TAGS, read_scalars, run_cli


@needs_data
@needs_weights
def test_siri_whu_config_short_run_writes_the_curves(tmp_path):
    work = tmp_path / "siri"
    r = run_cli("--config", "configs/siri_whu.json", "--workdir", str(work),
                "--data-root", str(DATA_ROOT), "--weights-root", str(WEIGHTS_ROOT),
                "--set", "train.steps=4", "--set", "train.eval_every=2", "--set", "train.log_every=1",
                "--set", "train.batch_size=8", "--set", "data.image_size=64",
                "--set", "data.source.max_per_class=8", "--set", "data.target.max_per_class=4")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((work / "results.json").read_text())
    # SIRI-WHU water has no AID counterpart; AID's three residential classes map onto one
    assert res["dropped_classes"]["data.source"] == ["water"]
    assert res["dropped_classes"]["data.target"] == []
    assert len(res["classes"]) == 11
    assert res["target_counts"]["residential"] == 12 and res["target_counts"]["river"] == 4
    assert res["variables"]["frozen_variables"] > 0
    scalars = read_scalars(work / "tensorboard")
    # each term of the shipped recipe in place of the DDC tags of TAGS, at its λ
    terms = json.loads((REPO / "configs/siri_whu.json").read_text())["align"]
    for term, opts in terms.items():
        for tag in [t.replace("mmd", term) for t in TAGS if "bandwidth" not in t]:
            assert tag in scalars, tag
        assert len(scalars[f"train/align/{term}"]) == 4
        assert scalars[f"lambda/{term}"][0][1] == pytest.approx(opts["weight"])
    assert res["target_snd"] is not None and res["target_bnm"] > 0
    log = (work / "train.log").read_text()
    assert "dropping classes without a counterpart: water" in log


@needs_data
def test_usps_mnist_config_short_run(tmp_path):
    work = tmp_path / "digits"
    r = run_cli("--config", "configs/usps_mnist.json", "--workdir", str(work),
                "--data-root", str(DATA_ROOT), "--set", "train.steps=3",
                "--set", "data.source.max_per_class=10", "--set", "data.target.max_per_class=10")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((work / "results.json").read_text())
    assert res["classes"] == [str(i) for i in range(10)]
    assert sum(res["target_counts"].values()) == 100
