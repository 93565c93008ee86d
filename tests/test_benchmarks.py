"""Smoke tests of the speed benchmarks: each runs its smallest setting in-process and prints a
header and markdown tables with the expected rows and positive timings."""

import subprocess

import pytest

from conftest import REPO, make_tree

from benchmarks import (bench_backbones, bench_mmd, bench_optimizer, bench_pipeline,
                        bench_precision, bench_step, common)


def _check_header(text: str, script: str):
    assert "- command: `" in text and script in text
    assert "nproc=" in text and "tensorflow " in text


def _by_first_column(rows: list[dict]) -> dict:
    return {next(iter(r.values())): r for r in rows}


@pytest.fixture
def tiny_jpeg_config(tmp_path, write_config):
    """A two-domain JPEG tree and a LeNet DDC config over it (16 px, batch 4+4)."""
    src = make_tree(tmp_path / "src", per_class=6, size=20, seed=1, ext=".jpg")
    tgt = make_tree(tmp_path / "tgt", per_class=6, size=20, seed=2, ext=".jpg", colour_shift=30)
    cfg = {"name": "tiny", "seed": 0,
           "data": {"source": {"root": str(src)}, "target": {"root": str(tgt)},
                    "image_size": 16, "channels": 3, "val_fraction": 0.25, "augment": True},
           "model": {"backbone": "lenet", "adapt_width": 16},
           "align": {"mmd": {"weight": 0.5}},
           "train": {"steps": 10, "batch_size": 4, "optimizer": "adam", "lr": 0.001}}
    return write_config(cfg), tmp_path


def test_common_helpers():
    assert common.number("12.5 ± 0.3") == 12.5 and common.number("1.20x") == 1.2
    s = common.Stats([1.0, 2.0, 3.0, 10.0])
    assert (s.mean, s.median) == (4.0, 2.5)
    assert s.std == pytest.approx(4.0825, abs=1e-4)
    assert common.ratios([2.0, 6.0], [1.0, 2.0]).values == [2.0, 3.0]
    tables = common.parse_tables("x\n\n" + common.table(["a", "b"], [[1, 2], [3, 4]]) + "\n\ny\n"
                                 + common.table(["c"], [[5]]))
    assert tables == [[{"a": "1", "b": "2"}, {"a": "3", "b": "4"}], [{"c": "5"}]]
    calls = []
    times = common.alternate({n: (lambda n=n, t=t: calls.append(n) or t)
                              for n, t in (("A", 1.0), ("B", 2.0), ("C", 3.0))},
                             repeats=4, warmup=1)
    # warm-up in order, then each round rotated by one: nobody always runs first
    assert "".join(calls) == "ABC" + "ABC" + "BCA" + "CAB" + "ABC"
    assert times == {"A": [1.0] * 4, "B": [2.0] * 4, "C": [3.0] * 4}


def test_build_run_builds_the_configs_terms_or_none():
    import numpy as np
    cfg = common.load_config("demo", ["train.batch_size=4", "model.adapt_width=8"])
    run = common.build_run(cfg, 5)
    assert [t.name for t in run.terms] == ["mmd"] and run.weights == [cfg.align["mmd"].weight]
    assert run.use_target and run.images_per_step == 8
    # the optimizer updates exactly the step's variables: the network's trainable ones
    assert [v.path for v in run.step.variables] == [v.path for v in run.net.model.trainable_variables]
    ft = common.build_run(common.source_only(cfg), 5)
    assert ft.terms == [] and ft.weights == [] and not ft.use_target and ft.images_per_step == 4
    assert cfg.align and common.source_only(cfg).align == {}  # a copy: cfg keeps its terms
    # a term with variables of its own: they join the step's update
    dann = common.build_run(common.load_config("demo", ["train.batch_size=4", "model.adapt_width=8",
                                                        'align={"dann": {"weight": 1.0}}']), 5)
    extra = [v.path for v in dann.step.variables[len(dann.net.model.trainable_variables):]]
    assert extra and all("dann" in p for p in extra)
    it = iter(common.batch_dataset(common.random_batches(cfg, 5, count=2)))
    for r in (run, ft, dann):
        out = common.one_step(r, it, r.weights)
        assert bool(out["finite"]) and int(r.step_var.numpy()) == r.done == 1
    assert set(dann.step.outputs) >= {"align/dann", "align/dann/disc_acc"}
    blk = common.multi_step_block(run, it, 2, run.weights, per_call=2)
    assert blk() > 0 and int(run.step_var.numpy()) == run.done == 5  # priming call + one timed
    assert np.isfinite(float(common.one_step(run, it, [0.0])["align/mmd"]))


