"""Bad input: every case ends in one clear line before training (exit 2, no traceback), or, for
unreadable files with ``data.skip_bad_files``, in a skip that the log and results.json name.

The documented answer per case is in docs/ROBUSTNESS.md. Most cases call ``ddc.cli.train_main``
in-process (it returns the exit status); a few run ``scripts/train_ddc.py`` as a subprocess to
prove the real exit status and that no traceback reaches the user.
"""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from helpers_data import (add_mixed_formats, add_non_images, assert_clean_error, class_image,
                          jpeg_bytes, junk, make_tree, png_bytes, run_cli, tiny_config,
                          truncated_jpeg, truncated_png, write_config, write_image, zero_byte)

WEIGHTS_ROOT = Path(os.environ.get("DDC_WEIGHTS_ROOT",
                                   Path(__file__).resolve().parents[2] / "shared" / "weights"))
V1_FILE = "mobilenet_2_5_224_tf_no_top.h5"          # MobileNet v1, alpha 0.25
V2_FILE = "mobilenet_v2_1.0_224_no_top.weights.h5"  # MobileNet v2, alpha 1.0


@pytest.fixture(autouse=True)
def _own_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DDC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def trees(tmp_path):
    return make_tree(tmp_path / "src"), make_tree(tmp_path / "tgt", seed=2, shift=30)


def train(tmp_path, capsys, cfg: dict, *extra: str, workdir="run"):
    """Runs the CLI in-process; returns (exit status, stderr)."""
    from ddc.cli import train_main

    config = write_config(tmp_path / "config.json", cfg)
    code = train_main(["--config", str(config), "--workdir", str(tmp_path / workdir), *extra])
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- data: errors

def _missing_root(t):
    return {"data": {"source": {"root": str(t / "nowhere")}}}, ["data.source.root: data folder "
                                                              "not found", "nowhere"]


def _root_is_file(t):
    (t / "list.txt").write_text("a.jpg\n")
    return {"data": {"target": {"root": str(t / "list.txt")}}}, ["data.target.root: expected a "
                                                               "folder of class folders"]


def _empty_dataset(t):
    (t / "empty").mkdir()
    (t / "empty" / "notes.txt").write_text("todo")
    return {"data": {"target": {"root": str(t / "empty")}}}, ["data.target.root: no class folders",
                                                            "empty"]


def _empty_class(t):
    (t / "src" / "d").mkdir()
    add_non_images(t / "src" / "d")  # only files that are not images
    return {}, ["data.source.root: class folder without images", str(t / "src" / "d")]


def _zero_byte(t):
    zero_byte(t / "src" / "b" / "zero.png")
    return {}, ["zero.png: cannot decode image (empty file (0 bytes))", "data.skip_bad_files"]


def _truncated_jpeg(t):
    truncated_jpeg(t / "tgt" / "c" / "cut.jpg")
    return {}, [str(t / "tgt" / "c" / "cut.jpg") + ": cannot decode image", "data.skip_bad_files"]


def _truncated_png(t):
    truncated_png(t / "src" / "a" / "cut.png")
    return {}, ["cut.png: cannot decode image (Invalid PNG data"]


def _not_an_image(t):
    junk(t / "src" / "a" / "readme.jpg")
    junk(t / "src" / "a" / "also.png")
    return {}, ["also.png: cannot decode image", "(and 1 more unreadable files"]


def _broken_link(t):
    os.symlink(t / "gone.png", t / "src" / "a" / "link.png")
    return {}, ["link.png: cannot decode image (broken link to"]


def _source_map_absent(t):
    return {"data": {"source": {"class_map": {"zz": "a"}}}}, ["data.source.class_map: class 'zz' "
                                                            "not found"]


def _target_map_absent(t):
    return {"data": {"target": {"class_map": {"zz": "a"}}}}, ["data.target.class_map: class 'zz' "
                                                            "not found", "its classes: a, b, c"]


