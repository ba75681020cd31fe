"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders").

.. math::
    \\pi_{gate} = (x - b_{dec}) W_{enc} + b_{enc}, \\qquad
    \\pi_{mag} = (x - b_{dec}) (W_{enc} \\odot e^{r_{mag}}) + b_{mag},

    z = \\mathbb{1}[\\pi_{gate} > 0] \\odot \\mathrm{ReLU}(\\pi_{mag}),

    \\mathcal{L} = \\|x - \\hat x\\|^2 + \\lambda \\sum_i \\mathrm{ReLU}(\\pi_{gate,i}) \\|W_{dec,i}\\|
      + \\|x - (\\mathrm{ReLU}(\\pi_{gate}) W_{dec}^{sg} + b_{dec}^{sg})\\|^2,

where ``sg`` stops gradients (the auxiliary term trains the gate path). ``W_enc``/``b_enc`` are the
gate weights (SAELens calls the bias ``b_gate``). With ``decoder_norm="unit"`` the norm weight is 1.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from universality.sae.base import SAE, SAEOutput
from universality.sae.config import GatedConfig
from universality.sae.registry import register

__all__ = ["GatedSAE"]


@register("gated")
class GatedSAE(SAE):
    config_class = GatedConfig
    cfg: GatedConfig

    def _build(self, W_dec_FD: Tensor, gen: torch.Generator) -> None:
        super()._build(W_dec_FD, gen)
        self.r_mag = nn.Parameter(torch.zeros(self.cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(self.cfg.d_sae))

    def _gate_and_mag(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xc_BD = x.to(self.W_dec.dtype) - self.b_dec
        pi_gate_BF = xc_BD @ self.W_enc + self.b_enc
        pi_mag_BF = xc_BD @ (self.W_enc * self.r_mag.exp()) + self.b_mag
        return pi_gate_BF, pi_mag_BF

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        pi_gate_BF, pi_mag_BF = self._gate_and_mag(x)
        return (pi_gate_BF > 0).to(pi_mag_BF.dtype) * torch.relu(pi_mag_BF)

    def forward_train(self, x: Float[Tensor, "batch d_in"]) -> SAEOutput:
        pi_gate_BF, pi_mag_BF = self._gate_and_mag(x)
        z_BF = (pi_gate_BF > 0).to(pi_mag_BF.dtype) * torch.relu(pi_mag_BF)
        x_hat_BD = self.decode(z_BF)
        gate_BF = torch.relu(pi_gate_BF)
        weight_F = self.W_dec.norm(dim=1) if self.cfg.decoder_norm == "free" else 1.0
        sparsity = (gate_BF * weight_F).sum(dim=1).mean()
        x_gate_BD = gate_BF @ self.W_dec.detach() + self.b_dec.detach()
        aux = (x.to(x_gate_BD.dtype) - x_gate_BD).pow(2).sum(dim=1).mean()
        return SAEOutput(x_hat_BD, z_BF, pi_mag_BF, sparsity, {"gate_aux": aux})

    @torch.no_grad()
    def reinit_latents_(self, idx: Tensor, directions: Tensor, enc_norm: float) -> None:
        super().reinit_latents_(idx, directions, enc_norm)
        self.r_mag[idx] = 0
        self.b_mag[idx] = 0

    @torch.no_grad()
    def _scale_outputs_(self, c: float) -> None:
        super()._scale_outputs_(c)
        self.b_mag.mul_(c)

    @torch.no_grad()
    def _scale_latents_(self, n_F: Tensor) -> None:
        self.r_mag.add_(n_F.log())
        self.b_mag.mul_(n_F)