def test_step_without_mmd_keeps_the_target_pass_and_drops_only_the_mmd():
    cfg = common.load_config("demo", ["train.batch_size=4", "model.adapt_width=8"])
    batch = common.random_batches(cfg, 5, count=1)[0]
    outs = {}
    for label, replace in (("ddc", None), ("zero", bench_mmd.WITHOUT_MMD)):
        run = common.build_run(cfg, 5, replace_terms=replace)
        assert run.use_target and [t.name for t in run.terms] == ["mmd"]
        outs[label] = {k: float(v) for k, v in run.step(*batch, run.weights).items()}
    assert outs["ddc"]["align/mmd"] > 0 and outs["zero"]["align/mmd"] == 0.0
    assert outs["zero"]["align/mmd/bandwidth_base"] > 0
    assert outs["zero"]["total_loss"] == pytest.approx(outs["zero"]["cls_loss"], rel=1e-6)


def test_fit_ddc_model_computes_our_steps_loss():
    """``fit DDC``'s train_step and our step: the same loss on the same batch from the same
    weights (it times Keras's machinery around the same arithmetic)."""
    import keras
    cfg = common.load_config("demo", ["train.batch_size=4", "model.adapt_width=8"])
    x_s, y, x_t = common.random_batches(cfg, 5, count=1)[0]
    keras.utils.set_random_seed(cfg.seed)
    ours = common.build_run(cfg, 5)
    want = float(ours.step(x_s, y, x_t, ours.weights)["total_loss"])
    fit = bench_step.fit_model(cfg, 5, True)
    got = float(fit.train_step(((x_s, x_t), y))["loss"])
    assert got == pytest.approx(want, rel=1e-5)
    ft = bench_step.fit_model(cfg, 5, False)
    assert ft.outputs[0].shape[-1] == 5


def test_bench_step_and_mmd_need_the_mmd_term():
    with pytest.raises(SystemExit, match="no active mmd term"):
        bench_step.main(["--config", "demo", "--set", "align={}"])
    for spec in ('align={"coral": {}}', 'align.mmd.weight=0'):
        with pytest.raises(SystemExit, match="no active mmd term"):
            bench_mmd.require_mmd(common.load_config("demo", [spec]), "bench_mmd", "demo")
    bench_mmd.require_mmd(common.load_config("demo"), "bench_mmd", "demo")  # has it: no exit


def test_bench_mmd_smallest():
    text = bench_mmd.main(["--batches", "8", "--width", "16", "--repeats", "2", "--calls", "1",
                           "--step-configs", "demo", "--step-batch", "8", "--step-steps", "1"])
    _check_header(text, "bench_mmd")
    times, shares = common.parse_tables(text)
    assert [r["estimator"] for r in times] == [v[0] for v in bench_mmd.VARIANTS]
    assert all(r["batch"] == "8+8" and common.number(r["mean ± std ms"]) > 0 for r in times)
    (row,) = shares
    assert row["config"] == "demo" and common.number(row["DDC step ms"]) > 0
    assert common.number(row["gaussian biased share %"]) > 0


