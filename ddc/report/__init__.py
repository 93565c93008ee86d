"""Reports on trained runs: evaluation, predictions, pictures, TensorBoard summaries, comparison.

Nothing here trains or chooses a checkpoint by target labels: target labels are only read to
score a model that was already chosen (see ``docs/EVALUATION.md``).
"""


def __getattr__(name):  # lazy: ``import ddc.report.cli`` stays instant (Ctrl-C is answered there)
    if name in ("LoadedRun", "load_run"):
        from ddc.report import runs
        return getattr(runs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
