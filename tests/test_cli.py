"""End to end: the real CLI on tiny generated class folders; TensorBoard curves; resume."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_tree, tiny_config, write_image
from ddc.config.schema import TrainConfig

TAGS = ["train/cls_loss", "train/align/mmd", "train/align/mmd/bandwidth_base", "train/total_loss",
        "train/source_acc", "train/feature_norm", "eval/source_val_acc", "eval/target_acc", "lr",
        "lambda/mmd"]


def run_cli(*args, env=None):
    e = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train_ddc.py"), *args],
                          cwd=REPO, env=e, capture_output=True, text=True, timeout=600)


def read_scalars(tb_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import tensorflow as tf
    acc = EventAccumulator(str(tb_dir), size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
        if all(v.ndim == 0 and v.dtype.kind == "f" for _, v in values):  # not images or HParams
            out[tag] = [(step, float(v)) for step, v in values]
    return out


def test_cli_end_to_end_mixed_formats(tmp_path, write_config):
    src = make_tree(tmp_path / "src", seed=1)
    tgt = make_tree(tmp_path / "tgt", seed=2, colour_shift=30)
    rng = np.random.default_rng(0)
    # odd files a real dataset has: a TIFF, another size, grayscale, plus junk to ignore
    write_image(src / "a" / "big.tif", rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    write_image(src / "b" / "gray.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    write_image(tgt / "c" / "other.jpg", rng.integers(0, 255, (23, 31, 3), dtype=np.uint8))
    (src / "a" / ".DS_Store").write_bytes(b"\0")
    cfg = write_config(tiny_config(src, tgt))
    work = tmp_path / "run"
    r = run_cli("--config", str(cfg), "--workdir", str(work))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "target accuracy:" in r.stdout
    res = json.loads((work / "results.json").read_text())
    assert res["steps"] == 6 and res["classes"] == ["a", "b", "c"]
    assert sum(res["target_counts"].values()) == 25  # 24 + the odd-sized JPEG
    assert 0.0 <= res["target_acc"] <= 1.0 and set(res["target_per_class_acc"]) == {"a", "b", "c"}
    assert json.loads((work / "config.json").read_text())["train"]["steps"] == 6
    scalars = read_scalars(work / "tensorboard")
    for tag in TAGS:
        assert tag in scalars, tag
    assert [s for s, _ in scalars["train/cls_loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in scalars["eval/target_acc"]] == [3, 6]
    assert all(np.isfinite(v) and v >= 0 for _, v in scalars["train/align/mmd"])
    assert any(v > 0 for _, v in scalars["train/align/mmd"])
    # the optimised loss: cross-entropy + lambda * MMD^2 (LeNet has no regularisation losses)
    for (_, total), (_, ce), (_, mmd) in zip(scalars["train/total_loss"], scalars["train/cls_loss"],
                                             scalars["train/align/mmd"]):
        assert total == pytest.approx(ce + 0.5 * mmd, rel=1e-5)
    assert scalars["eval/target_acc"][-1][1] == pytest.approx(res["target_acc"])


def test_cli_config_error_is_one_line_exit_2(tmp_path, write_config, tiny_trees):
    cfg = tiny_config(*tiny_trees)
    cfg["train"]["lr"] = -1
    r = run_cli("--config", str(write_config(cfg)), "--workdir", str(tmp_path / "r"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: train.lr: expected a number > 0, got -1.0"
    assert "Traceback" not in r.stderr
    r = run_cli("--config", str(write_config(tiny_config(*tiny_trees))), "--workdir",
                str(tmp_path / "r2"), "--set", "model.adapt_widht=3")
    assert r.returncode == 2 and "model.adapt_widht: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, tiny_trees, monkeypatch):
    from ddc.config import from_dict
    from ddc.train import RunInterrupted, train_and_evaluate
    from ddc.train import step as step_mod

    cfg = from_dict({**tiny_config(*tiny_trees), "deterministic": True})
    full = train_and_evaluate(cfg, tmp_path / "full")

    calls = {"n": 0}
    original = step_mod.TrainStep.__call__

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(step_mod.TrainStep, "__call__", interrupting)
    # a KeyboardInterrupt that reaches the loop is a second Ctrl-C: it may have come in the
    # middle of a step, so nothing is saved and the run resumes from the last checkpoint
    with pytest.raises(RunInterrupted, match="stopped at once during step 5"):
        train_and_evaluate(cfg, tmp_path / "resumed")
    monkeypatch.setattr(step_mod.TrainStep, "__call__", original)
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert (ckpts / "ckpt-3.index").exists() and not (ckpts / "ckpt-4.index").exists()
    resumed = train_and_evaluate(cfg, tmp_path / "resumed")
    assert resumed["steps"] == 6
    for key in ("target_acc", "source_val_acc", "target_entropy", "target_per_class_acc"):
        assert resumed[key] == full[key], key
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "resumed from" in log and "at step 3" in log


def test_cli_on_a_cpu_machine_prints_only_its_own_lines(tmp_path):
    """TensorFlow's C++ start-up notices ("Could not find cuda drivers", "failed call to
    cuInit ... (303)") are hidden unless the user set TF_CPP_MIN_LOG_LEVEL: a config error is
    the one line the user sees."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"train": {"lrr": 1}}))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "train_ddc.py"), "--config",
                        str(bad)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    # the known keys are the schema's fields: a key added to TrainConfig must not break this test
    known = ", ".join(sorted(f.name for f in dataclasses.fields(TrainConfig)))
    assert "lr" in known.split(", ") and "steps" in known.split(", ")
    assert r.stderr.splitlines() == [f"error: train.lrr: unknown key (known keys: {known})"], r.stderr