def test_bench_step_smallest():
    text = bench_step.main(["--config", "demo", "--set", "train.batch_size=8", "--repeats", "1",
                            "--steps", "1", "--no-xla"])
    _check_header(text, "bench_step")
    speed, ratios = common.parse_tables(text)
    speed = _by_first_column(speed)
    assert set(speed) == {"ours finetune", "fit finetune", "ours DDC", "fit DDC",
                          "ours DDC, MMD = 0", "MMD alone"}
    assert speed["ours finetune"]["images/step"] == "8" and speed["ours DDC"]["images/step"] == "16"
    assert all(common.number(r["images/s mean ± std"]) > 0 for r in speed.values())
    ratios = _by_first_column(ratios)
    assert common.number(ratios["finetune: ours / fit (images/s)"]["mean ± std"]) > 0
    assert common.number(ratios["MMD share of the DDC step, isolated (%)"]["mean ± std"]) > 0


def test_bench_optimizer_smallest():
    text = bench_optimizer.main(["--config", "demo", "--set", "train.batch_size=4",
                                 "--repeats", "1", "--block-s", "0.01"])
    _check_header(text, "bench_optimizer")
    speed, ratios = common.parse_tables(text)
    speed = _by_first_column(speed)
    assert set(speed) == {"apply, fused", "apply, Keras update_step", "DDC step, fused",
                          "DDC step, Keras update_step"}
    assert speed["apply, fused"]["calls per block"] == speed["apply, Keras update_step"][
        "calls per block"]
    assert all(common.number(r["ms per call mean ± std"]) > 0 for r in speed.values())
    ratios = _by_first_column(ratios)
    assert common.number(ratios["apply: Keras time / fused time"]["mean ± std"]) > 0
    same = ratios["same update: max abs(w_fused - w_keras) / max abs(update), one step"]
    assert float(same["mean ± std"]) < 1e-3  # the same update up to float32 rounding


def _lenet_params(size, channels, padding, width, classes):
    """Trainable parameters of LeNet + adaptation layer + classifier, counted by hand."""
    side = size
    for _ in range(2):  # 5x5 convolution, then 2x2 pooling
        side = (side if padding == "same" else side - 4) // 2
    convs = (25 * channels + 1) * 20 + (25 * 20 + 1) * 50
    return convs + (side * side * 50 + 1) * 500 + (500 + 1) * width + (width + 1) * classes


def test_bench_backbones_smallest():
    text = bench_backbones.main(["--config", "demo", "--set", "train.batch_size=4",
                                 "--repeats", "2", "--steps", "1"])
    _check_header(text, "bench_backbones")
    speed, ratios = common.parse_tables(text)
    speed = _by_first_column(speed)
    assert set(speed) == {"lenet", "lenet_caffe"}
    for name, padding in [("lenet", "same"), ("lenet_caffe", "valid")]:  # demo: 24 px RGB
        assert speed[name]["trainable parameters"] == f"{_lenet_params(24, 3, padding, 256, 5):,}"
        assert speed[name]["images/step"] == "8"  # 4 source + 4 target
        assert common.number(speed[name]["images/s mean ± std"]) > 0
    assert common.number(ratios[0]["mean ± std"]) > 0


def test_bench_pipeline_smallest(tiny_jpeg_config):
    path, root = tiny_jpeg_config
    text = bench_pipeline.main(["--config", str(path), "--data-root", str(root), "--repeats", "1",
                                "--batches", "2", "--warm-batches", "1", "--steps", "1"])
    _check_header(text, "bench_pipeline")
    speed, ratios = common.parse_tables(text)
    speed = _by_first_column(speed)
    assert set(speed) == {"pipeline, decoded cache (train_dataset)", "pipeline, decode every image",
                          "step, fixed batches", "step fed by train_dataset"}
    assert all(common.number(r["images/s mean ± std"]) > 0 for r in speed.values())
    assert len(ratios) == 3 and all(common.number(r["mean ± std"]) > 0 for r in ratios)


