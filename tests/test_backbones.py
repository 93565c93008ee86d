"""The digits CNNs built here: ``lenet_caffe`` computes the unpadded Caffe LeNet, checked
against numpy loops; ``lenet_tllib`` is that network plus TLlib's two dropouts; ``lenet`` keeps
its padded convolutions."""

import keras
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


def test_lenet_tllib_is_lenet_caffe_at_inference_and_drops_whole_channels_and_units_in_training():
    tllib = build_backbone(ModelConfig(backbone="lenet_tllib"), (28, 28, 1), None)
    caffe = build_backbone(ModelConfig(backbone="lenet_caffe"), (28, 28, 1), None)
    for layer in ("conv1", "conv2", "fc3"):
        caffe.get_layer(layer).set_weights(tllib.get_layer(layer).get_weights())
    x = np.random.default_rng(1).uniform(0, 1, (64, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(tllib(x, training=False)), np.asarray(caffe(x)),
                               rtol=1e-6, atol=1e-6)

    probe = keras.Model(tllib.input, [tllib.get_layer(n).output
                                      for n in ("conv2", "drop2", "fc3", "drop3")])
    conv, dropped, fc, fc_dropped = (np.asarray(t) for t in probe(x, training=True))
    # Dropout2d: per image and channel, the whole 8x8 map is zeroed or scaled by 1 / (1 - 0.5)
    alive = np.abs(dropped).sum(axis=(1, 2)) > 0                      # [64, 50]
    has_signal = np.abs(conv).sum(axis=(1, 2)) > 0
    np.testing.assert_allclose(dropped, conv * 2.0 * alive[:, None, None, :], rtol=1e-5,
                               atol=1e-6)
    kept = alive[has_signal].mean()
    assert 0.4 < kept < 0.6, kept          # 50% dropped; 6 sigma over ~3000 channels is 0.055
    assert not np.all(alive == alive[:1])  # a mask per image, not one for the batch
    # Dropout on fc 500: each unit zeroed or doubled
    np.testing.assert_allclose(fc_dropped, fc * 2.0 * (fc_dropped != 0), rtol=1e-5, atol=1e-6)
    unit_kept = (fc_dropped != 0)[fc > 0].mean()
    assert 0.45 < unit_kept < 0.55, unit_kept


def test_lenet_tllib_names_the_image_size_it_cannot_take():
    with pytest.raises(ConfigError, match="data.image_size: lenet_tllib.*16 px, got 15"):
        build_backbone(ModelConfig(backbone="lenet_tllib"), (15, 15, 1), None)
