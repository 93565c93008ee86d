"""Reports on trained runs: evaluation, predictions, pictures, TensorBoard summaries, comparison.

Nothing here trains or chooses a checkpoint by target labels: target labels are only read to
score a model that was already chosen (see ``docs/EVALUATION.md``).
"""

from ddc.report.runs import LoadedRun, load_run  # noqa: F401
