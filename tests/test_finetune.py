"""Finetuning from pretrained backbones: freezing, two stages, feature-extractor mode, the
backbone learning-rate multiplier, weights-file errors, and the shipped finetune configs.

Networks are small (MobileNetV2 without weights at 32 px, LeNet at 16 px) so the file runs in
well under two minutes; the shipped ImageNet weights are used only when present.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, WEIGHTS_ROOT, make_tree, needs_weights, tiny_config

from ddc.config import ConfigError, FreezeConfig, ModelConfig, TrainConfig, from_dict, load
from ddc.models import apply_freeze, build_backbone, build_network, resolve_weights, variable_counts
from ddc.train import TrainStep, train_and_evaluate
from ddc.train.feature_cache import FeatureCache
from ddc.train.optim import make_optimizer

MNV2_FILE = "mobilenet_v2_1.0_224_no_top.weights.h5"


def _mnv2(size=32, freeze=None, head_hidden=16, adapt_width=8, weights=None, num_classes=3):
    cfg = ModelConfig(backbone="mobilenet_v2", head_hidden=head_hidden, adapt_width=adapt_width,
                      freeze=freeze or FreezeConfig())
    net = build_network(cfg, (size, size, 3), num_classes, weights)
    apply_freeze(net.backbone, cfg.freeze)
    return net


def _expected_trainable(backbone, head, frozen_names) -> int:
    """Trainable variables counted the slow way: every weight of every layer that is not frozen,
    except BatchNorm moving statistics, which are never trained."""
    def trainable_weights_of(layer):
        return [w for w in layer.weights if "moving" not in w.path]

    n = sum(len(trainable_weights_of(l)) for l in backbone.layers if l.name not in frozen_names)
    return n + sum(len(trainable_weights_of(l)) for l in head.layers)


def _train_steps(net, steps=3, seed=0):
    opt = make_optimizer(TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9),
                         tf.Variable(0, dtype=tf.int64), net.model.trainable_variables, [], 1.0,
                         loss_scale=False)
    step = TrainStep(net.model, opt)
    rng = np.random.default_rng(seed)
    x_t = np.zeros((0, 32, 32, 3), np.uint8)
    for _ in range(steps):
        x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 3, 8).astype(np.int32)
        step(tf.constant(x), tf.constant(y), tf.constant(x_t))


def _layer_values(backbone):
    return {l.name: {w.path: np.array(w.numpy()) for w in l.weights} for l in backbone.layers}


# ----------------------------------------------------------------------------- freezing

def test_frozen_weights_and_batchnorm_statistics_do_not_move():
    net = _mnv2(freeze=FreezeConfig(mode="until", layer="block_2_add"))
    names = [l.name for l in net.backbone.layers]
    frozen = set(names[:names.index("block_2_add") + 1])
    before = _layer_values(net.backbone)
    _train_steps(net)
    after = _layer_values(net.backbone)

    for name in frozen:
        for path, value in before[name].items():
            np.testing.assert_array_equal(after[name][path], value, err_msg=path)
    # The control: an unfrozen BatchNorm's moving statistics and an unfrozen kernel did move,
    # so the comparison above can fail.
    bn = net.backbone.get_layer("block_3_expand_BN")
    assert bn.name not in frozen and bn.trainable
    for w in bn.weights:
        if "moving" in w.path:
            assert not np.allclose(before[bn.name][w.path], after[bn.name][w.path]), w.path
    kernel = net.backbone.get_layer("block_3_expand").weights[0].path
    assert not np.allclose(before["block_3_expand"][kernel], after["block_3_expand"][kernel])
    # A frozen BatchNorm exists among the frozen layers (otherwise the test proves little).
    assert any(isinstance(net.backbone.get_layer(n), keras.layers.BatchNormalization)
               for n in frozen)


@pytest.mark.parametrize("freeze", [
    FreezeConfig(mode="none"),
    FreezeConfig(mode="backbone"),
    FreezeConfig(mode="first_n", n=40),
    FreezeConfig(mode="until", layer="block_12_add"),
    FreezeConfig(mode="prefix", prefixes=["Conv1", "bn_Conv1", "block_1_", "block_16_"]),
], ids=lambda f: f.mode)
def test_trainable_variable_count_matches_the_freeze_config(freeze):
    net = _mnv2(freeze=freeze)
    layers = net.backbone.layers
    names = [l.name for l in layers]
    if freeze.mode == "none":
        frozen = set()
    elif freeze.mode == "backbone":
        frozen = set(names)
    elif freeze.mode == "first_n":
        frozen = set(names[:freeze.n])
    elif freeze.mode == "until":
        frozen = set(names[:names.index(freeze.layer) + 1])
    else:
        frozen = {n for n in names if n.startswith(tuple(freeze.prefixes))}
    expected = _expected_trainable(net.backbone, net.head, frozen)
    counts = variable_counts(net.model)
    assert len(net.model.trainable_variables) == expected
    assert counts["trainable_variables"] == expected
    assert counts["trainable_variables"] + counts["frozen_variables"] == len(net.model.weights)
    assert {l.name for l in layers if not l.trainable} == frozen


def test_inception_v3_reference_config_freezes_the_first_172_layers():
    cfg = load(REPO / "configs" / "inception_v3_reference.json")
    assert (cfg.model.backbone, cfg.model.weights) == ("inception_v3", "imagenet")
    assert (cfg.model.freeze.mode, cfg.model.freeze.n) == ("first_n", 172)
    assert (cfg.model.head_hidden, cfg.model.adapt_width, cfg.data.image_size) == (1024, 0, 299)
    size = cfg.data.image_size
    net = build_network(cfg.model, (size, size, 3), 12, weights=None)  # no ImageNet download here
    apply_freeze(net.backbone, cfg.model.freeze)
    layers = net.backbone.layers
    frozen = {l.name for l in layers[:172]}
    expected = _expected_trainable(net.backbone, net.head, frozen)
    assert variable_counts(net.model)["trainable_variables"] == expected
    # The head: Dense(1024) and the classifier, 2 variables each.
    assert [l.name for l in net.head.layers if l.weights] == ["head_hidden", "logits"]
    assert all(not l.trainable for l in layers[:172]) and all(l.trainable for l in layers[172:])


def test_siri_whu_reference_freezes_every_batchnorm_and_trains_the_top_blocks():
    cfg = load(REPO / "configs" / "siri_whu_reference.json")
    net = build_network(cfg.model, (32, 32, 3), 12, weights=None)
    apply_freeze(net.backbone, cfg.model.freeze)
    layers = net.backbone.layers
    names = [l.name for l in layers]
    top = names.index("block_12_add") + 1
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable, layer.name  # inference statistics everywhere
        elif layer.weights:
            assert layer.trainable == (names.index(layer.name) >= top), layer.name
    frozen = {l.name for l in layers if not l.trainable}
    assert variable_counts(net.model)["trainable_variables"] == _expected_trainable(
        net.backbone, net.head, frozen)


def test_shipped_finetune_configs_validate():
    for name in ("siri_whu_reference", "siri_whu_features", "inception_v3_reference"):
        cfg = load(REPO / "configs" / f"{name}.json")
        assert cfg.data.source.root == cfg.data.target.root == "siri_whu"
        assert cfg.data.val_fraction == pytest.approx(0.8)  # 20% train, 80% held out (the test set)
        assert cfg.align == {} and cfg.data.cache == "disk"
    feats = load(REPO / "configs" / "siri_whu_features.json")
    assert feats.mode == "features" and feats.model.head_hidden == feats.model.adapt_width == 0


# ----------------------------------------------------------------------------- two stages

def _restored(cfg, num_classes, checkpoint_path):
    """(backbone conv1 kernel, head logits kernel) of the network saved in ``checkpoint_path``.

    Restores through the object graph (``model`` -> layers -> variables), so it does not depend
    on which path the checkpoint happened to store each variable under.
    """
    net = build_network(cfg.model, (cfg.data.image_size,) * 2 + (cfg.data.channels,), num_classes,
                        None)
    tf.train.Checkpoint(model=net.model).read(checkpoint_path).expect_partial().assert_existing_objects_matched()
    return (net.backbone.get_layer("conv1").kernel.numpy(),
            net.head.get_layer("logits").kernel.numpy())


def test_two_stage_training_keeps_the_backbone_fixed_then_trains_it(tiny_trees, tmp_path):
    src, tgt = tiny_trees
    raw = tiny_config(src, tgt, steps=6, head_only_steps=3, checkpoint_every=1,
                      keep_checkpoints=20, eval_every=6, optimizer="sgd", lr=0.05)
    raw["align"] = {}
    cfg = from_dict(raw)
    workdir = tmp_path / "run"
    results = train_and_evaluate(cfg, workdir, data_root=tmp_path)
    ckpt_dir = workdir / "checkpoints"
    paths = {int(p.name.split("-")[1].split(".")[0]): str(p.with_suffix(""))
             for p in ckpt_dir.glob("ckpt-*.index")}
    assert set(paths) >= {1, 2, 3, 4, 5, 6}
    v = {s: _restored(cfg, 3, paths[s]) for s in range(1, 7)}
    # The initial backbone: the run seeds Keras before building, so the same seed rebuilds it.
    keras.utils.set_random_seed(cfg.seed)
    init = build_network(cfg.model, (16, 16, 3), 3, None).backbone.get_layer("conv1").kernel.numpy()
    for s in (1, 2, 3):  # head-only stage: the backbone stays at its initial weights
        np.testing.assert_array_equal(v[s][0], init)
    for s in (2, 3):  # ... while the head learns
        assert not np.allclose(v[s][1], v[s - 1][1])
    for s in (4, 5, 6):  # main stage: the backbone learns too
        assert not np.allclose(v[s][0], v[s - 1][0])
    assert results["steps"] == 6
    assert results["variables"]["frozen_variables"] == 0  # main stage, freeze mode none


# ----------------------------------------------------------------------------- feature mode

@pytest.mark.parametrize("freeze", [FreezeConfig(mode="backbone"),
                                    FreezeConfig(mode="until", layer="block_12_add")])
def test_feature_extractor_mode_gives_the_full_network_logits(freeze):
    from ddc.models.split import split_at_frozen_prefix

    net = _mnv2(freeze=freeze)
    _train_steps(net, steps=2)  # moves the head and gives the head non-trivial weights
    x = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    full_logits, full_feats = net.model(x, training=False)
    bottom, trainable, cut = split_at_frozen_prefix(net)
    assert cut == ("pooled" if freeze.mode == "backbone" else "block_12_add")
    # the library's extraction (no disk cache), in batches of 4: the 2nd batch is padded
    cached = FeatureCache(bottom, net.preprocess, None, batch_size=4).features(x)[:, 0]
    assert cached.shape[0] == 5
    part_logits, part_feats = trainable(cached, training=False)
    np.testing.assert_allclose(np.asarray(part_logits), np.asarray(full_logits), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(part_feats), np.asarray(full_feats), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- lr multiplier

@pytest.mark.parametrize("mult", [0.1, 0.37, 0.0])
def test_backbone_lr_multiplier_is_exact_for_sgd(mult):
    lr, momentum, steps = 0.2, 0.9, 3
    g_slow = np.array([0.5, -1.0, 2.0], np.float32)
    g_fast = np.array([[1.5], [-0.25]], np.float32)

    def run(m):
        slow = tf.Variable(np.ones(3, np.float32))
        fast = tf.Variable(np.ones((2, 1), np.float32))
        opt = make_optimizer(TrainConfig(optimizer="sgd", lr=lr, momentum=momentum),
                             tf.Variable(0, dtype=tf.int64), [slow, fast], [slow], m,
                             loss_scale=False)
        for _ in range(steps):
            opt.apply([tf.constant(g_slow), tf.constant(g_fast)], [slow, fast])
        return slow.numpy() - 1.0, fast.numpy() - 1.0

    slow_1, fast_1 = run(1.0)
    slow_m, fast_m = run(mult)
    # Independent reference: heavy-ball SGD, v <- momentum v - lr g; w <- w + v, constant g.
    v, disp = 0.0, 0.0
    for _ in range(steps):
        v = momentum * v - lr
        disp += v
    np.testing.assert_allclose(slow_1, disp * g_slow, rtol=1e-5)
    np.testing.assert_allclose(slow_m, mult * disp * g_slow, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fast_m, fast_1, rtol=1e-6)  # the head is unaffected
    np.testing.assert_allclose(fast_1, disp * g_fast, rtol=1e-5)


# ----------------------------------------------------------------------------- weights errors

def test_missing_weights_file_error_names_file_and_backbone(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_weights("no_such.weights.h5", tmp_path, backbone="mobilenet_v2")
    msg = str(e.value)
    assert str(tmp_path / "no_such.weights.h5") in msg and "mobilenet_v2" in msg
    assert msg.startswith("model.weights")


def test_missing_weights_file_stops_a_run_before_training(tiny_trees, tmp_path):
    src, tgt = tiny_trees
    raw = tiny_config(src, tgt)
    raw["model"] = {"backbone": "mobilenet_v2", "weights": "absent.weights.h5", "adapt_width": 8}
    raw["data"]["image_size"] = 32
    with pytest.raises(ConfigError, match="absent.weights.h5"):
        train_and_evaluate(from_dict(raw), tmp_path / "run", data_root=tmp_path,
                           weights_root=tmp_path)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_mismatched_weights_file_error_names_file_and_backbone(tmp_path):
    other = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                           input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "mnv2_alpha035.weights.h5"
    other.save_weights(str(path))
    with pytest.raises(ConfigError) as e:
        build_backbone(ModelConfig(backbone="mobilenet_v2", alpha=1.0), (32, 32, 3), str(path))
    msg = str(e.value)
    assert str(path) in msg and "mobilenet_v2" in msg and "shape" in msg
    assert len(msg) < 1000  # a summary, not the tensors Keras prints
    # The same file fits the backbone it was saved from.
    ok = build_backbone(ModelConfig(backbone="mobilenet_v2", alpha=0.35), (32, 32, 3), str(path))
    np.testing.assert_array_equal(ok.get_layer("Conv1").weights[0].numpy(),
                                  other.get_layer("Conv1").weights[0].numpy())


@needs_weights
def test_shipped_weights_load_and_do_not_fit_another_backbone():
    path = str(WEIGHTS_ROOT / MNV2_FILE)
    net = _mnv2(size=32, weights=path, freeze=FreezeConfig(mode="until", layer="block_12_add"))
    bn = net.backbone.get_layer("bn_Conv1")
    assert not np.allclose(bn.moving_variance.numpy(), 1.0)  # ImageNet statistics, not the init
    with pytest.raises(ConfigError) as e:
        build_backbone(ModelConfig(backbone="mobilenet", alpha=0.25), (32, 32, 3), path)
    assert path in str(e.value) and "backbone mobilenet " in str(e.value)
