"""AdaBN: BatchNorm statistics recomputed on target images, against numpy written out."""

import keras
import numpy as np
import pytest


def _net(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((4,))
    h = keras.layers.Dense(6, name="d1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dense(3, name="d2")(h)
    out = keras.layers.BatchNormalization(name="bn2", epsilon=1e-3)(h)
    m = keras.Model(inp, out)
    for bn in ("bn1", "bn2"):  # pretrained-like statistics, not the initial 0 / 1
        layer = m.get_layer(bn)
        layer.moving_mean.assign(np.linspace(-1, 1, layer.moving_mean.shape[0]))
        layer.moving_variance.assign(np.linspace(0.5, 2, layer.moving_variance.shape[0]))
    m.trainable = False  # frozen, as the backbone of mode "features"
    return m


def _reference(m, x):
    """Each BN input's mean and variance over ``x``, the BN before it normalising by its own."""
    w1, b1 = m.get_layer("d1").get_weights()
    w2, b2 = m.get_layer("d2").get_weights()
    g1, be1 = m.get_layer("bn1").gamma.numpy(), m.get_layer("bn1").beta.numpy()
    eps1 = m.get_layer("bn1").epsilon
    a = x.astype(np.float64) @ w1 + b1
    mean1, var1 = a.mean(axis=0), a.var(axis=0)
    h = np.maximum(g1 * (a - mean1) / np.sqrt(var1 + eps1) + be1, 0)
    c = h @ w2 + b2
    return [(mean1, var1), (c.mean(axis=0), c.var(axis=0))]


def test_statistics_of_one_batch_are_each_layers_population_statistics_and_weights_stay():
    from ddc.models.adabn import target_statistics
    m = _net()
    before = [v.numpy().copy() for v in m.weights]
    x = np.random.default_rng(1).normal(2.0, 3.0, (50, 4)).astype(np.float32)
    stats = target_statistics(m, lambda t: t, x, batch_size=64)
    for (mean, var), (rmean, rvar) in zip(stats, _reference(m, x)):
        np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(var, rvar, rtol=1e-4, atol=1e-5)
    for v, b in zip(m.weights, before):  # the training-mode pass moved nothing for good
        np.testing.assert_array_equal(v.numpy(), b)
    assert not any(layer.trainable for layer in m.layers)


def test_batches_pool_to_the_population_statistics_of_the_first_layer():
    from ddc.models.adabn import target_statistics
    m = _net()
    x = np.random.default_rng(2).normal(-1.0, 2.0, (23, 4)).astype(np.float32)
    (mean, var), _ = target_statistics(m, lambda t: t, x, batch_size=5)  # 5, 5, 5, 5, 3
    rmean, rvar = _reference(m, x)[0]
    np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, rvar, rtol=1e-4, atol=1e-5)


def test_applied_statistics_normalise_the_target_and_are_put_back():
    from ddc.models.adabn import statistics_applied, target_statistics
    m = _net()
    x = np.random.default_rng(3).normal(5.0, 0.5, (40, 4)).astype(np.float32)
    stats = target_statistics(m, lambda t: t, x, batch_size=40)
    source_out = np.asarray(m(x, training=False))
    with statistics_applied(m, stats):
        adapted = np.asarray(m(x, training=False))
    # the last BN's output, on its target statistics: per channel beta +- gamma * ~unit spread
    bn2 = m.get_layer("bn2")
    z = (adapted - bn2.beta.numpy()) / bn2.gamma.numpy()
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.var(axis=0) * (1 + bn2.epsilon / stats[1][1]), 1.0, rtol=1e-3)
    assert np.abs(source_out - adapted).max() > 0.1
    np.testing.assert_allclose(np.asarray(m(x, training=False)), source_out, rtol=1e-6)
    with pytest.raises(ValueError, match="1 statistics for 2"):
        with statistics_applied(m, stats[:1]):
            pass


def test_a_model_without_batch_norm_is_refused():
    from ddc.models.adabn import target_statistics
    inp = keras.Input((3,))
    m = keras.Model(inp, keras.layers.Dense(2)(inp), name="plain")
    with pytest.raises(ValueError, match="plain has no BatchNormalization"):
        target_statistics(m, lambda t: t, np.zeros((2, 3), np.float32), 4)


