"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders").

.. math::
    z_i = \\pi_i \\, H(\\pi_i - \\theta_i), \\qquad
    \\mathcal{L}_{sparsity} = \\sum_i H(\\pi_i - \\theta_i)\\ (\\text{the L0 norm}),

with ``pi = (x - b_dec) W_enc + b_enc`` and a learned per-latent threshold ``theta = exp(log_threshold)``.
The Heaviside step has no useful gradient in ``theta``; the paper's straight-through estimator
uses a rectangle kernel ``K(u) = 1[|u| < 1/2]`` of bandwidth ``eps``:

.. math::
    \\frac{\\partial}{\\partial\\theta} H(\\pi - \\theta) := -\\frac{1}{\\epsilon} K\\Big(\\frac{\\pi-\\theta}{\\epsilon}\\Big),
    \\qquad
    \\frac{\\partial}{\\partial\\theta} \\pi H(\\pi - \\theta) := -\\frac{\\theta}{\\epsilon} K\\Big(\\frac{\\pi-\\theta}{\\epsilon}\\Big).

No pseudo-gradient flows to ``pi`` through the step (as in the paper). With
``decoder_norm="free"`` the L0 term needs no weighting (it is scale-free); row norms are folded
into the encoder (and the thresholds) on save.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from universality.sae.base import SAE, SAEOutput
from universality.sae.config import JumpReLUConfig
from universality.sae.registry import register

__all__ = ["JumpReLUSAE", "jumprelu", "step"]


def _rectangle(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold).to(pre.dtype)
        grad_theta = (-(threshold / eps) * _rectangle((pre - threshold) / eps) * grad_out).sum(dim=0)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad_out).sum(dim=0)
        return torch.zeros_like(pre), grad_theta, None


def jumprelu(pre: Float[Tensor, "batch d_sae"], threshold: Float[Tensor, " d_sae"], bandwidth: float) -> Tensor:
    """``pre * H(pre - threshold)`` with the rectangle-kernel straight-through gradient in ``threshold``."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: Float[Tensor, "batch d_sae"], threshold: Float[Tensor, " d_sae"], bandwidth: float) -> Tensor:
    """``H(pre - threshold)`` with the rectangle-kernel straight-through gradient in ``threshold``."""
    return _Step.apply(pre, threshold, bandwidth)


@register("jumprelu")
class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig
    cfg: JumpReLUConfig

    def _build(self, W_dec_FD: Tensor, gen: torch.Generator) -> None:
        super()._build(W_dec_FD, gen)
        self.log_threshold = nn.Parameter(torch.full((self.cfg.d_sae,), math.log(self.cfg.init_threshold)))

    @property
    def threshold(self) -> Float[Tensor, " d_sae"]:
        return self.log_threshold.exp()

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        pre_BF = self.pre_acts(x)
        return pre_BF * (pre_BF > self.threshold)

    def forward_train(self, x: Float[Tensor, "batch d_in"]) -> SAEOutput:
        pre_BF = self.pre_acts(x)
        theta_F = self.threshold
        z_BF = jumprelu(pre_BF, theta_F, self.cfg.bandwidth)
        l0 = step(pre_BF, theta_F, self.cfg.bandwidth).sum(dim=1).mean()
        return SAEOutput(self.decode(z_BF), z_BF, pre_BF, l0)

    @torch.no_grad()
    def _scale_outputs_(self, c: float) -> None:
        super()._scale_outputs_(c)
        self.log_threshold.add_(math.log(c))

    @torch.no_grad()
    def _scale_latents_(self, n_F: Tensor) -> None:
        super()._scale_latents_(n_F)
        self.log_threshold.add_(n_F.log())
