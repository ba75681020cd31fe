"""ReLU SAE with an L1 penalty (Bricken et al. 2023; Cunningham et al. 2023).

.. math::
    z = \\mathrm{ReLU}((x - b_{dec}) W_{enc} + b_{enc}), \\qquad
    \\mathcal{L}_{sparsity} = \\sum_i |z_i| \\, \\|W_{dec,i}\\|_2

With ``decoder_norm="unit"`` the rows have unit norm, so the penalty is the plain L1 norm; with
``"free"`` the row norms weight the penalty (Anthropic, "Circuits Updates - April 2024").
``tied=True`` ties the encoder to the decoder transpose, ``W_enc = W_dec^T`` (Cunningham et al.
2023, "Sparse Autoencoders Find Highly Interpretable Features in Language Models", on Pythia);
tied weights need unit decoder rows.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from universality.errors import ConfigError
from universality.sae.base import SAE, SAEOutput
from universality.sae.config import ReLUConfig
from universality.sae.registry import register

__all__ = ["ReLUSAE"]


@register("relu")
class ReLUSAE(SAE):
    config_class = ReLUConfig
    cfg: ReLUConfig

    def _build(self, W_dec_FD: Tensor, gen: torch.Generator) -> None:
        if self.cfg.tied:
            self.W_dec = nn.Parameter(W_dec_FD.clone())
            self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae))
            self.b_dec = nn.Parameter(torch.zeros(self.cfg.d_in))
        else:
            super()._build(W_dec_FD, gen)

    def __getattr__(self, name: str):
        if name == "W_enc" and self.cfg.tied:
            return self.W_dec.T
        return super().__getattr__(name)

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return torch.relu(self.pre_acts(x))

    def forward_train(self, x: Float[Tensor, "batch d_in"]) -> SAEOutput:
        pre_BF = self.pre_acts(x)
        z_BF = torch.relu(pre_BF)
        x_hat_BD = self.decode(z_BF)
        if self.cfg.decoder_norm == "free":
            sparsity = (z_BF * self.W_dec.norm(dim=1)).sum(dim=1).mean()
        else:
            sparsity = z_BF.sum(dim=1).mean()
        return SAEOutput(x_hat_BD, z_BF, pre_BF, sparsity)

    @torch.no_grad()
    def _scale_latents_(self, n_F: Tensor) -> None:
        if self.cfg.tied:
            raise ConfigError("a tied relu SAE cannot move decoder norms into the encoder", "use decoder_norm='unit'")
        super()._scale_latents_(n_F)
