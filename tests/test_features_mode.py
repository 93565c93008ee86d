"""Feature-extractor mode trains exactly the model that full-network mode trains."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from ddc.config import ConfigError, from_dict
from ddc.train import train_and_evaluate


@pytest.mark.parametrize("freeze", [{"mode": "until", "layer": "pool1"}, {"mode": "backbone"}])
def test_features_mode_matches_full_network_mode(tmp_path, tiny_trees, freeze):
    base = tiny_config(*tiny_trees, steps=5, optimizer="sgd", lr=0.05)
    base["model"]["freeze"] = freeze
    base["deterministic"] = True
    full = train_and_evaluate(from_dict(base), tmp_path / "full")
    feat = train_and_evaluate(from_dict({**base, "mode": "features"}), tmp_path / "feat")
    assert feat["variables"]["trainable_params"] == full["variables"]["trainable_params"]
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
    base["data"]["augment"] = True
    with pytest.raises(ConfigError, match="data.augment: expected false in mode"):
        from_dict({**base, "mode": "features"})
