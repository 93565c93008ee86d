"""The run folder: a finished run survives any mistyped ``--restart``; faults of the folder
(a file in the way, a read-only directory, a full disk at a save or at results.json) end in one
``error:`` line naming the path, exit 2, the last good checkpoint intact; Ctrl-C during the
imports of any entry point is one line and exit 130 (docs/ROBUSTNESS.md, "Run folder").
"""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_data import (REPO, assert_clean_error, cli_env, error_lines, make_tree, tiny_config,
                          write_config)


@pytest.fixture(autouse=True)
def _own_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DDC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def trees(tmp_path):
    """Trees at relative roots ``src``, ``tgt`` under ``--data-root tmp_path``."""
    make_tree(tmp_path / "src")
    make_tree(tmp_path / "tgt", seed=2, shift=30)
    return "src", "tgt"


def train(tmp_path, capsys, cfg: dict, *extra: str, workdir="run", data_root=None):
    from ddc.cli import train_main

    config = write_config(tmp_path / "config.json", cfg)
    code = train_main(["--config", str(config), "--workdir", str(tmp_path / workdir),
                       "--data-root", str(data_root or tmp_path), *extra])
    return code, capsys.readouterr().err


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def finished_run(tmp_path, capsys, trees) -> dict:
    code, err = train(tmp_path, capsys, tiny_config(*trees))
    assert code == 0, err[-3000:]
    files = snapshot(tmp_path / "run")
    for name in ("config.json", "results.json", "metrics.jsonl", "train.log",
                 "checkpoints/checkpoint", "checkpoints/ckpt-6.index", "eval/learning_curves.png"):
        assert name in files, sorted(files)
    assert any(k.startswith("tensorboard/events.out.tfevents") for k in files)
    return files


