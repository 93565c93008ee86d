"""Faults: SIGKILL at any moment resumes from the latest checkpoint, Ctrl-C saves and exits 130,
a non-finite loss stops with the step and the last good checkpoint, and a resumed deterministic
run ends with exactly the metrics of an uninterrupted one.

The subprocess tests share one uninterrupted reference run, started in the background when the
module's first test asks for it.
"""

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from helpers_data import (REPO, assert_clean_error, cli_args, cli_env, make_tree, metrics_of,
                          run_cli, tiny_config, write_config)

# Long enough that kills land inside training, short enough for a test: about 2 s of steps on a
# free 2-core machine, with 20 checkpoints. 12 source training images, batch 4. A small lambda:
# on this tiny data lambda >= 0.1 collapses the features (uniform predictions), and equal
# metrics of collapsed models would prove little.
FAULT_TRAIN = {"steps": 200, "checkpoint_every": 10, "eval_every": 50, "log_every": 10,
               "keep_checkpoints": 3}
FAULT_ALIGN = {"mmd": {"weight": 0.05}}


class Reference:
    """An uninterrupted run of the fault config in a background process."""

    def __init__(self, base: Path):
        self.base = base
        src = make_tree(base / "src")
        tgt = make_tree(base / "tgt", seed=2, shift=30)
        self.config = write_config(base / "config.json",
                                   tiny_config(src, tgt, name="fault", train=FAULT_TRAIN,
                                               align=FAULT_ALIGN))
        self.workdir = base / "reference"
        self._log = open(base / "reference.stderr", "w")
        self._proc = subprocess.Popen(cli_args(self.config, self.workdir), cwd=REPO,
                                      env=cli_env(base), stdout=subprocess.DEVNULL,
                                      stderr=self._log)
        self._results = None

    def results(self) -> dict:
        if self._results is None:
            code = self._proc.wait(timeout=300)
            self._log.close()
            assert code == 0, (self.base / "reference.stderr").read_text()[-3000:]
            self._results = json.loads((self.workdir / "results.json").read_text())
        return self._results


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = Reference(tmp_path_factory.mktemp("fault"))
    yield ref
    if ref._proc.poll() is None:
        ref._proc.kill()
        ref._proc.wait()


def latest_step(workdir: Path) -> int:
    """The step of the newest checkpoint the run has recorded, -1 before the first."""
    try:
        text = (workdir / "checkpoints" / "checkpoint").read_text()
    except FileNotFoundError:
        return -1
    m = re.search(r'^model_checkpoint_path: ".*ckpt-(\d+)"', text, re.M)
    return int(m.group(1)) if m else -1


def start(ref: Reference, workdir: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_args(ref.config, workdir), cwd=REPO, env=cli_env(ref.base),
                            stdout=subprocess.DEVNULL, stderr=open(log, "a"))


def wait_for_checkpoint_after(proc, workdir: Path, step: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while proc.poll() is None and latest_step(workdir) <= step and time.time() < deadline:
        time.sleep(0.01)


def saved_tensors(path) -> dict:
    """Every saved value of a checkpoint (weights, optimizer slots, step, RNG states) by key."""
    import tensorflow as tf

    skip = ("_CHECKPOINTABLE_OBJECT_GRAPH",)   # save_counter too is compared: it is the step
    reader = tf.train.load_checkpoint(str(path))
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(str(path))
            if name not in skip}


def assert_same_weights(workdir: Path, other: Path, step: int) -> None:
    """Two runs' checkpoints at ``step`` hold bitwise equal values."""
    a = saved_tensors(workdir / "checkpoints" / f"ckpt-{step}")
    b = saved_tensors(other / "checkpoints" / f"ckpt-{step}")
    assert a.keys() == b.keys() and len(a) >= 20   # 10 weights, their Adam slots, step, ...
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def check_run_dir(workdir: Path, steps: int) -> dict:
    """Every file a reader would open is whole: results, config, each eval line, each kept
    checkpoint (whose step is its number)."""
    import tensorflow as tf

    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == steps
    json.loads((workdir / "config.json").read_text())
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records} == set(range(50, steps + 1, 50))
    state = tf.train.get_checkpoint_state(str(workdir / "checkpoints"))
    assert state.model_checkpoint_path.endswith(f"ckpt-{steps}")
    for path in state.all_model_checkpoint_paths:
        saved = int(tf.train.load_checkpoint(path).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))
        assert path.endswith(f"ckpt-{saved}")
    return results


