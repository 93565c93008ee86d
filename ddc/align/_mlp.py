"""A small float32 MLP that a term owns (a domain discriminator, an adversarial head).

Dropout draws its masks from stateless random ops seeded by (the term's seed, the step index,
the layer), so they are a pure function of the step: a resumed run redraws exactly the masks of
an uninterrupted one, and under tf.distribute every replica draws the same masks for the
gathered global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class MLP:
    """``Dense(w_1) -> ReLU -> dropout -> ... -> Dense(out)``, float32 under every policy."""

    def __init__(self, in_dim: int, widths, out_dim: int, dropout: float, seed: int, name: str):
        self.dropout, self.seed = float(dropout), int(seed)
        self.layers = []
        for i, w in enumerate([*widths, out_dim]):
            init = keras.initializers.GlorotUniform(seed=seed * 1000 + i)
            self.layers.append(keras.layers.Dense(w, dtype="float32", kernel_initializer=init,
                                                  name=f"{name}_{i}"))
        dim = in_dim
        for layer in self.layers:
            layer.build((None, dim))
            dim = layer.units

    @property
    def trainable_variables(self) -> list:
        return [v for layer in self.layers for v in layer.trainable_weights]

    def state(self) -> dict:
        return {v.path: v for layer in self.layers for v in layer.weights}

    def __call__(self, x, step, training: bool = True):
        x = tf.cast(x, tf.float32)
        for i, layer in enumerate(self.layers[:-1]):
            x = tf.nn.relu(layer(x))
            if training and self.dropout > 0:
                seed = tf.stack([tf.cast(self.seed * 1000 + i, tf.int64), tf.cast(step, tf.int64)])
                x = tf.nn.experimental.stateless_dropout(x, self.dropout, seed=seed)
        return self.layers[-1](x)
