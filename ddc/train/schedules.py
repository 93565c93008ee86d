"""Per-step schedules the host computes and passes into the traced step as tensors."""

from __future__ import annotations

from ddc.align import schedule_weight


def progress_at(step: int, total_steps: int) -> float:
    """Training progress p in [0, 1] of the step with index ``step`` (0 for the first)."""
    return min(step / total_steps, 1.0)


def term_weights(terms, step: int, total_steps: int) -> list[float]:
    """Each term's weight at step ``step``: its ``weight``, ramped by its ``schedule``."""
    p = progress_at(step, total_steps)
    return [schedule_weight(t.options, p) for t in terms]
