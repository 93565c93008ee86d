"""The digits CNNs built here: ``lenet_caffe`` computes the unpadded Caffe/TLlib LeNet, checked
against numpy loops; ``lenet`` keeps its padded convolutions."""

import numpy as np
import pytest

from ddc.config import ConfigError, ModelConfig
from ddc.models import build_backbone


def _conv_valid(x, kernel, bias):
    """x [H, W, C], kernel [k, k, C, F]: unpadded stride-1 convolution, one output at a time."""
    k = kernel.shape[0]
    h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
    out = np.zeros((h, w, kernel.shape[3]))
    for i in range(h):
        for j in range(w):
            for f in range(kernel.shape[3]):
                out[i, j, f] = np.sum(x[i:i + k, j:j + k, :] * kernel[:, :, :, f]) + bias[f]
    return out


def _max_pool_2(x):
    h, w = x.shape[0] // 2, x.shape[1] // 2
    out = np.zeros((h, w, x.shape[2]))
    for i in range(h):
        for j in range(w):
            out[i, j] = x[2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(0, 1))
    return out


def _relu(x):
    return np.maximum(x, 0.0)


def test_lenet_caffe_is_the_unpadded_lenet_computed_with_numpy_loops():
    net = build_backbone(ModelConfig(backbone="lenet_caffe"), (20, 20, 1), None)
    weights = {layer.name: [np.asarray(w, np.float64) for w in layer.get_weights()]
               for layer in net.layers}
    x = np.random.default_rng(0).uniform(0, 1, (2, 20, 20, 1))
    got = np.asarray(net(x.astype(np.float32)))

    for b in range(2):
        h = _max_pool_2(_relu(_conv_valid(x[b], *weights["conv1"])))     # 16 -> 8
        h = _max_pool_2(_relu(_conv_valid(h, *weights["conv2"])))        # 4 -> 2
        kernel, bias = weights["fc3"]
        want = _relu(h.reshape(-1) @ kernel + bias)
        np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


def test_lenet_caffe_feeds_800_features_to_fc_at_28_px_and_lenet_2450():
    caffe = build_backbone(ModelConfig(backbone="lenet_caffe"), (28, 28, 1), None)
    padded = build_backbone(ModelConfig(backbone="lenet"), (28, 28, 1), None)
    assert caffe.get_layer("fc3").get_weights()[0].shape == (4 * 4 * 50, 500)
    assert padded.get_layer("fc3").get_weights()[0].shape == (7 * 7 * 50, 500)
    assert caffe.output_shape == padded.output_shape == (None, 500)


def test_lenet_caffe_names_the_image_size_it_cannot_take():
    with pytest.raises(ConfigError, match="data.image_size: lenet_caffe.*16 px, got 12"):
        build_backbone(ModelConfig(backbone="lenet_caffe"), (12, 12, 1), None)
    with pytest.raises(ConfigError, match="model.weights: lenet_caffe is built from scratch"):
        build_backbone(ModelConfig(backbone="lenet_caffe"), (28, 28, 1), "imagenet")
