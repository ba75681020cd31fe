"""AdamW for a zoo model, and its state saved as safetensors keyed by parameter name (no pickle)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from universality.errors import ArtifactError
from universality.io import load_tensors, save_tensors

__all__ = ["make_optimizer", "save_optimizer", "load_optimizer"]

_KEYS = ("step", "exp_avg", "exp_avg_sq")


def make_optimizer(model: torch.nn.Module, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.95, eps 1e-8) with weight decay on matrices only (not biases, norms or 1-D params).

    The learning rate is set before every update by the trainer from the schedule, so the
    optimizer holds no schedule state. ``foreach=False`` keeps the update order fixed.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95), eps=1e-8, foreach=False)


def save_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write the per-parameter AdamW moments and step counts to ``path`` (safetensors)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        state = optimizer.state.get(param)
        if not state:
            continue
        for key in _KEYS:
            value = state[key]
            tensors[f"{name}::{key}"] = value if torch.is_tensor(value) else torch.tensor(float(value))
    return save_tensors(path, tensors, metadata={"format": "universality.zoo.adamw", "version": "1"})


def load_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Restore what :func:`save_optimizer` wrote into a fresh optimizer over the same model."""
    tensors = load_tensors(path)
    names = dict(model.named_parameters())
    for key in tensors:
        name, _, part = key.rpartition("::")
        if name not in names or part not in _KEYS:
            raise ArtifactError(f"optimizer state {path} has entry {key!r} this model lacks", "resume with the same config, or start a fresh out_dir")
    for name, param in names.items():
        if f"{name}::step" not in tensors:
            continue
        optimizer.state[param] = {key: tensors[f"{name}::{key}"].to(param.device) for key in _KEYS}
