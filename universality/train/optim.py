"""Optimizer factory and the flattening of optimizer state into tensors + JSON (no pickle)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from universality.errors import ArtifactError
from universality.sae.base import SAE

__all__ = ["make_optimizer", "flatten_optimizer_state", "unflatten_optimizer_state", "reset_latent_state_"]


def make_optimizer(sae: SAE, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Adam:
    """Adam over every parameter of ``sae`` (Kingma & Ba 2015), the optimiser all the SAE papers use."""
    return torch.optim.Adam(sae.parameters(), lr=lr, betas=betas, eps=eps)


def flatten_optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into tensors (``"{param}/{name}"``) and JSON metadata."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}/{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`flatten_optimizer_state`; loads the result into ``opt``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"optimizer state does not fit the model ({exc})", "resume with the same configs") from None


@torch.no_grad()
def reset_latent_state_(opt: torch.optim.Optimizer, sae: SAE, latents: Tensor) -> None:
    """Zero the optimizer moments of the given latents (rows of ``W_dec``, columns of ``W_enc``,
    entries of per-latent vectors), as resampling requires (Bricken et al. 2023)."""
    for name, param in sae.named_parameters():
        state = opt.state.get(param)
        if not state or name == "b_dec":
            continue
        for value in state.values():
            if not torch.is_tensor(value) or value.shape != param.shape:
                continue
            if name == "W_enc":
                value[:, latents] = 0
            elif param.shape[0] == sae.d_sae:
                value[latents] = 0