def test_sigkill_and_ctrl_c_at_random_moments_then_resume(reference, tmp_path):
    """One run, stopped three times with the same command restarting it: SIGKILL during
    start-up, Ctrl-C shortly after a random checkpoint, SIGKILL shortly after a later one (mid
    step, mid eval or mid save). It ends with the uninterrupted run's step count, metrics and
    bitwise weights, and every file a reader opens is whole."""
    # the stop times are drawn from a seed, printed so that a failure can be replayed
    seed = int(os.environ.get("DDC_FAULT_SEED", "0"))
    print(f"fault times: DDC_FAULT_SEED={seed}")
    rng = random.Random(seed)
    workdir, log = tmp_path / "run", tmp_path / "stderr.log"
    stops = []

    # 1: SIGKILL somewhere in start-up (imports, decoding, model building, tracing)
    proc = start(reference, workdir, log)
    time.sleep(rng.uniform(1.0, 4.0))
    if proc.poll() is None:
        proc.kill()
        stops.append(("kill", latest_step(workdir)))
    proc.wait()

    # 2: Ctrl-C: the checkpoint is of exactly the step named, and the exit status is 130
    proc = start(reference, workdir, log)
    wait_for_checkpoint_after(proc, workdir, 10 * rng.randint(1, 8) - 1)
    time.sleep(rng.uniform(0.0, 0.2))
    assert proc.poll() is None, "the run ended before it could be interrupted"
    size = log.stat().st_size
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    err = log.read_text()[size:]
    assert code == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = [s for s in err.splitlines() if s.startswith("error: ")]
    assert len(line) == 1 and "interrupted at step" in line[0], err[-3000:]
    step = int(re.search(r"interrupted at step (\d+)", line[0]).group(1))
    assert 0 < step < FAULT_TRAIN["steps"] and latest_step(workdir) == step
    stops.append(("ctrl-c", step))

    # 3: SIGKILL shortly after a later random checkpoint
    proc = start(reference, workdir, log)
    wait_for_checkpoint_after(proc, workdir, max(10 * rng.randint(9, 17) - 1, step))
    time.sleep(rng.uniform(0.0, 0.2))
    if proc.poll() is None:
        proc.kill()
        stops.append(("kill", latest_step(workdir)))
    proc.wait()
    assert sum(kind == "kill" for kind, _ in stops) >= 1, (stops, log.read_text()[-3000:])

    last = latest_step(workdir)
    proc = run_cli(reference.config, workdir, tmp_path=reference.base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoints/ckpt-{last} at step {last}" in proc.stderr, (stops, proc.stderr[-3000:])
    results = check_run_dir(workdir, FAULT_TRAIN["steps"])
    assert metrics_of(results) == metrics_of(reference.results()), stops
    assert_same_weights(workdir, reference.workdir, FAULT_TRAIN["steps"])


def test_two_deterministic_runs_are_identical(reference, tmp_path):
    """A second uninterrupted run, here in the test process, gives the reference's (another
    process's) metrics and weights exactly."""
    from ddc.config import load
    from ddc.train import train_and_evaluate

    again = train_and_evaluate(load(reference.config), tmp_path / "again")
    ref = reference.results()
    assert ref["source_val_acc"] > 0.5 and ref["target_entropy"] < 1.0   # a model that learned
    assert metrics_of(again) == metrics_of(ref)
    assert_same_weights(tmp_path / "again", reference.workdir, FAULT_TRAIN["steps"])


# ----------------------------------------------------------------------------- in-process

@pytest.fixture
def trees(tmp_path):
    return make_tree(tmp_path / "src"), make_tree(tmp_path / "tgt", seed=2, shift=30)


def test_non_finite_loss_names_the_step_and_the_last_good_checkpoint(tmp_path, trees, capsys):
    from ddc.cli import train_main

    cfg = tiny_config(*trees, train={"lr": 1e30, "optimizer": "sgd", "checkpoint_every": 1})
    config = write_config(tmp_path / "c.json", cfg)
    code = train_main(["--config", str(config), "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    line = assert_clean_error(code, err, "non-finite loss at step ", "last good checkpoint: ")
    step = int(re.search(r"at step (\d+)", line).group(1))
    ckpt = line.rsplit("last good checkpoint: ", 1)[1].strip()
    assert 1 <= step <= cfg["train"]["steps"]
    assert ckpt.endswith(f"ckpt-{step - 1}")
    values = saved_tensors(ckpt)
    assert int(values["step/.ATTRIBUTES/VARIABLE_VALUE"]) == step - 1
    floats = {k: v for k, v in values.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}
    assert len(floats) >= 10
    for name, value in floats.items():
        assert np.all(np.isfinite(value)), name
    assert not (tmp_path / "run" / "results.json").exists()


def _keep_checkpoints_up_to(workdir: Path, step: int) -> None:
    """The run directory as a kill right after checkpoint ``step`` leaves it (later checkpoints
    and results gone, eval records of later steps still in metrics.jsonl)."""
    import tensorflow as tf

    ckdir = workdir / "checkpoints"
    state = tf.train.get_checkpoint_state(str(ckdir))
    keep = [p for p in state.all_model_checkpoint_paths if int(p.rsplit("-", 1)[1]) <= step]
    for p in state.all_model_checkpoint_paths:
        if p not in keep:
            for f in ckdir.glob(Path(p).name + ".*"):
                f.unlink()
    lines = [f'model_checkpoint_path: "{keep[-1]}"'] + [f'all_model_checkpoint_paths: "{p}"'
                                                         for p in keep]
    (ckdir / "checkpoint").write_text("\n".join(lines) + "\n")
    (workdir / "results.json").unlink()


@pytest.mark.parametrize("changes", [
    pytest.param({}, id="plain"),
    pytest.param({"model": {"dropout": 0.5}}, id="dropout"),
    pytest.param({"model": {"adapt_bn": True}}, id="adapt_bn"),
    pytest.param({"train": {"head_only_steps": 3, "optimizer": "sgd", "checkpoint_every": 3}},
                 id="two_stage_at_switch"),
])
def test_resumed_run_equals_uninterrupted(changes, tmp_path, trees):
    from ddc.config import from_dict
    from ddc.train import train_and_evaluate

    cfg = from_dict(tiny_config(*trees, **changes))
    full = train_and_evaluate(cfg, tmp_path / "run")
    _keep_checkpoints_up_to(tmp_path / "run", 3)
    resumed = train_and_evaluate(cfg, tmp_path / "run")
    assert metrics_of(resumed) == metrics_of(full)
    steps = [json.loads(s)["step"] for s in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()]
    assert steps == [3, 6]   # the records of the redone steps were replaced, not appended


def test_ctrl_c_inside_a_step_saves_a_consistent_checkpoint(tmp_path, trees, monkeypatch):
    """SIGINT that arrives while step 4's update runs: the checkpoint holds 4 updates and step
    4 (never 4 updates under step 3), so the resumed run equals the uninterrupted one."""
    from ddc.config import from_dict
    from ddc.train import RunInterrupted, build, train_and_evaluate

    cfg = from_dict(tiny_config(*trees))
    full = train_and_evaluate(cfg, tmp_path / "full")

    class SignalledStep(build.TrainStep):
        calls = 0

        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)   # the update is applied ...
            SignalledStep.calls += 1
            if SignalledStep.calls == 4:
                os.kill(os.getpid(), signal.SIGINT)   # ... and Ctrl-C comes before the loop sees it
            return out

    monkeypatch.setattr(build, "TrainStep", SignalledStep)
    try:
        with pytest.raises(RunInterrupted, match="interrupted at step 4"):
            train_and_evaluate(cfg, tmp_path / "run")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as KeyboardInterrupt")
    assert latest_step(tmp_path / "run") == 4
    monkeypatch.undo()
    resumed = train_and_evaluate(cfg, tmp_path / "run")
    assert metrics_of(resumed) == metrics_of(full)
    assert_same_weights(tmp_path / "run", tmp_path / "full", 6)   # save_counter included


def test_second_ctrl_c_stops_at_once_and_saves_nothing(tmp_path, trees, monkeypatch):
    """Two Ctrl-C inside step 5 (after its update, before the counter moves): the second stops
    at once, and the checkpoint kept is an earlier, consistent one (step 3), not the weights
    of 5 updates under step 4."""
    from ddc.config import from_dict
    from ddc.train import RunInterrupted, build, train_and_evaluate

    cfg = from_dict(tiny_config(*trees, train={"checkpoint_every": 3}))

    class TwiceSignalledStep(build.TrainStep):
        calls = 0

        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            TwiceSignalledStep.calls += 1
            if TwiceSignalledStep.calls == 5:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return out

    monkeypatch.setattr(build, "TrainStep", TwiceSignalledStep)
    try:
        with pytest.raises(RunInterrupted, match=r"stopped at once during step 5; nothing saved "
                                                 r"now; the latest checkpoint is .*ckpt-3"):
            train_and_evaluate(cfg, tmp_path / "run")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as KeyboardInterrupt")
    assert latest_step(tmp_path / "run") == 3


def test_ctrl_c_before_training_exits_130_without_traceback(tmp_path, trees, monkeypatch, capsys):
    from ddc.cli import train_main
    from ddc.train import loop

    def interrupted(*args, **kwargs):
        # Ctrl-C while the images are being decoded. raise_signal delivers it to this (the main)
        # thread; os.kill could land on a TensorFlow thread and be handled only later. The sleep
        # is where a long decode would be when the KeyboardInterrupt arrives.
        signal.raise_signal(signal.SIGINT)
        time.sleep(30)
        raise AssertionError("SIGINT did not interrupt prepare_data within 30 s")

    monkeypatch.setattr(loop, "prepare_data", interrupted)
    # a suite started with SIGINT ignored (nohup, a background job) would ignore the test's
    # Ctrl-C too: give the CLI the default handler a terminal gives it
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    config = write_config(tmp_path / "c.json", tiny_config(*trees))
    try:
        code = train_main(["--config", str(config), "--workdir", str(tmp_path / "run")])
    except KeyboardInterrupt:
        code = None
    finally:
        signal.signal(signal.SIGINT, old)
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert [s for s in err.splitlines() if s.startswith("error: ")] == [
        "error: interrupted before training started; nothing was trained"]
