"""The on-disk feature cache of mode "features", D4 views and their draw, and TTA."""

import json

import keras
import numpy as np
import pytest
from conftest import make_tree, tiny_config, write_image

from ddc.config import FreezeConfig, ModelConfig, from_dict
from ddc.data.pipeline import BatchSampler, train_dataset
from ddc.data.views import D4, FLIP_VIEWS
from ddc.models import apply_freeze, build_backbone, build_network
from ddc.models.split import split_at_frozen_prefix
from ddc.train import feature_cache as fc
from ddc.train import train_and_evaluate
from ddc.train.evaluate import evaluate_arrays, mean_softmax, tta_report
from ddc.train.step import predict_fn


@pytest.fixture(autouse=True)
def _own_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DDC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def computed(monkeypatch):
    """Counts the batches that go through the backbone (``FeatureCache._compute`` calls)."""
    count = {"calls": 0}
    original = fc.FeatureCache._compute

    def counting(self, x):
        count["calls"] += 1
        return original(self, x)
    monkeypatch.setattr(fc.FeatureCache, "_compute", counting)
    return count


def _bottom(freeze=FreezeConfig(mode="until", layer="pool1"), size=16):
    keras.utils.set_random_seed(0)
    net = build_network(ModelConfig(backbone="lenet", adapt_width=8, freeze=freeze),
                        (size, size, 3), 3, None)
    apply_freeze(net.backbone, freeze)
    bottom, _, _ = split_at_frozen_prefix(net)
    return bottom, net.preprocess


def _reference_view(img, v):
    """The numpy reference of view v: v % 4 counter-clockwise quarter turns, then a mirror."""
    out = np.rot90(img, v % 4)
    return np.flip(out, axis=1) if v >= 4 else out


def _images(n=6, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_d4_views_are_rotations_and_flips_of_the_identity_view(tmp_path):
    bottom, pre = _bottom()
    x = _images()
    feats = fc.FeatureCache(bottom, pre, tmp_path / "c", batch_size=4).features(x, D4)
    assert feats.shape == (6, 8) + tuple(bottom.output.shape[1:])
    for v in D4:
        ref = np.stack([_reference_view(img, v) for img in x])
        want = np.asarray(bottom(pre(ref), training=False))
        np.testing.assert_allclose(feats[:, v], want, rtol=1e-5, atol=1e-6, err_msg=f"view {v}")
    assert len({feats[0, v].tobytes() for v in D4}) == 8  # eight different views
    # mode "train" applies the same views in the input pipeline ("d4" and the old flips)
    ys = np.arange(6, dtype=np.int32)
    for augment, views in (("d4", D4), (True, FLIP_VIEWS)):
        sampler = BatchSampler(6, 3, 4, 0)
        for step, (s, lab, _) in enumerate(train_dataset(x, ys, x, batch_size=3, seed=4,
                                                         augment=augment).take(4)):
            drawn = sampler.views(step, augment)
            assert set(drawn) <= set(views)
            for img, i, v in zip(s.numpy(), lab.numpy(), drawn):
                np.testing.assert_array_equal(img, _reference_view(x[i], v))


def test_d4_draw_is_reproducible_by_seed_and_across_resume():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(10, 8, 5)).astype(np.float32)  # [N, view, F] precomputed views
    tfeats = rng.normal(size=(7, 8, 5)).astype(np.float32)
    ys = np.arange(10, dtype=np.int32)

    def batches(seed, start=0, n=8):
        ds = train_dataset(feats, ys, tfeats, batch_size=4, seed=seed, augment="d4",
                           start_step=start, source_views=D4, target_views=D4)
        return [tuple(t.numpy() for t in b) for b in ds.take(n)]

    a, b, resumed, other = batches(3), batches(3), batches(3, start=5, n=3), batches(4)
    for x, y in zip(a, b):
        for u, w in zip(x, y):
            np.testing.assert_array_equal(u, w)
    for x, y in zip(a[5:], resumed):
        for u, w in zip(x, y):
            np.testing.assert_array_equal(u, w)
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, other))
    sampler = BatchSampler(10, 4, 3, 0)
    seen = set()
    for step, (s, lab, _) in enumerate(a):  # each item is its image's drawn view
        views = sampler.views(step, "d4")
        np.testing.assert_array_equal(s, feats[lab, views])
        seen |= set(views.tolist())
    assert len(seen) > 4
    with pytest.raises(ValueError, match="precomputed views"):  # flips need views 0, 4, 6, 2
        train_dataset(feats[:, :2], ys, tfeats, batch_size=4, seed=0, augment=True,
                      source_views=(0, 4))