def test_decode_every_time_matches_the_files(tmp_path):
    import numpy as np
    from PIL import Image
    make_tree(tmp_path / "d", classes=("a",), per_class=2, size=8, ext=".png")
    files = sorted(str(p) for p in (tmp_path / "d" / "a").iterdir())
    ds = bench_pipeline.decode_every_time(files, np.zeros(2, np.int32), 8, 3, 2, 0, False)
    x, y = next(iter(ds))
    want = {np.asarray(Image.open(f)).tobytes() for f in files}
    assert x.dtype == "uint8" and {a.tobytes() for a in x.numpy()} == want


def test_bench_adapt_smallest(tiny_jpeg_config):
    pytest.importorskip("adapt", reason="adapt is a benchmark-only package")
    from benchmarks import bench_adapt
    path, root = tiny_jpeg_config
    text = bench_adapt.main(["--config", str(path), "--data-root", str(root), "--repeats", "1",
                             "--steps", "2", "--steps-per-call", "2", "--batch-sizes", "2",
                             "--seeds", "0"])  # accuracy runs: see below
    _check_header(text, "bench_adapt")
    rows, by_batch = common.parse_tables(text)
    rows = _by_first_column(rows)
    b = common.load_config(str(path)).train.batch_size
    by_batch = _by_first_column(by_batch)
    assert set(by_batch) == {"2+2", f"{b}+{b}"}
    # the sweep's row at the config's batch is the main table's paired ratios
    for kind in ("DeepCORAL", "DANN"):
        assert by_batch[f"{b}+{b}"][f"ours / {kind}"] == \
            rows[f"ADAPT {kind}"]["ours / this (images/s, paired)"]
        assert common.number(by_batch["2+2"][f"ours, 2 steps per call / {kind}"]) > 0
    multi = "ours DDC (MMD), 2 steps per call"
    assert set(rows) == {"ours DDC (MMD)", multi, "ADAPT DeepCORAL", "ADAPT DANN"}
    for r in rows.values():
        assert common.number(r["images/s mean ± std"]) > 0
        assert common.number(r["ours / this (images/s, paired)"]) > 0
        assert common.number(r["ours, 2 steps per call / this (images/s, paired)"]) > 0
    assert rows[multi]["target acc after 300 steps (0 seeds)"].startswith("same as ours")
    assert rows["ADAPT DANN"]["target acc after 300 steps (0 seeds)"] == "not run"


def test_profile_step_shares():
    from benchmarks import profile_step
    got = profile_step.shares({"IDLE": 5.0, "Conv2D": 1.0, "MatMul": 3.0})
    assert got == {"Conv2D": 25.0, "MatMul": 75.0}


def test_profile_step_smallest(tiny_jpeg_config, tmp_path):
    pytest.importorskip("xprof", reason="xprof is a benchmark-only package")
    from benchmarks import profile_step
    path, root = tiny_jpeg_config
    logdir = tmp_path / "prof"
    text = profile_step.main(["--config", str(path), "--data-root", str(root), "--steps", "3",
                              "--warmup", "1", "--top", "1000", "--logdir", str(logdir)])
    _check_header(text, "profile_step")
    (rows,) = common.parse_tables(text)
    rows = _by_first_column(rows)
    assert len(list(logdir.glob("m0/plugins/profile/*/*.xplane.pb"))) == 1  # kept for TensorBoard
    col = "ours DDC (MMD) % of op time"
    listed = {t: r for t, r in rows.items() if not t.startswith("(") and not t.startswith("IDLE")}
    # LeNet's step runs convolutions forward and backward; the shares of all op types add to 100
    conv = [t for t in listed if "Conv2D" in t]
    assert len(conv) >= 2 and all(common.number(listed[t][col]) > 0 for t in conv)
    assert sum(common.number(r[col]) for r in listed.values()) == pytest.approx(100, abs=0.5)
    all_conv = rows["(all convolutions: *Conv2D*)"]
    assert common.number(all_conv[col]) == pytest.approx(
        sum(common.number(listed[t][col]) for t in conv), abs=0.2)


