"""Command-line entry points. Scripts only parse arguments and call the library."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys
import tempfile

# TensorFlow's C++ logging: quiet unless the user asked for it. On a machine without a GPU it
# prints "failed call to cuInit: ... UNKNOWN ERROR (303)" at ERROR level, which reads as a fault.
USER_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported
# start-up lines TensorFlow writes before its logging is set up (no level applies to them)
_STARTUP_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)"
                            r"|I0000 .*(cudart_stub|cpu_feature_guard)\.cc"
                            r"|I0000 .*\] oneDNN custom operations are on"
                            r"|To enable the following instructions: )")


@contextlib.contextmanager
def _quiet_startup():
    """Captures file descriptor 2 while TensorFlow imports and gives back every line but its
    CPU-only start-up notices ("Could not find cuda drivers", CPU instruction sets). With
    ``TF_CPP_MIN_LOG_LEVEL`` set by the user nothing is hidden."""
    if USER_TF_LOG_LEVEL:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _STARTUP_NOISE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its start-up notices hidden (see ``_quiet_startup``)."""
    with _quiet_startup():
        import tensorflow  # noqa: F401


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def answers_ctrl_c(message: str = "interrupted; nothing was changed", *,
                   tensorflow: bool = True):
    """Decorates an entry point so that Ctrl-C anywhere in it, imports included (TensorFlow
    takes seconds to import), ends in one ``error:`` line and exit status 130, not a traceback;
    with ``tensorflow``, TensorFlow is imported first, quietly (``import_tensorflow_quietly``).

    Only the entry point's own imports are covered, so this module imports nothing heavy.
    """
    def wrap(main):
        @functools.wraps(main)
        def entry(argv: list[str] | None = None) -> int:
            try:
                if tensorflow:
                    import_tensorflow_quietly()
                return main(argv)
            except KeyboardInterrupt:
                return _fail(message, 130)
        return entry
    return wrap


def _interrupted(workdir: str) -> str:
    """The line for a Ctrl-C outside the training loop (data, model, the final report)."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if latest is None:
        return "interrupted before training started; nothing was trained"
    return (f"interrupted outside a training step; the latest checkpoint is {latest}; run the "
            "same command to resume from it")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddc-train", description="Train DDC, finetune or source-only from a JSON config.")
    p.add_argument("--config", required=True, help="JSON config file (see configs/)")
    p.add_argument("--workdir", help="run directory (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, e.g. --set train.lr=0.01 (JSON value)")
    p.add_argument("--data-root", help="folder that dataset roots in the config are relative to "
                                       "(default: $DDC_DATA_ROOT, else ./data)")
    p.add_argument("--weights-root", help="folder that weights files in the config are relative to "
                                          "(default: $DDC_WEIGHTS_ROOT, else .)")
    p.add_argument("--restart", action="store_true",
                   help="start over in an existing run directory instead of resuming it")
    return p


@answers_ctrl_c("interrupted before training started; nothing was trained")
def train_main(argv: list[str] | None = None) -> int:
    """``ddc-train``: exit 0 on success, 2 on bad config/data, 130 when interrupted."""
    args = train_parser().parse_args(argv)
    from ddc.config import ConfigError, load
    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as e:
        return _fail(str(e))
    from ddc.data.images import DataError
    from ddc.train import RunError, RunInterrupted, train_and_evaluate
    workdir = args.workdir or os.path.join("runs", cfg.name)
    try:
        results = train_and_evaluate(cfg, workdir, data_root=args.data_root,
                                     weights_root=args.weights_root, restart=args.restart)
        from ddc.report.tb import write_report_images  # the pictures: here, not in training
        write_report_images(workdir, results)
    except (ConfigError, DataError, RunError) as e:
        return _fail(str(e))
    except RunInterrupted as e:
        return _fail(str(e), 130)
    except KeyboardInterrupt:  # outside the training loop (decoding, model building, report)
        return _fail(_interrupted(workdir), 130)
    print(f"target accuracy: {results['target_acc']:.4f} "
          f"(mean per class {results['target_mean_class_acc']:.4f}); "
          f"source validation accuracy: {results['source_val_acc'] if results['source_val_acc'] is None else round(results['source_val_acc'], 4)}; "
          f"run directory: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
