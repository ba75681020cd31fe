"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders").

Training keeps the ``k * batch`` largest ReLU pre-activations of the whole batch, so the number of
active latents varies per row with mean ``k``. At inference a single threshold replaces the batch
selection:

.. math::
    z_i = \\mathrm{ReLU}(\\pi_i) \\, \\mathbb{1}[\\pi_i > \\theta],

with ``theta`` the running average (exponential, rate 0.01) over training batches of the smallest
activation kept by the batch selection, as in the paper. ``theta`` is a buffer saved with the weights.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from universality.sae.base import SAE, SAEOutput
from universality.sae.config import BatchTopKConfig
from universality.sae.registry import register

__all__ = ["BatchTopKSAE"]

_THRESHOLD_RATE = 0.01


@register("batchtopk")
class BatchTopKSAE(SAE):
    config_class = BatchTopKConfig
    cfg: BatchTopKConfig

    def _build(self, W_dec_FD: Tensor, gen: torch.Generator) -> None:
        super()._build(W_dec_FD, gen)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet

    def _batch_topk(self, pre_BF: Tensor) -> Tensor:
        flat = torch.relu(pre_BF).flatten()
        n_keep = min(self.cfg.k * pre_BF.shape[0], flat.numel())
        vals, idx = flat.topk(n_keep, sorted=False)
        return torch.zeros_like(flat).scatter_(0, idx, vals).view_as(pre_BF)

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        pre_BF = self.pre_acts(x)
        if float(self.threshold) < 0:  # never trained: fall back to the batch selection
            return self._batch_topk(pre_BF)
        return torch.relu(pre_BF) * (pre_BF > self.threshold)

    def forward_train(self, x: Float[Tensor, "batch d_in"]) -> SAEOutput:
        pre_BF = self.pre_acts(x)
        z_BF = self._batch_topk(pre_BF)
        with torch.no_grad():
            active = z_BF[z_BF > 0]
            if active.numel():
                low = active.min().to(self.threshold.dtype)
                if float(self.threshold) < 0:
                    self.threshold.copy_(low)
                else:
                    self.threshold.lerp_(low, _THRESHOLD_RATE)
        return SAEOutput(self.decode(z_BF), z_BF, pre_BF, pre_BF.new_zeros(()))

    @torch.no_grad()
    def _scale_outputs_(self, c: float) -> None:
        super()._scale_outputs_(c)
        if float(self.threshold) >= 0:
            self.threshold.mul_(c)
