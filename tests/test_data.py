"""Data: decoding rules, class alignment, the stratified split, the training stream, TFDS."""

from pathlib import Path

import numpy as np
import pytest

from conftest import make_tree, write_image
from ddc.config import DomainConfig
from ddc.data import DataError, align_domains, decode_image, load_domain, stratified_split
from ddc.data.domains import Domain
from ddc.data.pipeline import BatchSampler, train_dataset


def test_decode_channel_rules(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((12, 12, 1), 7, np.uint8)], axis=-1)
    write_image(tmp_path / "rgb.png", rgb)
    write_image(tmp_path / "gray.png", gray)
    write_image(tmp_path / "rgba.png", rgba)
    write_image(tmp_path / "g16.tif", gray.astype(np.uint16) * 257)
    write_image(tmp_path / "bands.tif", np.dstack([rgb, gray, gray]))  # 5 bands
    np.testing.assert_array_equal(decode_image(tmp_path / "rgb.png", 12, 3), rgb)
    np.testing.assert_array_equal(decode_image(tmp_path / "gray.png", 12, 3),
                                  np.repeat(gray[:, :, None], 3, axis=-1))
    np.testing.assert_array_equal(decode_image(tmp_path / "rgba.png", 12, 3), rgb)
    np.testing.assert_array_equal(decode_image(tmp_path / "g16.tif", 12, 1)[:, :, 0], gray)
    np.testing.assert_array_equal(decode_image(tmp_path / "bands.tif", 12, 3), rgb)
    luma = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    got = decode_image(tmp_path / "rgb.png", 12, 1)[:, :, 0].astype(int)
    assert np.abs(got - luma).max() <= 1


def test_decode_resizes_any_size_and_formats(tmp_path):
    flat = np.full((30, 20, 3), 100, np.uint8)
    for ext in (".png", ".jpg", ".bmp", ".gif", ".tif"):
        write_image(tmp_path / f"im{ext}", flat)
        out = decode_image(tmp_path / f"im{ext}", 16, 3)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - 100).max() <= 3, ext


def test_decode_errors_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    for name in ("empty.png", "junk.jpg"):
        with pytest.raises(DataError, match=name):
            decode_image(tmp_path / name, 8, 3)


def test_folder_domain_ignores_non_images(tmp_path):
    root = make_tree(tmp_path / "d", classes=("x", "y"), per_class=3)
    (root / "x" / ".DS_Store").write_bytes(b"\0\1")
    (root / "x" / "Thumbs.db").write_bytes(b"\0\1")
    (root / "y" / "notes.txt").write_text("hello")
    d = load_domain(DomainConfig(root=str(root)), "data.source", tmp_path, 8, 3)
    assert d.images.shape == (6, 8, 8, 3)
    assert d.class_names == ["x", "y"]
    np.testing.assert_array_equal(d.labels, [0, 0, 0, 1, 1, 1])


def test_missing_root_names_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data.target.root: data folder not found: .*nowhere"):
        load_domain(DomainConfig(root="nowhere"), "data.target", tmp_path, 8, 3)


def _dom(names, labels):
    labels = np.asarray(labels, np.int32)
    imgs = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
    return Domain("d", imgs, labels, list(names), [str(i) for i in range(len(labels))])


def test_align_many_to_one_and_drop():
    src = _dom(["agriculture", "residential", "water"], [0, 1, 2, 1])
    tgt = _dom(["DenseResidential", "Farmland", "SparseResidential", "Beach"], [0, 1, 2, 3, 0])
    cmap = {"DenseResidential": "residential", "SparseResidential": "residential",
            "Farmland": "agriculture"}
    s, t, names, dropped = align_domains(src, tgt, {}, cmap)
    assert names == ["agriculture", "residential"]
    assert dropped == {"data.source": ["water"], "data.target": ["Beach"]}
    np.testing.assert_array_equal(s.labels, [0, 1, 1])
    np.testing.assert_array_equal(s.images[:, 0, 0, 0], [0, 1, 3])  # the water image is gone
    np.testing.assert_array_equal(t.labels, [1, 0, 1, 1])  # Dense, Farm, Sparse, Dense


