"""One optimiser step for a *stack* of same-shape dictionaries (``RunConfig.stack=True``).

:func:`group_keys` groups the configs that differ only in seed, site or name (same architecture,
shape, ``k`` and optimisation hyper-parameters) and whose architecture and dead-latent remedy a
stack supports (TopK / BatchTopK with AuxK or none). Each group becomes a :class:`StackedGroup`: one
:class:`~universality.sae.stacked.StackedSAE`, one Adam (``fused=True`` on CUDA, ``foreach=True``
on the CPU) and the group members' own :class:`~universality.train.dead.FiringTracker` objects.

:meth:`StackedGroup.step` does, for all members at once, exactly what
``Trainer.train_step`` does for one (same loss terms, decoder-gradient projection, per-dictionary
gradient clipping, learning-rate schedule, Adam update, unit-norm projection, firing statistics):
since the members' parameters are disjoint slices of the stacked tensors and Adam is elementwise,
the sum of the members' losses gives each slice its own member's gradient and update. A stacked run
therefore equals the unstacked run with the same seeds up to floating-point rounding (tested).

With ``RunConfig.compile`` the memory-bound elementwise chains of the step (MSE, decoder-gradient
projection with per-dictionary clipping, row normalisation) go through ``torch.compile``, which
fuses each chain into a few kernels; the matmuls (cuBLAS) and the top-k selection stay eager.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from universality.errors import TrainingDiverged
from universality.io import stable_hash
from universality.sae.base import SAE
from universality.sae.stacked import STACKABLE, StackedSAE, normalize_rows_, remove_parallel_, stacked_sparse_decode
from universality.train.config import RunConfig, TrainConfig
from universality.train.dead import FiringTracker
from universality.train.optim import flatten_optimizer_state, unflatten_optimizer_state
from universality.train.schedules import lr_factor

__all__ = [
    "StackedGroup",
    "clip_grad_norm_per_dictionary_",
    "group_keys",
    "make_stacked_optimizer",
    "stack_signature",
    "stacked_auxk_loss",
]

_STACK_REMEDIES = ("auxk", "none")


def stack_signature(cfg: TrainConfig) -> str | None:
    """The group a config joins (a hash of everything but seed, site and name), or ``None`` when
    its architecture or dead-latent remedy cannot be stacked."""
    if cfg.sae.architecture not in STACKABLE or cfg.effective_remedy not in _STACK_REMEDIES:
        return None
    d = cfg.to_dict()
    for name in ("seed", "site", "name"):
        d.pop(name)
    return stable_hash(d)


def group_keys(configs: Mapping[str, TrainConfig]) -> tuple[list[list[str]], list[str]]:
    """``(groups, solo)``: keys grouped by :func:`stack_signature` (first-seen order), and the keys
    of configs that stay unstacked."""
    groups: dict[str, list[str]] = {}
    solo: list[str] = []
    for key, cfg in configs.items():
        sig = stack_signature(cfg)
        if sig is None:
            solo.append(key)
        else:
            groups.setdefault(sig, []).append(key)
    return list(groups.values()), solo


def make_stacked_optimizer(stack: StackedSAE, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015) over the stacked parameters: the fused CUDA kernel on a GPU (one
    launch for all parameters), the multi-tensor ``foreach`` implementation on the CPU. Adam is
    elementwise, so each stacked slice gets the update its own Adam would give it."""
    params = list(stack.parameters())
    if params[0].device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, foreach=True)


