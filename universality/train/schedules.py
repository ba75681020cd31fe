"""Learning-rate and sparsity-coefficient schedules (pure functions of the step)."""

from __future__ import annotations

__all__ = ["lr_factor", "warmup_factor"]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: ``min(1, (step + 1) / warmup_steps)``; 1 when ``warmup_steps == 0``."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay_start: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then constant, then a linear decay to 0 from
    ``decay_start * total_steps`` to ``total_steps`` (the schedule of Bricken et al. 2023 and
    Anthropic's April 2024 update, which decay over the last 20%).
    """
    factor = warmup_factor(step, warmup_steps)
    start = int(decay_start * total_steps)
    if step >= start and total_steps > start:
        factor *= max(0.0, (total_steps - step) / (total_steps - start))
    return factor
