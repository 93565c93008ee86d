"""The private Keras internals this project relies on, in one place, each with why.

Keras 3 has no public API for these; ``tests/test_keras_internals.py`` fails with a clear
message when a Keras upgrade changes them.
"""

from __future__ import annotations

import keras


def seed_states(model: keras.Model) -> dict:
    """The state variables of the model's Keras SeedGenerators (dropout masks), by layer name.

    Keras 3 layers do not expose their SeedGenerators to ``tf.train.Checkpoint``; without this
    a resumed run would redraw the dropout masks of an uninterrupted one from the start.
    Private: ``Layer._flatten_layers`` and ``Layer._seed_generators``.
    """
    states = {}
    for layer in model._flatten_layers(include_self=False):
        for i, gen in enumerate(getattr(layer, "_seed_generators", None) or ()):
            states[f"{layer.name}/{i}"] = gen.state
    return states
