"""Training many SAEs from one activation stream: configs, schedules, dead latents, checkpoints."""

from __future__ import annotations

from universality.train.config import REMEDIES, RunConfig, TrainConfig
from universality.train.trainer import Trainer, train_saes

__all__ = ["REMEDIES", "RunConfig", "TrainConfig", "Trainer", "train_saes"]
