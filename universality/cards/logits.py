"""Direct logit effect of a decoder direction: which tokens a latent promotes and suppresses.

For a latent with decoder row :math:`d` written into the residual stream, the direct effect on the
logits (the path straight to the unembedding, as in SAE dashboards; Bricken et al. 2023) is

.. math::
    \\Delta \\ell = W_U \\, (\\gamma \\odot P d)

where :math:`W_U` ``(V, d_model)`` is the unembedding, :math:`\\gamma` the weight of the final norm
(1 when the model has none) and :math:`P` the centring a LayerNorm applies (identity for RMSNorm).
The norm's division by the residual's scale is left out: the effect is per unit of activation, up to
that positive factor, so the ranking of tokens is exact and the values are comparable within a model.
Only residual-stream sites have this path; other sites get no logit lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from universality.errors import ConfigError

__all__ = ["Unembedding", "logit_effects"]

#: latents per block when multiplying with the unembedding (bounds memory at block x vocab)
_BLOCK = 256


@dataclass(frozen=True)
class Unembedding:
    """``weight`` ``(V, d)``: the unembedding; ``norm_weight`` ``(d,)``: the final norm's scale or None;
    ``centred``: the final norm subtracts the mean (LayerNorm) rather than not (RMSNorm)."""

    weight: Float[Tensor, "V d"]
    norm_weight: Float[Tensor, " d"] | None = None
    centred: bool = False


def logit_effects(W_dec: Float[Tensor, "n d"], unembed: Unembedding, k: int, latents: list[int] | None = None
                  ) -> dict[int, tuple[list[int], list[float], list[int], list[float]]]:
    """``{latent: (promoted ids, their effects, suppressed ids, their effects)}``, ``k`` of each, by
    the direct logit effect of the module docstring."""
    W = unembed.weight.detach().float().cpu()
    if W_dec.shape[1] != W.shape[1]:
        raise ConfigError(f"decoder rows have width {W_dec.shape[1]} but the unembedding reads {W.shape[1]}",
                          "take logit effects only for residual sites of the dictionary's own model")
    lat = list(range(W_dec.shape[0])) if latents is None else [int(i) for i in latents]
    k = min(k, W.shape[0])
    out: dict[int, tuple[list[int], list[float], list[int], list[float]]] = {}
    if k == 0:
        return {i: ([], [], [], []) for i in lat}
    for lo in range(0, len(lat), _BLOCK):
        ids = lat[lo:lo + _BLOCK]
        d = W_dec[ids].detach().float().cpu()
        if unembed.centred:
            d = d - d.mean(1, keepdim=True)
        if unembed.norm_weight is not None:
            d = d * unembed.norm_weight.detach().float().cpu()
        eff = d @ W.T  # (block, V)
        top = torch.topk(eff, k, dim=1)
        bot = torch.topk(eff, k, dim=1, largest=False)
        for j, i in enumerate(ids):
            out[i] = (top.indices[j].tolist(), top.values[j].tolist(), bot.indices[j].tolist(), bot.values[j].tolist())
    return out