def test_killed_extraction_resumes_with_the_same_features(tmp_path, monkeypatch):
    bottom, pre = _bottom()
    x = _images(8)
    want = fc.FeatureCache(bottom, pre, None, batch_size=4).features(x, (0, 1))
    monkeypatch.setattr(fc, "FLUSH_ENTRIES", 4)  # a chunk after every batch of 4 views
    calls = {"n": 0}
    original = fc.FeatureCache._compute

    def dies_on_the_fourth_batch(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # e.g. Ctrl-C, or any error mid-extraction
        return original(self, batch)
    monkeypatch.setattr(fc.FeatureCache, "_compute", dies_on_the_fourth_batch)
    with pytest.raises(KeyboardInterrupt):
        fc.FeatureCache(bottom, pre, tmp_path, batch_size=4).features(x, (0, 1))
    folder = next((tmp_path / "features").iterdir())
    assert len(list(folder.glob("*.k.npy"))) == 3
    # debris a SIGKILL (or a foreign writer) can leave: a temporary file, a features file
    # without its keys file, a chunk whose features file was cut short, one with fewer rows
    # than keys; none of it may be read (their keys are the four never extracted: were they
    # read, they would serve them)
    (folder / ".x.f.npy.tmp").write_bytes(b"\x93NUMPY half")
    np.save(folder / "orphan.f.npy", np.full((4,) + want.shape[2:], 7, np.float32))
    missing = [f"{k}:1" for k in fc.image_keys(x[4:])]
    np.save(folder / "cut.k.npy", np.array(missing[:2]))
    np.save(folder / "cut.f.npy", np.full((2,) + want.shape[2:], 7, np.float32))
    raw = (folder / "cut.f.npy").read_bytes()
    (folder / "cut.f.npy").write_bytes(raw[:len(raw) // 2])
    np.save(folder / "short.k.npy", np.array(missing[2:] + missing[:2]))
    np.save(folder / "short.f.npy", np.full((2,) + want.shape[2:], 7, np.float32))
    monkeypatch.setattr(fc.FeatureCache, "_compute", original)
    again = fc.FeatureCache(bottom, pre, tmp_path, batch_size=4)
    got = again.features(x, (0, 1))
    assert (again.reused, again.extracted) == (12, 4)  # 3 batches kept, the 4th extracted
    np.testing.assert_array_equal(got, want)


def test_a_changed_image_is_extracted_again_and_nothing_else(tmp_path, tiny_trees, computed):
    cfg = tiny_config(*tiny_trees, steps=2)
    cfg.update(mode="features", deterministic=True)
    cfg["model"]["freeze"] = {"mode": "backbone"}
    first = train_and_evaluate(from_dict(cfg), tmp_path / "a")
    n = first["features_extracted"]
    calls = computed["calls"]
    assert n == 48 and calls > 0 and first["features_from_cache"] == 0
    second = train_and_evaluate(from_dict(cfg), tmp_path / "b")
    assert computed["calls"] == calls and second["features_extracted"] == 0  # nothing extracted
    assert second["features_from_cache"] == n and second["target_acc"] == first["target_acc"]
    src = tiny_trees[0]
    write_image(src / "a" / "000.png", np.full((16, 16, 3), 200, np.uint8))  # one image changed
    third = train_and_evaluate(from_dict(cfg), tmp_path / "c")
    assert third["features_extracted"] == 1 and computed["calls"] == calls + 1
    assert third["features_from_cache"] == n - 1
    for key in ("setup_time_s", "decode_time_s", "extract_time_s", "train_time_s"):
        assert first[key] >= 0, key
    assert first["setup_time_s"] >= first["decode_time_s"] + first["extract_time_s"] * 0.99
    assert first["extract_images_per_s"] > 0 and second["extract_images_per_s"] is None
    assert first["variables"]["cached_frozen_params"] > 0


def test_a_changed_weights_file_is_extracted_again(tmp_path, computed):
    mcfg = ModelConfig(backbone="mobilenet_v2", alpha=0.35)
    wroot = tmp_path / "weights"
    wroot.mkdir()
    wfile = wroot / "mnv2.weights.h5"
    keras.utils.set_random_seed(1)
    build_backbone(mcfg, (32, 32, 3), None).save_weights(str(wfile))
    src = make_tree(tmp_path / "src", per_class=4, size=32, seed=1)
    tgt = make_tree(tmp_path / "tgt", per_class=4, size=32, seed=2, colour_shift=30)
    cfg = tiny_config(src, tgt, steps=1, batch_size=2)
    cfg["data"]["image_size"] = 32
    cfg["align"] = {}
    cfg.update(mode="features")
    cfg["model"] = {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": wfile.name,
                    "adapt_width": 8, "freeze": {"mode": "backbone"}}

    def run(name):
        return train_and_evaluate(from_dict(cfg), tmp_path / name, weights_root=wroot)

    first = run("a")
    n = first["features_extracted"]
    calls = computed["calls"]
    assert n == 24 and calls > 0
    assert run("b")["features_extracted"] == 0 and computed["calls"] == calls
    keras.utils.set_random_seed(2)  # other weights in the same file name
    build_backbone(mcfg, (32, 32, 3), None).save_weights(str(wfile))
    third = run("c")
    assert third["features_extracted"] == n and third["features_from_cache"] == 0
    assert computed["calls"] == 2 * calls
    folders = list((tmp_path / "cache" / "features").iterdir())
    assert len(folders) == 2  # one per weights content
    described = {json.loads((f / "meta.json").read_text())["describe"]["weights"]
                 for f in folders}
    assert len(described) == 2 and fc.weights_identity(str(wfile)) in described


def test_tta_over_eight_identical_views_equals_the_plain_prediction():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    feats = keras.layers.Dense(4, activation="relu")(inp)
    model = keras.Model(inp, [keras.layers.Dense(3)(feats), feats])
    predict = predict_fn(model)
    x = np.random.default_rng(0).normal(size=(11, 5)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 3, 11)
    names = ["a", "b", "c"]
    logits = np.asarray(model(x)[0], np.float64)
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    np.testing.assert_allclose(mean_softmax(predict, [x] * 8, 4), soft, rtol=1e-5)
    plain = evaluate_arrays(predict, x, labels, names, 4)
    tta = tta_report(predict, [x] * 8, labels, names, 4)
    assert tta["accuracy"] == plain["accuracy"] and tta["confusion"] == plain["confusion"]


def test_tta_is_reported_and_the_same_in_both_modes(tmp_path, tiny_trees):
    cfg = tiny_config(*tiny_trees, steps=3, optimizer="sgd", lr=0.05, tta=True, eval_every=3)
    cfg["model"]["freeze"] = {"mode": "until", "layer": "pool1"}
    cfg["data"]["augment"] = "d4"
    cfg["deterministic"] = True
    full = train_and_evaluate(from_dict(cfg), tmp_path / "full")
    feat = train_and_evaluate(from_dict({**cfg, "mode": "features"}), tmp_path / "feat")
    for r in (full, feat):
        assert 0 <= r["target_acc_tta"] <= 1 and 0 <= r["source_val_acc_tta"] <= 1
    assert feat["target_acc_tta"] == full["target_acc_tta"]
    assert feat["source_val_acc_tta"] == full["source_val_acc_tta"]
    records = [json.loads(line) for line in (tmp_path / "feat" / "metrics.jsonl").open()]
    assert records[-1]["target_acc_tta"] == feat["target_acc_tta"]
    plain = train_and_evaluate(from_dict({**cfg, "mode": "features",
                                          "train": {**cfg["train"], "tta": False}}),
                               tmp_path / "plain")
    assert plain["target_acc_tta"] is None and "target_acc_tta" not in json.loads(
        (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[-1])