def test_adapt_split_network_trains_only_its_own_parts():
    """ADAPT's encoder is our network up to the adaptation layer and its task is our logits
    layer: one ADAPT step moves both, and the encoder holds no logits variable (which its
    encoder optimizer would otherwise also update)."""
    pytest.importorskip("adapt", reason="adapt is a benchmark-only package")
    import numpy as np
    from benchmarks import bench_adapt
    cfg = common.load_config("demo", ["train.batch_size=4", "model.adapt_width=8"])
    rng = np.random.default_rng(0)
    size = cfg.data.image_size
    x_s = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    x_t = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 8)]
    model, encoder, task = bench_adapt.adapt_model("DANN", cfg, 5, x_t)
    assert not any("logits" in v.path for v in encoder.trainable_variables)
    assert [v.path for v in task.trainable_variables] == ["logits/kernel", "logits/bias"]
    before = [v.numpy().copy() for v in encoder.trainable_variables + task.trainable_variables]
    assert bench_adapt.adapt_fit(model, x_s, y, 4, 1) == 1
    after = [v.numpy() for v in encoder.trainable_variables + task.trainable_variables]
    assert all(np.any(a != b) for a, b in zip(before, after))
    pred = np.argmax(task(encoder(x_t)).numpy(), axis=1)
    acc = bench_adapt.accuracy(lambda x: task(encoder(x)), x_t, pred, batch=3)
    assert acc == 1.0  # batching with a padded last batch keeps the order


def test_bench_precision_smallest():
    text = bench_precision.main(["--runs", "demo", "--steps", "1", "--warmup", "1"])
    _check_header(text, "bench_precision")
    (rows,) = common.parse_tables(text)
    assert [r["precision"] for r in rows] == ["float32", "mixed_float16"]
    assert rows[0]["speedup vs float32"] == "1.00x"
    assert common.number(rows[1]["speedup vs float32"]) == pytest.approx(
        common.number(rows[1]["images/s"]) / common.number(rows[0]["images/s"]), abs=0.02)
    assert all(common.number(r["images/s"]) > 0 and r["losses finite"] == "yes" for r in rows)
    import keras
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_gpu_check_script_parses():
    script = REPO / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "benchmarks/bench_precision.py" in script.read_text()


def test_finetune_table_block_is_written_beside_the_main_table(tmp_path):
    """``--block`` adds its own generated table after the main one and later replaces only
    its own: the main table's text, and what is written around both, stay as they were."""
    from benchmarks import finetune_table as ft
    doc = tmp_path / "F.md"
    doc.write_text("intro\n<!-- finetune-table:start -->\nMAIN\n<!-- finetune-table:end -->\n"
                   "reading\n")
    ft.write_table(doc, "<!-- finetune-table-ls:start -->\nLS 1\n<!-- finetune-table-ls:end -->",
                   block="ls")
    first = doc.read_text()
    assert first.startswith("intro\n<!-- finetune-table:start -->\nMAIN\n")
    assert first.index("reading") < first.index("LS 1")
    ft.write_table(doc, "<!-- finetune-table-ls:start -->\nLS 2\n<!-- finetune-table-ls:end -->",
                   block="ls")
    assert doc.read_text() == first.replace("LS 1", "LS 2")
    ft.write_table(doc, "<!-- finetune-table:start -->\nMAIN 2\n<!-- finetune-table:end -->")
    assert doc.read_text() == first.replace("LS 1", "LS 2").replace("MAIN\n", "MAIN 2\n")
    rows = {"partial_224_d4_ls": [{"acc": 0.9, "acc_tta": 0.91, "mean_class_acc": 0.9,
                                   "trainable_params": 10, "steps": 5, "wall_s": 1.0}]}
    table = ft.render(rows, [0], "cmd", 1.0, block="ls")
    assert table.startswith(ft.markers("ls")[0]) and table.endswith(ft.markers("ls")[1])
    assert "| 0.900 ± 0.000 | 0.910 ± 0.000 |" in table
