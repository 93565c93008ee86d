"""benchmarks/adapt_cells.py: one ADAPT method on one seed of a mode "features" config.

ADAPT is a benchmark-only package (CI does not install it): these tests are skipped without it.
"""

import json

import keras
import numpy as np
import pytest

pytest.importorskip("adapt", reason="adapt is a benchmark-only package")

from conftest import tiny_config  # noqa: E402
from ddc.config import from_dict  # noqa: E402

from benchmarks import adapt_cells  # noqa: E402

STEPS = 8  # the tiny source split has 12 images, the target 18: 5 batches of 4 per ADAPT
           # epoch, so the steps take two fit calls (5 + 3)


@pytest.fixture(autouse=True)
def _own_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DDC_CACHE_DIR", str(tmp_path / "cache"))  # the feature cache too


@pytest.fixture
def features_cfg(tiny_trees):
    c = tiny_config(*tiny_trees, steps=STEPS, optimizer="sgd", lr=0.05, momentum=0.9,
                    lr_schedule="inv")
    c.update(mode="features", deterministic=True)
    c["model"]["freeze"] = {"mode": "backbone"}
    c["data"]["source"]["max_per_class"] = 6
    c["data"]["target"]["max_per_class"] = 6
    return from_dict(c)


class StepCounter(keras.callbacks.Callback):
    """Counts gradient steps and records each step's learning rate of the task optimizer."""

    def __init__(self):
        super().__init__()
        self.steps, self.lrs = 0, []

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def test_available():
    assert adapt_cells.available() is None
    assert adapt_cells.adapt_version() == "0.4.5"


@pytest.mark.parametrize("method", adapt_cells.ADAPT_METHODS)
def test_run_adapt_cell(tmp_path, features_cfg, method):
    counter = StepCounter()
    res = adapt_cells.run_adapt_cell(method, features_cfg, 3, workdir=tmp_path / "w",
                                     callbacks=[counter])
    for key in ("target_acc", "target_mean_class_acc", "source_val_acc"):
        assert 0.0 <= res[key] <= 1.0, key
    assert counter.steps == res["steps"] == STEPS
    # the config's inv schedule at each step, on ADAPT's optimizer
    t = features_cfg.train
    want = [t.lr * (1 + 10 * i / STEPS) ** -0.75 for i in range(STEPS)]
    np.testing.assert_allclose(counter.lrs, want, rtol=1e-6)
    assert res["method"] == f"adapt_{method}" and res["adapt_version"] == "0.4.5"
    assert res["seed"] == 3 and res["lambda"] == 1.0
    assert res["train_time_s"] > 0 and res["setup_time_s"] > 0
    assert res["features_extracted"] > 0  # a fresh cache folder
    assert res["target_images"] == 18 and res["source_train_images"] == 12
    assert json.loads((tmp_path / "w" / "results.json").read_text()) == res
    assert not [p for p in (tmp_path / "w").iterdir() if p.name != "results.json"]  # no tmp


def test_same_seed_same_accuracy(tmp_path, features_cfg):
    """The second call reads the features the first one extracted; ADAPT's draws restart from
    the seed either way."""
    a = adapt_cells.run_adapt_cell("dann", features_cfg, 1, workdir=tmp_path / "a")
    b = adapt_cells.run_adapt_cell("dann", features_cfg, 1, workdir=tmp_path / "b")
    assert a["features_extracted"] > 0 and b["features_extracted"] == 0
    assert b["features_from_cache"] == a["features_extracted"]
    assert a["feature_cache_key"] == b["feature_cache_key"]
    for key in ("target_acc", "target_mean_class_acc", "source_val_acc", "target_entropy"):
        assert a[key] == b[key], key


def test_features_and_initial_head_are_our_runs(tmp_path, features_cfg):
    """The features are bit-identical to what our run's head trains on (``Run.arrays``, the same
    cache entries) and ADAPT's encoder and task start from our run's initial head."""
    import dataclasses

    from ddc import paths
    from ddc.data.prepare import prepare_data
    from ddc.train.run import Run

    cfg = dataclasses.replace(features_cfg, seed=2)
    keras.utils.set_random_seed(cfg.seed)  # as train_and_evaluate
    data = prepare_data(cfg, paths.data_root(None), paths.cache_dir())
    run = Run(cfg, tmp_path / "run", data, None, paths.cache_dir(cfg.data.cache_dir))
    ours = [w.numpy() for w in run.net.head.weights]
    keras.backend.clear_session()

    inputs = adapt_cells.prepare_inputs(cfg)
    assert inputs.setup["features_extracted"] == 0  # Run extracted them: the same entries
    for k in ("source_train", "source_val", "target"):
        assert inputs.features[k].dtype == np.float32
        np.testing.assert_array_equal(inputs.features[k], run.arrays[k], err_msg=k)
        np.testing.assert_array_equal(getattr(inputs.data, k).labels,
                                      getattr(run.data, k).labels, err_msg=k)
    encoder, task = adapt_cells.split_head(inputs.net, len(inputs.data.class_names))
    theirs = [w.numpy() for w in encoder.weights + task.weights]
    assert len(theirs) == len(ours) == 4  # adapt kernel, bias; logits kernel, bias
    for a, b in zip(theirs, ours):
        np.testing.assert_array_equal(a, b)
    # the task's argmax is the logits' argmax
    x = inputs.features["target"]
    logits = inputs.net.head(x)[0]
    np.testing.assert_array_equal(np.argmax(task(encoder(x)), 1), np.argmax(logits, 1))
    keras.backend.clear_session()


def test_refuses_a_train_mode_config(tmp_path, tiny_trees):
    cfg = from_dict(tiny_config(*tiny_trees))
    with pytest.raises(ValueError, match='mode "features"'):
        adapt_cells.run_adapt_cell("dann", cfg, 0, workdir=tmp_path / "w")
    with pytest.raises(ValueError, match="method: expected one of dann, cdan, mdd"):
        adapt_cells.run_adapt_cell("coral", cfg, 0, workdir=tmp_path / "w")