def test_restart_with_a_mistyped_argument_keeps_the_finished_run(tmp_path, trees, capsys):
    """--restart with a bad data root, a missing weights file or an unknown key: one error line,
    and every file of the finished run is byte for byte as it was; nothing is moved aside."""
    files = finished_run(tmp_path, capsys, trees)
    code, err = train(tmp_path, capsys, tiny_config(*trees), "--restart",
                      data_root=tmp_path / "typo")
    assert_clean_error(code, err, "data.source.root: data folder not found", "typo")
    assert snapshot(tmp_path / "run") == files
    weights = tiny_config(*trees, model={"backbone": "mobilenet_v2", "weights": "no/such.h5"},
                          data={"image_size": 32})
    code, err = train(tmp_path, capsys, weights, "--restart", "--weights-root", str(tmp_path))
    assert_clean_error(code, err, "model.weights: weights file for backbone mobilenet_v2 not found")
    assert snapshot(tmp_path / "run") == files
    code, err = train(tmp_path, capsys, tiny_config(*trees), "--restart", "--set", "train.lrr=1")
    assert_clean_error(code, err, "train.lrr: unknown key")
    assert snapshot(tmp_path / "run") == files

    # a correct --restart: the old run goes aside, and is deleted at the first checkpoint
    code, err = train(tmp_path, capsys, tiny_config(*trees, train={"lr": 0.01}), "--restart")
    assert code == 0, err[-3000:]
    assert not list((tmp_path / "run").glob(".replaced-*"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "--restart: the earlier run's files are in" in log and "deleted " in log
    assert "source: 12 train" in log     # records from before the folder was made are kept
    assert log.count("done: target acc") == 1   # the old train.log went with the old run


def test_restart_keeps_the_old_run_until_a_checkpoint(tmp_path, trees, capsys):
    """A restart that fails before its first checkpoint (here a diverging lr) keeps the earlier
    run, whole, in RUN/.replaced-<time>/ and says where."""
    files = finished_run(tmp_path, capsys, trees)
    bad = tiny_config(*trees, train={"lr": 1e30, "optimizer": "sgd", "checkpoint_every": 6})
    code, err = train(tmp_path, capsys, bad, "--restart")
    assert_clean_error(code, err, "non-finite loss", "last good checkpoint: none")
    replaced = list((tmp_path / "run").glob(".replaced-*"))
    assert len(replaced) == 1 and f"the run replaced by --restart is kept in {replaced[0]}" in err
    assert snapshot(replaced[0]) == files
    assert not (tmp_path / "run" / "results.json").exists()


def test_workdir_naming_a_file(tmp_path, trees, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    code, err = train(tmp_path, capsys, tiny_config(*trees), workdir="notes.txt")
    assert_clean_error(code, err, f"{tmp_path / 'notes.txt'}: --workdir names a file",
                       "choose another --workdir")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    code, err = train(tmp_path, capsys, tiny_config(*trees), workdir="notes.txt/run")
    assert_clean_error(code, err, f"{tmp_path / 'notes.txt'}: the run directory")


@pytest.mark.parametrize("code_", [errno.EROFS, errno.EACCES])
def test_unwritable_workdir(code_, tmp_path, trees, capsys, monkeypatch):
    """The temporary config file cannot be written (a read-only or foreign directory; as root
    in CI, chmod would not stop the write, so the write itself fails here)."""
    from ddc.train import rundir

    real_open = open

    def failing_open(path, *args, **kwargs):
        if str(tmp_path / "run") in str(path):
            raise OSError(code_, os.strerror(code_), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", failing_open, raising=False)
    code, err = train(tmp_path, capsys, tiny_config(*trees))
    line = assert_clean_error(code, err, str(tmp_path / "run" / ".config.json.tmp"),
                              "cannot write the run directory", os.strerror(code_))
    assert ("read-only" if code_ == errno.EROFS else "make ") in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder without write "
                                              "permission; the monkeypatched test covers it")
def test_workdir_without_write_permission(tmp_path, trees, capsys):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        code, err = train(tmp_path, capsys, tiny_config(*trees), workdir="ro/run")
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert_clean_error(code, err, f"{tmp_path / 'ro'}: not writable")


@pytest.mark.parametrize("where", ["shards", "state_file"])
def test_full_disk_at_a_save_leaves_the_last_good_checkpoint(where, tmp_path, trees, capsys,
                                                             monkeypatch):
    """The save of step 6 fails on a full disk, while writing its shards (a partial data file
    and temporary folder are left) or its state file: one line naming ckpt-6 and the intact
    ckpt-3, nothing of ckpt-6 left, and the same command resumes from ckpt-3."""
    import tensorflow as tf

    full = tf.errors.ResourceExhaustedError(None, None, "ckpt-6_temp/part-00000-of-00001.data"
                                            "-00000-of-00001.tempstate; No space left on device "
                                            "[Op:SaveV2]")
    if where == "shards":
        real = tf.train.Checkpoint._write

        def write(self, prefix, options=None):
            if prefix.endswith("ckpt-6"):
                Path(prefix + "_temp").mkdir()
                Path(prefix + "_temp", "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
                Path(prefix + ".data-00000-of-00001").write_bytes(b"half")
                raise full
            return real(self, prefix, options)

        monkeypatch.setattr(tf.train.Checkpoint, "_write", write)
    else:
        real = tf.train.CheckpointManager._record_state

        def record(self):
            if self._latest_checkpoint.endswith("ckpt-6"):
                raise full
            return real(self)

        monkeypatch.setattr(tf.train.CheckpointManager, "_record_state", record)
    cfg = tiny_config(*trees)
    code, err = train(tmp_path, capsys, cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert_clean_error(code, err, f"{ckpts / 'ckpt-6'}: cannot save the checkpoint of step 6 (no "
                       f"space left on device); the last good checkpoint, intact, is "
                       f"{ckpts / 'ckpt-3'}; free disk space and run the same command")
    assert tf.train.latest_checkpoint(str(ckpts)) == str(ckpts / "ckpt-3")
    assert not list(ckpts.glob("ckpt-6*")) and not (tmp_path / "run" / "results.json").exists()
    monkeypatch.undo()
    code, err = train(tmp_path, capsys, cfg)
    assert code == 0, err[-3000:]
    assert f"resumed from {ckpts / 'ckpt-3'} at step 3" in err


def test_full_disk_at_results_json(tmp_path, trees, capsys, monkeypatch):
    from ddc.train import rundir

    real_open = open

    def failing_open(path, *args, **kwargs):
        if "results.json" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", failing_open, raising=False)
    code, err = train(tmp_path, capsys, tiny_config(*trees))
    ckpts = tmp_path / "run" / "checkpoints"
    assert_clean_error(code, err, ".results.json.tmp", "No space left on device",
                       "free disk space", f"the latest checkpoint, intact, is {ckpts / 'ckpt-6'}")
    assert not list((tmp_path / "run").glob(".results.json.tmp*"))


ENTRY_POINTS = [
    ("train_ddc.py", ["--config", "{config}", "--workdir", "{tmp}/run"]),
    ("evaluate.py", ["--run", "{tmp}/run"]),
    ("predict.py", ["--run", "{tmp}/run", "{tmp}/x.png"]),
    ("compare.py", ["{tmp}/run"]),
    ("demo.py", ["--workdir", "{tmp}/demo", "--steps", "1"]),
]


@pytest.mark.parametrize("script,args", ENTRY_POINTS, ids=[s for s, _ in ENTRY_POINTS])
@pytest.mark.parametrize("module", ["numpy", "tensorflow"])
def test_ctrl_c_while_importing_is_one_line_and_130(module, script, args, tmp_path):
    """Ctrl-C lands while the first heavy module imports (a stand-in package on PYTHONPATH
    raises SIGINT when imported, as a real Ctrl-C during ``import tensorflow`` does)."""
    if module == "tensorflow" and script in ("predict.py", "compare.py"):
        pytest.skip("imports numpy first, never tensorflow before its own work")
    fake = tmp_path / "fake" / module
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import signal, time\nsignal.raise_signal(signal.SIGINT)\n"
                                      "time.sleep(30)\n")
    config = write_config(tmp_path / "c.json", tiny_config("src", "tgt"))
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "fake"), str(REPO)])
    argv = [a.format(config=config, tmp=tmp_path) for a in args]
    # Ctrl-C's default action in the child even when the suite itself runs as a background
    # job (``&`` starts it with SIGINT ignored, and a child inherits that)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(error_lines(proc.stderr)) == 1, proc.stderr
    assert "interrupted" in error_lines(proc.stderr)[0]
    assert proc.returncode != -signal.SIGINT