def _mnv2_config(tiny_trees, adabn):
    from conftest import tiny_config
    base = tiny_config(*tiny_trees, steps=2)
    base["mode"] = "features"
    base["data"]["image_size"] = 32
    base["model"] = {"backbone": "mobilenet_v2", "adapt_width": 8,
                     "freeze": {"mode": "until", "layer": "block_2_add"}, "adabn": adabn}
    base["align"] = {}
    return base


def test_run_extracts_each_domain_on_the_statistics_of_its_own_images(
        tmp_path, tiny_trees, monkeypatch):
    from ddc import paths
    from ddc.config import from_dict
    from ddc.data.prepare import prepare_data
    from ddc.models.adabn import batch_norm_layers, statistics_applied, target_statistics
    from ddc.train.run import Run
    monkeypatch.setenv("DDC_CACHE_DIR", str(tmp_path / "cache"))
    runs = {}
    for adabn in (False, True):
        keras.utils.set_random_seed(0)
        cfg = from_dict(_mnv2_config(tiny_trees, adabn))
        data = prepare_data(cfg, tmp_path, paths.cache_dir())
        runs[adabn] = Run(cfg, tmp_path / f"w{adabn}", data, None, paths.cache_dir())
    plain, ada = runs[False], runs[True]
    assert len(batch_norm_layers(ada.bottom)) > 3  # the frozen part up to block_2_add
    d = ada.data
    assert ada.setup["extracted"] == len(d.source_train) + len(d.source_val) + len(d.target)
    # each split: the frozen part on BatchNorm statistics of its domain's (training) images
    for splits, own in ((("source_train", "source_val"), d.source_train.images),
                        (("target",), d.target.images)):
        stats = target_statistics(ada.bottom, ada.net.preprocess, own, 64)
        with statistics_applied(ada.bottom, stats):
            for k in splits:
                x = getattr(d, k).images
                want = np.asarray(ada.bottom(ada.net.preprocess(x), training=False))
                np.testing.assert_allclose(ada.arrays[k], want, rtol=1e-4, atol=1e-5, err_msg=k)
                assert np.abs(ada.arrays[k] - plain.arrays[k]).max() > 1e-3, k
    # and the network keeps its loaded statistics (the checkpoints hold those)
    for a, b in zip(batch_norm_layers(ada.bottom), batch_norm_layers(plain.bottom)):
        np.testing.assert_array_equal(a.moving_mean.numpy(), b.moving_mean.numpy())
    # a second run reads both domains' statistics and features back
    keras.utils.set_random_seed(0)
    again = Run(ada.cfg, tmp_path / "again", d, None, paths.cache_dir())
    assert again.setup["extracted"] == 0 and again.setup["from_cache"] == ada.setup["extracted"]
    np.testing.assert_array_equal(again.arrays["target"], ada.arrays["target"])


def test_adabn_outside_mode_features_is_refused(tiny_trees):
    from ddc.config import ConfigError, from_dict
    cfg = _mnv2_config(tiny_trees, True)
    cfg["mode"] = "train"
    with pytest.raises(ConfigError, match="model.adabn: expected false outside mode"):
        from_dict(cfg)


def test_cached_statistics_are_read_back_not_recomputed(tmp_path, monkeypatch):
    from ddc.models import adabn
    m = _net()
    x = np.random.default_rng(4).normal(size=(12, 4)).astype(np.float32)
    first = adabn.cached_statistics(m, lambda t: t, x, 8, tmp_path / "adabn", "model|images")
    assert len(list((tmp_path / "adabn").glob("*.npz"))) == 1

    def no_pass(*a, **k):
        raise AssertionError("recomputed")
    monkeypatch.setattr(adabn, "target_statistics", no_pass)
    again = adabn.cached_statistics(m, lambda t: t, x, 8, tmp_path / "adabn", "model|images")
    for (m1, v1), (m2, v2) in zip(first, again):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(v1, v2)
    with pytest.raises(AssertionError, match="recomputed"):  # other images: another file
        adabn.cached_statistics(m, lambda t: t, x, 8, tmp_path / "adabn", "model|other")