def test_align_errors():
    src = _dom(["a", "b"], [0, 1])
    with pytest.raises(DataError, match="data.target.class_map: class 'zz' not found"):
        align_domains(src, _dom(["a"], [0]), {}, {"zz": "a"})
    with pytest.raises(DataError, match="not a source class"):
        align_domains(src, _dom(["q"], [0]), {}, {"q": "nope"})
    with pytest.raises(DataError, match="no class shared"):
        align_domains(src, _dom(["q"], [0]), {}, {})


def test_stratified_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    tr, va = stratified_split(labels, 0.2, seed=3)
    tr2, va2 = stratified_split(labels, 0.2, seed=3)
    tr3, _ = stratified_split(labels, 0.2, seed=4)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(tr, tr3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    np.testing.assert_array_equal(np.bincount(labels[va]), [2, 4, 6, 8])


def test_sampler_epochs_cover_everything_once():
    s = BatchSampler(10, 3, seed=0, stream=0)
    assert s.steps_per_epoch == 3  # drop_remainder: 3 full batches, 1 item left per epoch
    epoch0 = np.concatenate([s.indices(i) for i in range(3)])
    assert len(set(epoch0.tolist())) == 9
    assert not np.array_equal(epoch0, np.concatenate([s.indices(i) for i in range(3, 6)]))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        BatchSampler(2, 3, 0, 0)


def test_balanced_sampler_draws_each_class_equally_often():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    s = BatchSampler(100, 10, seed=3, stream=0, balance_labels=labels)
    drawn = np.concatenate([s.indices(i) for i in range(600)])  # 60 epochs, 6000 draws
    freq = np.bincount(labels[drawn], minlength=3) / len(drawn)
    # each class 1/3 in expectation; binomial std sqrt(p(1-p)/6000) ~ 0.006
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.03)
    # within a class, items equally likely (the 90 of class 0: 2000 draws, ~22 each)
    per_item = np.bincount(drawn[labels[drawn] == 0], minlength=90)[:90]
    assert per_item.min() > 0 and per_item.max() < 3 * per_item.mean()
    # a function of (seed, step): a fresh sampler repeats it; another seed does not
    again = BatchSampler(100, 10, seed=3, stream=0, balance_labels=labels)
    np.testing.assert_array_equal(again.indices(123), s.indices(123))
    other = BatchSampler(100, 10, seed=4, stream=0, balance_labels=labels)
    assert not np.array_equal(other.indices(123), s.indices(123))
    # uniform sampling of the same labels keeps class 0's share
    plain = BatchSampler(100, 10, seed=3, stream=0)
    assert np.mean(labels[np.concatenate([plain.indices(i) for i in range(100)])] == 0) == \
        pytest.approx(0.9, abs=0.02)
    with pytest.raises(ValueError, match="expected 100 labels"):
        BatchSampler(100, 10, 0, 0, balance_labels=labels[:50])


def test_balance_source_balances_the_source_stream_only():
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 255, (40, 2, 2, 3), dtype=np.uint8)
    ys = np.array([0] * 36 + [1] * 4, dtype=np.int32)
    xt = rng.integers(0, 255, (40, 2, 2, 3), dtype=np.uint8)
    kw = dict(batch_size=8, seed=1, augment=False)
    bal = list(train_dataset(xs, ys, xt, balance_source=True, **kw).take(100))
    plain = list(train_dataset(xs, ys, xt, **kw).take(100))
    share = np.mean(np.concatenate([b[1].numpy() for b in bal]) == 1)
    assert share == pytest.approx(0.5, abs=0.06)
    assert np.mean(np.concatenate([b[1].numpy() for b in plain]) == 1) == pytest.approx(0.1, abs=0.01)
    # the labels still belong to their images, and the target stream is untouched
    for x, y, _ in bal[:5]:
        idx = [np.flatnonzero((xs == xi).all(axis=(1, 2, 3)))[0] for xi in x.numpy()]
        np.testing.assert_array_equal(ys[idx], y.numpy())
    for (_, _, tb), (_, _, tp) in zip(bal[:5], plain[:5]):
        np.testing.assert_array_equal(tb.numpy(), tp.numpy())


