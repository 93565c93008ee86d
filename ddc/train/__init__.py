"""Training: the one step, optimizers, the outer loop, evaluation, the run directory."""

from ddc.train.loop import RunInterrupted, rescore, train_and_evaluate  # noqa: F401
from ddc.train.rundir import RunError  # noqa: F401
from ddc.train.step import TrainStep  # noqa: F401
