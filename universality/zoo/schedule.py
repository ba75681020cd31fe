"""Learning-rate schedule and Pythia-like checkpoint steps (pure functions of integers)."""

from __future__ import annotations

import math

from universality.errors import ConfigError

__all__ = ["lr_at", "checkpoint_schedule"]


def lr_at(update: int, *, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of the ``update``-th optimizer update (0-based), linear warm-up then cosine decay.

    .. math::

        \\eta(t) = \\begin{cases}
            \\eta_{\\max}\\,\\frac{t+1}{W} & t < W \\\\
            \\eta_{\\min} + \\tfrac12(\\eta_{\\max}-\\eta_{\\min})\\bigl(1+\\cos(\\pi\\,\\frac{t-W}{\\max(1,\\,T-1-W)})\\bigr) & t \\ge W
        \\end{cases}

    with :math:`\\eta_{\\min} = r\\,\\eta_{\\max}`, so the last update (:math:`t = T-1`) uses
    :math:`\\eta_{\\min}` (SGDR cosine annealing, Loshchilov & Hutter 2017, with the linear warm-up of
    Goyal et al. 2017; the shape GPT-NeoX/Pythia train with).
    """
    if not 0 <= update < steps:
        raise ConfigError(f"update {update} is outside 0..{steps - 1}", "ask for an update inside the run")
    if update < warmup_steps:
        return lr * (update + 1) / warmup_steps
    lr_min = min_lr_ratio * lr
    progress = (update - warmup_steps) / max(1, steps - 1 - warmup_steps)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


def checkpoint_schedule(steps: int, every: int) -> tuple[int, ...]:
    """Pythia's checkpoint pattern scaled to ``steps``: ``0``, powers of two below ``every``, multiples of ``every``, and ``steps``.

    Pythia (Biderman et al. 2023) saves ``step0``, ``step1, 2, 4, ..., 512`` and then every 1000
    steps up to 143000; ``checkpoint_schedule(143000, 1000)`` gives exactly those 154 steps.
    """
    if steps < 1 or every < 1:
        raise ConfigError(f"checkpoint_schedule needs steps >= 1 and every >= 1, got {steps}, {every}", "pass positive integers")
    found = {0, steps}
    power = 1
    while power < every and power <= steps:
        found.add(power)
        power *= 2
    found.update(range(every, steps + 1, every))
    return tuple(sorted(found))