def _target_map_onto_absent(t):
    return {"data": {"target": {"class_map": {"a": "nope"}}}}, ["data.target.class_map: maps onto "
                                                              "'nope', which is not a source class"]


def _nothing_shared(t):
    make_tree(t / "other", classes=("x", "y"))
    return {"data": {"target": {"root": str(t / "other")}}}, ["no class shared by",
                                                            "set data.target.class_map"]


def _source_below_batch(t):
    return {"train": {"batch_size": 13}}, ["data.source (training split): 12 images, fewer than "
                                           "one batch (train.batch_size=13)"]


def _target_below_batch(t):
    make_tree(t / "small", per_class=2)
    return ({"data": {"target": {"root": str(t / "small")}}, "train": {"batch_size": 8}},
            ["data.target: 6 images, fewer than one batch (train.batch_size=8)"])


def _class_all_unreadable(t):
    for f in (t / "src" / "b").iterdir():
        f.write_bytes(b"")
    return {"data": {"skip_bad_files": True}}, ["data.source.root: every image of class 'b'"]


DATA_ERRORS = [_missing_root, _root_is_file, _empty_dataset, _empty_class, _zero_byte,
               _truncated_jpeg, _truncated_png, _not_an_image, _broken_link, _source_map_absent,
               _target_map_absent, _target_map_onto_absent, _nothing_shared, _source_below_batch,
               _target_below_batch, _class_all_unreadable]


@pytest.mark.parametrize("case", DATA_ERRORS, ids=lambda f: f.__name__.strip("_"))
def test_bad_data_is_one_clear_error(case, tmp_path, trees, capsys):
    src, tgt = trees
    changes, fragments = case(tmp_path)
    code, err = train(tmp_path, capsys, tiny_config(src, tgt, **changes))
    assert_clean_error(code, err, *fragments)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


def test_cheap_checks_come_before_decoding(tmp_path, trees, capsys):
    """A wrong target root is reported before the source's unreadable file is even decoded."""
    src, tgt = trees
    zero_byte(src / "a" / "zero.png")
    cfg = tiny_config(src, tmp_path / "no_target")
    code, err = train(tmp_path, capsys, cfg)
    assert_clean_error(code, err, "data.target.root: data folder not found")


def test_source_only_run_accepts_a_target_smaller_than_a_batch(tmp_path, trees):
    from ddc.config import from_dict
    from ddc.data.prepare import prepare_data

    src, _ = trees
    small = make_tree(tmp_path / "small", per_class=1)
    cfg = from_dict(tiny_config(src, small, align={"mmd": {"weight": 0.0}}, train={"batch_size": 8}))
    data = prepare_data(cfg, tmp_path)
    assert len(data.target) == 3 and len(data.source_train) == 12


# ----------------------------------------------------------------------------- data: decoding