def clip_grad_norm_per_dictionary_(grads: Sequence[Tensor], max_norm: float) -> Float[Tensor, " n"]:
    """``torch.nn.utils.clip_grad_norm_`` applied to each stacked dictionary separately (in place).

    .. math::
        \\|g_i\\| = \\Big(\\sum_p \\|g_{p,i}\\|_2^2\\Big)^{1/2}, \\quad
        g_{p,i} \\leftarrow g_{p,i} \\min\\Big(1, \\frac{c}{\\|g_i\\| + 10^{-6}}\\Big)

    over the gradients ``g_p`` of the parameters (leading dimension ``n``), with the same ``1e-6``
    as PyTorch's ``clip_grad_norm_`` (whose definition this follows). Returns the norms before clipping.
    """
    with torch.no_grad():
        sq_N = sum(g.float().pow(2).flatten(1).sum(dim=1) for g in grads)
        norm_N = sq_N.sqrt()
        coef_N = (max_norm / (norm_N + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef_N.view(-1, *([1] * (g.ndim - 1))).to(g.dtype))
    return norm_N


def stacked_auxk_loss(
    W_dec: Float[Tensor, "n d_sae d_in"],
    x: Float[Tensor, "n batch d_in"],
    x_hat: Float[Tensor, "n batch d_in"],
    pre: Float[Tensor, "n batch d_sae"],
    dead: Bool[Tensor, "n d_sae"],
    k_aux: int,
    values_at: Callable[[Tensor], Tensor] | None = None,
) -> Float[Tensor, " n"]:
    """:func:`universality.train.dead.auxk_loss` (Gao et al. 2024, Section A.2) for each stacked
    dictionary at once; the same formula, with the top ``min(k_aux, n_dead,i)`` dead latents of
    dictionary ``i``:

    .. math::
        \\mathcal{L}_{aux,i} = \\frac{\\sum \\|e_i - \\hat e_i\\|^2}{\\sum \\|e_i - \\bar e_i\\|^2},
        \\quad e_i = \\mathrm{sg}(x_i - \\hat x_i), \\quad
        \\hat e_i = \\sum_{j \\in \\mathrm{TopK}(\\pi_{i,dead})} \\pi_{i,j} W_{dec,i,j}

    and 0 for a dictionary without dead latents. The latents are chosen without gradient;
    ``values_at(idx)`` gives their differentiable pre-activations (default: gathered from ``pre``;
    the trainer passes :meth:`~universality.sae.stacked.StackedSAE.preactivations_at`, whose TopK
    backward stays k-sparse).
    """
    n_dead_N = dead.sum(dim=1)
    k = min(int(k_aux), int(n_dead_N.max()))
    if k == 0:
        return pre.new_zeros(pre.shape[0], dtype=torch.float32)
    with torch.no_grad():
        idx_NBK = pre.detach().masked_fill(~dead.unsqueeze(1), float("-inf")).topk(k, dim=-1, sorted=False).indices
        # a dictionary with fewer than k dead latents also picked live ones: they add nothing
        picked_dead_NBK = torch.gather(dead.unsqueeze(1).expand(-1, idx_NBK.shape[1], -1), 2, idx_NBK)
    vals_NBK = values_at(idx_NBK) if values_at is not None else pre.gather(2, idx_NBK)
    vals_NBK = vals_NBK * picked_dead_NBK.to(vals_NBK.dtype)
    e_hat = stacked_sparse_decode(idx_NBK, vals_NBK, W_dec).float()
    e = (x - x_hat).detach().float()
    total_N = (e - e.mean(dim=1, keepdim=True)).pow(2).sum(dim=(1, 2)).clamp_min(1e-12)
    loss_N = (e - e_hat).pow(2).sum(dim=(1, 2)) / total_N
    return loss_N * (n_dead_N > 0)


def _mse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-dictionary ``mean_b ||x_hat - x||^2`` (the trainer's reconstruction loss)."""
    return (x_hat.float() - x).pow(2).sum(dim=-1).mean(dim=-1)


def _project_and_clip_(W_dec: Tensor, grads: list[Tensor], max_norm: float) -> None:
    """Decoder-gradient projection (Bricken et al. 2023; ``grads[0]`` is ``W_dec``'s), then
    per-dictionary clipping when ``max_norm > 0``."""
    remove_parallel_(grads[0], W_dec)
    if max_norm > 0:
        clip_grad_norm_per_dictionary_(grads, max_norm)


class StackedGroup:
    """The members ``keys`` of one group, trained as one :class:`StackedSAE`."""

    def __init__(
        self,
        keys: Sequence[str],
        configs: Mapping[str, TrainConfig],
        saes: Mapping[str, SAE],
        trackers: Mapping[str, FiringTracker],
        run: RunConfig,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager],
    ) -> None:
        self.keys = list(keys)
        self.cfg = configs[self.keys[0]]
        self.sites = [configs[k].site for k in self.keys]
        self.run = run
        self.autocast = autocast
        self.module = StackedSAE.from_saes([saes[k] for k in self.keys], device=device)
        self.optim = make_stacked_optimizer(self.module, self.cfg.lr)
        self.trackers = [trackers[k] for k in self.keys]
        self.remedy = self.cfg.effective_remedy
        self._mse, self._clip, self._normalize = _mse, _project_and_clip_, normalize_rows_
        if getattr(run, "compile", False):
            self._mse = torch.compile(_mse, dynamic=False)
            self._clip = torch.compile(_project_and_clip_, dynamic=False)
            self._normalize = torch.compile(normalize_rows_, dynamic=False)

    # ------------------------------------------------------------------ sync with the member SAEs
    def push_(self, saes: Mapping[str, SAE]) -> None:
        """Write the stacked weights into the members' SAE objects."""
        self.module.copy_to_([saes[k] for k in self.keys])

    def pull_(self, saes: Mapping[str, SAE]) -> None:
        """Load the members' SAE objects into the stack (after a checkpoint was read into them)."""
        self.module.load_from_([saes[k] for k in self.keys])

    # ------------------------------------------------------------------ one step
    def step(self, xs: Sequence[Tensor], step: int) -> dict[str, dict[str, float]]:
        """One optimiser step of every member on its (already normalised) rows ``xs[i]``."""
        x_NBD = torch.stack(list(xs))
        module, cfg = self.module, self.cfg
        with self.autocast():
            out = module.forward_train(x_NBD)
            mse_N = self._mse(out.x_hat, x_NBD)
            terms = {"mse": mse_N}
            loss_N = mse_N
            if self.remedy == "auxk":
                dead_NF = torch.stack([t.dead_mask() for t in self.trackers])
                k_aux = cfg.aux_k or max(1, cfg.sae.d_in // 2)
                terms["auxk"] = stacked_auxk_loss(module.W_dec, x_NBD, out.x_hat, out.pre, dead_NF, k_aux,
                                                  values_at=lambda idx: module.preactivations_at(x_NBD, out.pre, idx))
                loss_N = loss_N + cfg.aux_coeff * terms["auxk"]
        names = list(terms)
        values = torch.stack([terms[n].detach().float() for n in names] + [loss_N.detach().float()]).tolist()
        loss_list = values[-1]
        for i, value in enumerate(loss_list):
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"loss of {self.keys[i]} became {value} at step {step}",
                    "lower the learning rate or check the activations; the last good checkpoint is kept",
                )
        self.optim.zero_grad(set_to_none=True)
        loss_N.sum().backward()
        params = [module.W_dec, module.W_enc, module.b_enc, module.b_dec]
        with torch.no_grad():
            self._clip(module.W_dec, [p.grad for p in params], float(self.run.grad_clip))
        lr = cfg.lr * lr_factor(step, self.run.steps, cfg.warmup_steps, cfg.decay_start)
        for group in self.optim.param_groups:
            group["lr"] = lr
        self.optim.step()
        with torch.no_grad():
            self._normalize(module.W_dec)
        if out.active is not None:
            idx_NBK, vals_NBK = out.active
            for i, tracker in enumerate(self.trackers):
                tracker.update_sparse(idx_NBK[i], vals_NBK[i])
        else:
            acts = out.acts.detach()
            for i, tracker in enumerate(self.trackers):
                tracker.update(acts[i])
        result: dict[str, dict[str, float]] = {}
        for i, key in enumerate(self.keys):
            result[key] = {n: values[j][i] for j, n in enumerate(names)}
            result[key]["loss"] = loss_list[i]
        return result

    # ------------------------------------------------------------------ checkpoint state
    def optimizer_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return flatten_optimizer_state(self.optim)

    def load_optimizer_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        unflatten_optimizer_state(self.optim, tensors, meta)
