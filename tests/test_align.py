"""Alignment terms through the real training loop: every registered term runs from the demo
config, writes its TensorBoard tags, resumes exactly; an old ``mmd:`` config trains exactly as
the MMD step did before terms existed."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ddc.align import REGISTRY
from ddc.train.step import TrainStep
from test_cli import read_scalars

REPO = Path(__file__).resolve().parents[1]
# the demo config, shrunk to seconds: 6 steps of 8 + 8 images at 16 px
TINY = ["data.source.max_per_class=16", "data.target.max_per_class=16", "data.image_size=16",
        "train.batch_size=8", "train.eval_batch_size=32", "train.steps=6", "train.eval_every=6",
        "train.log_every=1", "train.checkpoint_every=3", "train.keep_checkpoints=5",
        "deterministic=true"]
# each term once, and the variants with code paths of their own
VARIANTS = {name: {name: {"weight": 1.0}} for name in REGISTRY}
VARIANTS["cdan_e_randomized"] = {"cdan": {"weight": 1.0, "entropy_conditioning": True,
                                          "max_dim": 64, "random_dim": 32}}
VARIANTS["dan_pooled"] = {"dan": {"weight": 1.0, "layers": ["pooled", "features", "logits"]}}
VARIANTS["mmd_plus_mcc"] = {"mmd": {"weight": 1.0, "schedule": "warmup"}, "mcc": {"weight": 0.5}}
OWN_VARIABLES = {"dann", "cdan", "mdd", "cdan_e_randomized"}


def _train(workdir, spec, capsys):
    from ddc.cli import train_main
    code = train_main(["--config", str(REPO / "configs" / "demo.json"), "--workdir", str(workdir),
                       "--set", f"align={json.dumps(spec)}", *sum((["--set", s] for s in TINY), [])])
    assert code == 0, capsys.readouterr().err[-2000:]


def _tensors(ckpt_prefix: str) -> dict:
    r = tf.train.load_checkpoint(ckpt_prefix)
    return {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH" and "save_counter" not in k}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_term_trains_logs_and_resumes_exactly(variant, tmp_path, capsys):
    spec = VARIANTS[variant]
    full = tmp_path / "full"
    _train(full, spec, capsys)
    scalars = read_scalars(full / "tensorboard")
    for name, opts in spec.items():
        term = REGISTRY[name]
        assert f"train/align/{name}" in scalars, (name, sorted(scalars))
        values = [v for _, v in scalars[f"train/align/{name}"]]
        assert len(values) == 6 and all(np.isfinite(values)), values
        from ddc.align import term_class
        for diag in term_class(name).diagnostics:
            assert f"train/align/{name}/{diag}" in scalars, diag
        assert f"lambda/{name}" in scalars, term
    final = _tensors(str(full / "checkpoints" / "ckpt-6"))
    if variant in OWN_VARIABLES:  # the term's own variables are in the checkpoint
        name = next(iter(spec))
        assert any(k.startswith(f"align/{name}/") for k in final), sorted(final)[:20]

    # a run killed after its step-3 checkpoint and resumed ends where the uninterrupted one did
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for p in part.glob("checkpoints/ckpt-6.*"):
        p.unlink()
    (part / "results.json").unlink()
    (part / "checkpoints" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-3"\n')
    _train(part, spec, capsys)
    assert "resumed from" in (part / "train.log").read_text()
    resumed = _tensors(str(part / "checkpoints" / "ckpt-6"))
    assert resumed.keys() == final.keys()
    for k in final:
        np.testing.assert_array_equal(resumed[k], final[k], err_msg=k)


def test_old_mmd_config_trains_exactly_as_the_mmd_step_did(tmp_path, monkeypatch):
    """The first 20 step losses and the final weights of an old ``mmd:`` config equal those
    recorded from the code before alignment terms existed (tests/data/mmd_step_reference.json,
    deterministic CPU run)."""
    from ddc.config import from_dict
    from ddc.train import train_and_evaluate

    ref = json.loads((REPO / "tests" / "data" / "mmd_step_reference.json").read_text())
    assert "mmd" in ref["config"] and "align" not in ref["config"]
    losses, call = [], TrainStep.__call__

    def recording(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        losses.append([float(out["total_loss"]), float(out["cls_loss"]), float(out["align/mmd"])])
        return out

    monkeypatch.setattr(TrainStep, "__call__", recording)
    train_and_evaluate(from_dict(ref["config"]), tmp_path / "run")
    assert len(losses) == 20
    # bitwise on the CPU that recorded it (Intel Xeon); oneDNN's kernels round differently on
    # other CPUs (AMD EPYC: 6.7e-5 at most over the 20 steps), far below a changed step's effect
    np.testing.assert_allclose(losses, ref["losses"], rtol=1e-4, atol=2e-4)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")))
    for i, (shape, total, norm) in enumerate(ref["weights"]):
        v = reader.get_tensor(f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        v = v.astype(np.float64)
        assert list(v.shape) == shape
        # the sum of a variable's elements cancels (AMD EPYC: 3.4e-3 off a sum of -7.07 whose
        # norm agrees to 1e-5; -115.26 against -115.16 for a larger one): loose tolerances
        np.testing.assert_allclose(v.sum(), total, rtol=3e-3, atol=2e-2, err_msg=f"variable {i} sum")
        np.testing.assert_allclose(np.sqrt((v ** 2).sum()), norm, rtol=1e-3, atol=1e-4,
                                   err_msg=f"variable {i} norm")