def test_truncated_jpeg_is_never_decoded_silently(tmp_path):
    """TensorFlow's JPEG decoder is strict: any cut that loses pixel data fails, even the cut of
    the whole 2-byte end-of-image marker. A file missing only the marker's last byte (``FF``
    kept) may decode, and then to exactly the full file's pixels: nothing is lost, so no extra
    end-marker check (which would reject valid files with trailers) is made."""
    from ddc.data import DataError, decode_image

    y, x = np.mgrid[0:48, 0:64]
    smooth = np.dstack([x * 4, y * 5, (x + y) * 2]).astype(np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for name, arr in (("smooth", smooth), ("noisy", noisy)):
        for progressive in (False, True):
            data = jpeg_bytes(arr, progressive=progressive, quality=90)
            assert data[-2:] == b"\xff\xd9"
            full = tmp_path / f"{name}{progressive}.jpg"
            full.write_bytes(data)
            whole = decode_image(full, 16, 3)
            one_short = tmp_path / f"{name}{progressive}_1.jpg"
            one_short.write_bytes(data[:-1])
            try:
                np.testing.assert_array_equal(decode_image(one_short, 16, 3), whole)
            except DataError:
                pass
            for cut in (2, 3, 9, 100, len(data) // 3):
                p = tmp_path / f"{name}{progressive}_{cut}.jpg"
                p.write_bytes(data[:-cut])
                with pytest.raises(DataError, match=f"{p.name}: cannot decode image"):
                    decode_image(p, 16, 3)
    data = png_bytes(noisy)
    (tmp_path / "cut.png").write_bytes(data[:-12])   # only the IEND chunk missing
    with pytest.raises(DataError, match="cut.png: cannot decode image"):
        decode_image(tmp_path / "cut.png", 16, 3)


def test_decoder_messages_are_one_clean_line(tmp_path):
    from ddc.data import DataError, decode_image

    truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(DataError) as e:
        decode_image(tmp_path / "cut.jpg", 16, 3)
    msg = str(e.value)
    assert "\n" not in msg and "{{" not in msg and "[Op:" not in msg, msg


def test_awkward_formats_decode_to_the_same_pixels(tmp_path):
    """Other sizes, gray, RGBA, palette, 16-bit, float, multi-band and planar TIFF, CMYK."""
    from ddc.data import decode_image

    add_mixed_formats(tmp_path, k=1, seed=5)
    rgb = class_image(1, np.random.default_rng(5), 16)   # the same draw as add_mixed_formats
    gray3 = np.repeat(rgb.mean(axis=-1).astype(np.uint8)[:, :, None], 3, axis=-1)
    exact = {"rgba.png": rgb, "rgb16.tif": rgb, "float.tif": rgb, "bands5.tif": rgb,
             "planar.tif": rgb, "gray.png": gray3, "gray16.png": gray3, "graya.png": gray3,
             "frame.gif": None}
    for name, want in exact.items():
        got = decode_image(tmp_path / name, 16, 3)
        assert got.shape == (16, 16, 3) and got.dtype == np.uint8, name
        if want is not None:
            np.testing.assert_array_equal(got, want, err_msg=name)
    for name, want, tol in (("cmyk.jpg", rgb, 12), ("gray.jpg", gray3, 6),
                            ("palette.png", rgb, 40)):
        got = decode_image(tmp_path / name, 16, 3).astype(int)
        assert np.abs(got.mean((0, 1)) - want.mean((0, 1))).max() < tol / 4, name
        assert np.abs(got - want).mean() < tol, name
    for name in ("big.png", "small.bmp"):   # other sizes: resized, brightness kept
        got = decode_image(tmp_path / name, 16, 3)
        assert got.shape == (16, 16, 3) and abs(got.mean() - rgb.mean()) < 12, name


def test_float_tiff_nan_is_zero_not_garbage(tmp_path):
    import warnings

    from ddc.data import decode_image

    arr = np.full((8, 8), 0.5, np.float32)
    arr[:4] = np.nan
    write_image(tmp_path / "nan.tif", arr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        out = decode_image(tmp_path / "nan.tif", 8, 1)[:, :, 0]
    np.testing.assert_array_equal(out[:4], 0)
    np.testing.assert_array_equal(out[4:], 128)


def test_non_images_and_hidden_files_are_ignored(tmp_path, caplog):
    from ddc.config import DomainConfig
    from ddc.data import load_domain

    root = make_tree(tmp_path / "d", classes=("x", "y"), per_class=3)
    add_non_images(root / "x")
    (root / "y" / ".ipynb_checkpoints").mkdir()
    write_image(root / "y" / ".ipynb_checkpoints" / "000-checkpoint.png",
                np.zeros((4, 4, 3), np.uint8))
    write_image(root / "stray.png", np.zeros((4, 4, 3), np.uint8))   # outside any class folder
    with caplog.at_level(logging.INFO):
        d = load_domain(DomainConfig(root=str(root)), "data.source", tmp_path, 8, 3)
    assert len(d) == 6 and d.skipped == []
    assert all(".ipynb" not in p and "._" not in p for p in d.paths)
    assert ("ignored 4 files that are not images by name (.db: 1, .txt: 1, hidden: 2)"
            in caplog.text)
    assert "ignoring 1 image files outside any class folder" in caplog.text


# ----------------------------------------------------------------------------- data: skipping

def test_disk_cache_keeps_skipped_files_visible(tmp_path, trees, caplog):
    """A cache entry made by a skipping run neither hides the skips nor bypasses the switch."""
    from ddc.config import from_dict
    from ddc.data import DataError
    from ddc.data.prepare import prepare_data

    src, tgt = trees
    zero_byte(src / "a" / "zero.png")
    cfg = tiny_config(src, tgt, data={"cache": "disk", "cache_dir": str(tmp_path / "c"),
                                      "skip_bad_files": True})
    first = prepare_data(from_dict(cfg), tmp_path)
    assert len(first.skipped) == 1 and "zero.png" in first.skipped[0]
    assert len(list((tmp_path / "c").glob("images_*.npy"))) == 2
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = prepare_data(from_dict(cfg), tmp_path)   # from the cache
    assert "from disk cache" in caplog.text and "skipped: " in caplog.text
    assert again.skipped == first.skipped
    np.testing.assert_array_equal(again.source_train.images, first.source_train.images)
    cfg["data"]["skip_bad_files"] = False
    with pytest.raises(DataError, match="zero.png: cannot decode image.*data.skip_bad_files"):
        prepare_data(from_dict(cfg), tmp_path)


def test_corrupt_disk_cache_is_rebuilt(tmp_path, trees, caplog):
    from ddc.config import from_dict
    from ddc.data.prepare import prepare_data

    src, tgt = trees
    cfg = from_dict(tiny_config(src, tgt, data={"cache": "disk", "cache_dir": str(tmp_path / "c")}))
    first = prepare_data(cfg, tmp_path)
    for npy in (tmp_path / "c").glob("images_*.npy"):
        npy.write_bytes(npy.read_bytes()[:100])    # torn by a crash of some other tool
    with caplog.at_level(logging.WARNING):
        again = prepare_data(cfg, tmp_path)
    assert "ignoring unusable disk cache" in caplog.text
    np.testing.assert_array_equal(again.target.images, first.target.images)


# ----------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("override,fragments", [
    ("train.lrr=0.1", ["train.lrr: unknown key", "known keys:"]),
    ("model.freeze.depth=3", ["model.freeze.depth: unknown key"]),
    ('train.steps="ten"', ["train.steps: expected an integer, got \"ten\""]),
    ("data.skip_bad_files=1", ["data.skip_bad_files: expected true or false"]),
    ("align.mmd.weight=-0.5", ["align.mmd.weight: expected a number >= 0"]),
    ("align.mcc.temperature=-1", ["align.mcc.temperature: expected a number > 0"]),
    ("align.dan.layers=[\"nope\"]", ["align.dan.layers: expected layer names among features, "
                                      "logits, softmax, pooled, adapt, got [\"nope\"]"]),
    ("align.coarl.weight=1", ["align.coarl: unknown method (known: mmd,"]),
    ("train.lr=Infinity", ["train.lr: expected finite numbers (no Infinity or NaN)"]),
    ("train.lr=0", ["train.lr: expected a number > 0, got 0"]),
    ("train.lr=-0.01", ["train.lr: expected a number > 0"]),
    ("train.batch_size=0", ["train.batch_size: expected an integer >= 1"]),
    ("align.mmd.estimator=linear", ["train.batch_size: expected an even integer >= 2 for the "
                              "linear estimator, got 5"]),
    ("model.backbone=resnet9000", ["model.backbone: expected one of lenet"]),
    ("train.optimizer=rmsprop", ["train.optimizer: expected one of sgd, adam"]),
])
def test_bad_config_is_one_clear_error(override, fragments, tmp_path, trees, capsys):
    src, tgt = trees
    cfg = tiny_config(src, tgt, train={"batch_size": 5})
    code, err = train(tmp_path, capsys, cfg, "--set", override)
    assert_clean_error(code, err, *fragments)
    assert not (tmp_path / "run").exists()   # nothing is created for a bad config


def test_batch_too_small_for_unbiased_estimator(tmp_path, trees, capsys):
    cfg = tiny_config(*trees, align={"mmd": {"estimator": "unbiased"}}, train={"batch_size": 1})
    code, err = train(tmp_path, capsys, cfg)
    assert_clean_error(code, err, "train.batch_size: expected an integer >= 2 for the unbiased "
                                  "estimator, got 1")


def test_config_file_problems(tmp_path, capsys):
    from ddc.cli import train_main

    code = train_main(["--config", str(tmp_path / "nope.json")])
    assert_clean_error(code, capsys.readouterr().err, "nope.json: config file not found")
    (tmp_path / "bad.json").write_text('{"train": {"lr": 0.1,}}')
    code = train_main(["--config", str(tmp_path / "bad.json")])
    assert_clean_error(code, capsys.readouterr().err, "bad.json: not valid JSON")
    (tmp_path / "list.json").write_text("[1, 2]")
    code = train_main(["--config", str(tmp_path / "list.json")])
    assert_clean_error(code, capsys.readouterr().err, "expected a JSON object")
    (tmp_path / "ok.json").write_text("{}")
    code = train_main(["--config", str(tmp_path / "ok.json"), "--set", "train.lr"])
    assert_clean_error(code, capsys.readouterr().err, "--set train.lr: expected key.path=value")


def test_missing_weights_file(tmp_path, trees, capsys):
    cfg = tiny_config(*trees, model={"backbone": "mobilenet_v2", "weights": "no/such.h5"},
                      data={"image_size": 32})
    code, err = train(tmp_path, capsys, cfg, "--weights-root", str(tmp_path))
    assert_clean_error(code, err, "model.weights: weights file for backbone mobilenet_v2 not "
                       "found:", str(tmp_path / "no" / "such.h5"))


def test_weights_for_a_scratch_backbone(tmp_path, trees, capsys):
    cfg = tiny_config(*trees, model={"backbone": "lenet", "weights": "imagenet"})
    code, err = train(tmp_path, capsys, cfg)
    assert_clean_error(code, err, "model.weights: lenet is built from scratch")


@pytest.mark.skipif(not (WEIGHTS_ROOT / V1_FILE).is_file(),
                    reason=f"ImageNet weights not found under {WEIGHTS_ROOT}")
@pytest.mark.parametrize("backbone,alpha,file", [
    ("mobilenet_v2", 1.0, V1_FILE),    # another architecture
    ("mobilenet", 1.0, V1_FILE),       # the same architecture at another width
    ("mobilenet", 0.25, V2_FILE),
])
def test_weights_of_another_architecture(backbone, alpha, file, tmp_path, trees, capsys):
    cfg = tiny_config(*trees, model={"backbone": backbone, "alpha": alpha, "weights": file},
                      data={"image_size": 32})
    code, err = train(tmp_path, capsys, cfg, "--weights-root", str(WEIGHTS_ROOT))
    assert_clean_error(code, err, f"model.weights: weights file {WEIGHTS_ROOT / file} does not "
                                  f"fit backbone {backbone}")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- the real CLI

def test_cli_config_error_exit_2_without_traceback(tmp_path, trees):
    cfg = tiny_config(*trees)
    cfg["train"]["learning_rate"] = 0.1
    proc = run_cli(write_config(tmp_path / "c.json", cfg), tmp_path / "run", tmp_path=tmp_path)
    assert_clean_error(proc, proc.stderr, "train.learning_rate: unknown key")
    assert proc.stdout == ""


def test_cli_missing_data_root_exit_2_without_traceback(tmp_path, trees):
    cfg = tiny_config("siri_whu_nope", trees[1])   # relative: under --data-root
    proc = run_cli(write_config(tmp_path / "c.json", cfg), tmp_path / "run", "--data-root",
                   str(tmp_path), tmp_path=tmp_path)
    assert_clean_error(proc, proc.stderr, "data.source.root: data folder not found:",
                       str(tmp_path / "siri_whu_nope"))


def test_cli_bad_files_fail_then_skip_with_the_switch(tmp_path, trees):
    """Unreadable files: exit 2 naming the first; with data.skip_bad_files the run trains on
    the rest and names every skipped file in the log and in results.json. Awkward but valid
    images and non-image files in the same tree are used and ignored respectively."""
    src, tgt = trees
    bad = [truncated_jpeg(src / "a" / "cut.jpg"), zero_byte(src / "b" / "zero.png"),
           junk(tgt / "c" / "fake.tif")]
    add_mixed_formats(src / "c", k=2)
    add_non_images(src / "a")
    add_non_images(tgt / "b")
    cfg = tiny_config(src, tgt)
    config = write_config(tmp_path / "c.json", cfg)
    proc = run_cli(config, tmp_path / "strict", tmp_path=tmp_path)
    assert_clean_error(proc, proc.stderr, "cut.jpg: cannot decode image", "data.skip_bad_files")
    assert "(and 1 more unreadable files" in proc.stderr   # cut.jpg, zero.png; fake.tif is target

    cfg["data"]["skip_bad_files"] = True
    config = write_config(tmp_path / "c.json", cfg)
    proc = run_cli(config, tmp_path / "lenient", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "lenient" / "results.json").read_text())
    assert results["n_skipped_files"] == 3
    log = (tmp_path / "lenient" / "train.log").read_text()
    for path in bad:
        assert sum(str(path) in s for s in results["skipped_files"]) == 1, path
        assert f"skipped: {path}" in log and f"skipped: {path}" in proc.stderr
    assert results["steps"] == 6
    # source: a 6, b 6, c 6 + 14 awkward images, 2 or 5 of each class held out for validation;
    # target: 18 readable images. Non-image files are neither used nor reported as skipped.
    assert "source: 23 train, 9 validation; target: 18 " in log
    assert "data.source.root: ignored 4 files that are not images by name" in log