def test_train_stream_is_a_function_of_seed_and_step():
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 255, (11, 4, 4, 3), dtype=np.uint8)
    ys = np.arange(11, dtype=np.int32)
    xt = rng.integers(0, 255, (7, 4, 4, 3), dtype=np.uint8)
    a = list(train_dataset(xs, ys, xt, batch_size=3, seed=5, augment=True).take(8))
    b = list(train_dataset(xs, ys, xt, batch_size=3, seed=5, augment=True, start_step=5).take(3))
    for (s1, l1, t1), (s2, l2, t2) in zip(a[5:], b):
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_array_equal(t1, t2)
    s, l, t = a[0]
    assert s.shape == (3, 4, 4, 3) and t.shape == (3, 4, 4, 3) and l.dtype.name == "int32"
    # each source image is one of the inputs, maybe flipped, and its label is its index
    for img, lab in zip(s.numpy(), l.numpy()):
        cands = [xs[lab], xs[lab][:, ::-1], xs[lab][::-1], xs[lab][::-1, ::-1]]
        assert any(np.array_equal(img, c) for c in cands)
    # source-only runs get an empty target batch (no target image enters the step)
    s0, _, t0 = next(iter(train_dataset(xs, ys, xt, batch_size=3, seed=5, augment=False,
                                        use_target=False)))
    assert t0.shape[0] == 0 and s0.shape[0] == 3


def test_tfds_domain_under_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        d = load_domain(DomainConfig(tfds="mnist", split="train"), "data.target", tmp_path, 16, 3)
    assert d.images.shape == (24, 16, 16, 3) and d.images.dtype == np.uint8
    assert d.class_names == [str(i) for i in range(10)]
    assert d.labels.min() >= 0 and d.labels.max() <= 9
    # grayscale repeated into three equal channels
    np.testing.assert_array_equal(d.images[..., 0], d.images[..., 2])


@pytest.mark.parametrize("balance", [False, True])
def test_training_run_feeds_class_balanced_source_batches_when_asked(tmp_path, monkeypatch, balance):
    """``data.balance_source`` reaches the training stream of a real run (not only the sampler)."""
    import tensorflow as tf
    from conftest import tiny_config
    from ddc.config import from_dict
    from ddc.train import loop, train_and_evaluate

    src = make_tree(tmp_path / "src", classes=("a",), per_class=24, seed=1)
    make_tree(src, classes=("b",), per_class=4, seed=3)
    tgt = make_tree(tmp_path / "tgt", classes=("a", "b"), per_class=8, seed=2)
    seen = []
    real = loop.distributed_stream

    def record(y):
        seen.append(y.numpy())
        return y

    def recording(*args, **kw):  # the run's own stream, with each source label batch noted
        return real(*args, **kw).map(
            lambda xs, ys, xt: (xs, tf.py_function(record, [ys], tf.int32), xt))

    monkeypatch.setattr(loop, "distributed_stream", recording)
    cfg = tiny_config(src, tgt, steps=40, eval_every=40, checkpoint_every=40)
    cfg["data"]["balance_source"] = balance
    train_and_evaluate(from_dict(cfg), tmp_path / "run")
    labels = np.concatenate(seen[:40])  # prefetching may run a few batches ahead
    share_b = np.mean(labels == 1)  # classes sorted: a = 0, b = 1; b is 1/7 of the source
    assert (share_b > 0.35) if balance else (share_b < 0.25)
