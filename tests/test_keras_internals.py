"""The private Keras internals the project uses still exist and mean what we rely on; when a
Keras upgrade changes one, this fails with the name of what changed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ddc.train.keras_internals import seed_states


def _require(obj, name: str, where: str):
    if not hasattr(obj, name):
        pytest.fail(f"Keras {keras.__version__} has no {where}.{name}: update "
                    "ddc/train/keras_internals.py / ddc/train/optim.py")
    return getattr(obj, name)


def test_seed_generators_of_dropout_are_found_and_restorable():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dropout(0.5, seed=1, name="drop")(inp))
    _require(model, "_flatten_layers", "Model")
    _require(model.get_layer("drop"), "_seed_generators", "Dropout layer")
    states = seed_states(model)
    assert list(states) == ["drop/0"]
    x = np.ones((2, 4), np.float32)
    before = states["drop/0"].numpy().copy()
    first = model(x, training=True).numpy()
    assert not np.array_equal(states["drop/0"].numpy(), before)  # the state advances per draw
    states["drop/0"].assign(before)                              # restoring it redraws the mask
    np.testing.assert_array_equal(model(x, training=True).numpy(), first)


@pytest.mark.parametrize("cls,slots", [(keras.optimizers.Adam, ("_momentums", "_velocities")),
                                       (keras.optimizers.SGD, ("momentums",))])
def test_optimizer_slots_used_by_the_fused_update(cls, slots):
    v = keras.Variable(np.zeros(3, np.float32))
    opt = cls(learning_rate=0.1, **({"momentum": 0.9} if cls is keras.optimizers.SGD else {}))
    opt.build([v])
    i = _require(opt, "_get_variable_index", cls.__name__)(v)
    assert i == 0
    _require(opt, "_var_key", cls.__name__)
    for name in slots:
        slot = _require(opt, name, cls.__name__)[i]
        assert tuple(slot.shape) == (3,) and slot.dtype == tf.float32