def test_cli_retry_after_a_failed_start_with_a_fixed_config(tmp_path, trees, capsys):
    """A run that stopped at a data error trained nothing: its corrected config may use the
    same workdir without --restart."""
    src, tgt = trees
    code, err = train(tmp_path, capsys, tiny_config(tmp_path / "typo", tgt))
    assert_clean_error(code, err, "data folder not found")
    code, err = train(tmp_path, capsys, tiny_config(src, tgt, train={"steps": 2}))
    assert code == 0, err[-2000:]


def test_cli_resumes_a_run_written_before_a_config_key_existed(tmp_path, trees, capsys):
    """A config.json without a key the library added later (at its default) is the same run."""
    src, tgt = trees
    cfg = tiny_config(src, tgt, train={"steps": 2})
    code, err = train(tmp_path, capsys, cfg)
    assert code == 0, err[-2000:]
    path = tmp_path / "run" / "config.json"
    stored = json.loads(path.read_text())
    del stored["data"]["balance_source"]
    path.write_text(json.dumps(stored))
    code, err = train(tmp_path, capsys, cfg)  # the same run again: resumed, not refused
    assert code == 0, err[-2000:]
    assert "different config" not in err


def test_cli_refuses_a_workdir_of_another_config(tmp_path, trees, capsys):
    src, tgt = trees
    code, err = train(tmp_path, capsys, tiny_config(src, tgt, train={"steps": 2}))
    assert code == 0, err[-2000:]
    code, err = train(tmp_path, capsys, tiny_config(src, tgt, train={"steps": 2, "lr": 0.01}))
    assert_clean_error(code, err, "holds a run of a different config (differs in train.lr)",
                       "--restart")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["lr"] == 0.003
    code, err = train(tmp_path, capsys, tiny_config(src, tgt, train={"steps": 2, "lr": 0.01}),
                      "--restart")
    assert code == 0, err[-2000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["lr"] == 0.01
