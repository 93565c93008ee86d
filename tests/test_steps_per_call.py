"""``train.steps_per_call``: several steps in one traced call give the run of one call per step."""

import contextlib
import json
import re

import numpy as np
import pytest

from helpers_data import assert_clean_error, make_tree, metrics_of, tiny_config, write_config
from test_faults import saved_tensors


@pytest.fixture
def trees(tmp_path):
    return make_tree(tmp_path / "src"), make_tree(tmp_path / "tgt", seed=2, shift=30)


def test_call_length_stops_at_every_boundary():
    from ddc.config import TrainConfig
    from ddc.train.loop import _call_length

    t = TrainConfig(steps=20, steps_per_call=4, log_every=5, eval_every=6, checkpoint_every=10,
                    head_only_steps=3)
    # walk the run as the loop does: every boundary is the last step of some call
    step, head_only, ends = 0, True, []
    while step < t.steps:
        if head_only and step >= t.head_only_steps:
            head_only = False
        step += _call_length(t, step, head_only)
        ends.append(step)
    assert ends == [3, 5, 6, 10, 12, 15, 18, 20]
    assert _call_length(TrainConfig(steps_per_call=1), 7, False) == 1
    assert _call_length(TrainConfig(steps=1000, steps_per_call=8, log_every=100, eval_every=200,
                                    checkpoint_every=200), 0, False) == 8


@pytest.mark.parametrize("changes", [
    pytest.param({}, id="plain"),
    pytest.param({"align": {"mmd": {"schedule": "warmup"}}, "train": {"lr_schedule": "inv"}},
                 id="lambda_and_lr_schedules"),
    pytest.param({"model": {"dropout": 0.5}}, id="dropout"),
    pytest.param({"train": {"head_only_steps": 2, "optimizer": "sgd"}}, id="two_stage"),
    pytest.param({"train": {"precision": "mixed_float16", "lr": 0.03}}, id="float16"),
    # XLA has no max-pool gradient under op determinism; on CPU it is repeatable without it
    pytest.param({"deterministic": False, "train": {"jit_compile": True}}, id="xla"),
])
def test_steps_per_call_equals_one_call_per_step(changes, tmp_path, trees):
    """Same batches, same lambda and learning rate per step, same updates: the results, the
    eval records, the logged training curves and the final checkpoint are identical."""
    from ddc.config import from_dict
    from ddc.train import train_and_evaluate

    base = {"train": {"steps": 11, "eval_every": 4, "log_every": 3, "checkpoint_every": 11}}
    runs = {}
    with _op_determinism(changes.get("deterministic", True)):
        for per_call in (1, 3):
            raw = tiny_config(*trees, **json.loads(json.dumps(changes)))
            raw["train"].update(base["train"], steps_per_call=per_call)
            runs[per_call] = train_and_evaluate(from_dict(raw), tmp_path / f"run{per_call}")
    assert runs[3]["steps"] == 11 and runs[3]["skipped_steps"] == runs[1]["skipped_steps"]
    assert metrics_of(runs[3]) == metrics_of(runs[1])
    history = {k: (tmp_path / f"run{k}" / "metrics.jsonl").read_text() for k in runs}
    assert history[3] == history[1] and history[1].count("\n") == 3  # steps 4, 8, 11
    a = saved_tensors(tmp_path / "run1" / "checkpoints" / "ckpt-11")
    b = saved_tensors(tmp_path / "run3" / "checkpoints" / "ckpt-11")
    assert a.keys() == b.keys() and len(a) >= 20
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert int(b["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 11
    curves = {k: _train_scalars(tmp_path / f"run{k}") for k in runs}
    assert curves[3] == curves[1]
    assert sorted({s for s, _ in curves[1]["train/cls_loss"]}) == [3, 6, 9, 11]


@contextlib.contextmanager
def _op_determinism(wanted: bool):
    """TensorFlow's op determinism is process-wide and a run only ever turns it on; the XLA case
    needs it off (XLA has no deterministic max-pool gradient), so turn it off for that test."""
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    if not wanted and was:
        tf_config.disable_op_determinism()
    try:
        yield
    finally:
        if was and not tf_config.is_op_determinism_enabled():
            tf_config.enable_op_determinism()


def _train_scalars(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import tensorflow as tf

    acc = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"] if tag.startswith("train/") or tag == "lr"}


def test_non_finite_loss_inside_a_call_names_its_step(tmp_path, trees, capsys):
    from ddc.cli import train_main

    found = {}
    for per_call in (1, 4):
        cfg = tiny_config(*trees, train={"lr": 1e30, "optimizer": "sgd", "checkpoint_every": 8,
                                         "log_every": 8, "eval_every": 8, "steps": 8,
                                         "steps_per_call": per_call})
        config = write_config(tmp_path / f"c{per_call}.json", cfg)
        code = train_main(["--config", str(config), "--workdir", str(tmp_path / f"r{per_call}")])
        line = assert_clean_error(code, capsys.readouterr().err, "non-finite loss at step ",
                                  "last good checkpoint: ")
        found[per_call] = (int(re.search(r"at step (\d+)", line).group(1)),
                           line.rsplit("last good checkpoint: ", 1)[1].strip().rsplit("/", 1)[-1])
    assert found[4] == found[1]
