"""Initialisation helpers: the geometric median for ``b_dec`` (Bricken et al. 2023)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from universality.errors import DataError

__all__ = ["geometric_median"]


@torch.no_grad()
def geometric_median(
    points: Float[Tensor, "n d"], max_iter: int = 100, tol: float = 1e-6, eps: float = 1e-8
) -> Float[Tensor, " d"]:
    """The point minimising the sum of Euclidean distances to ``points`` (Weiszfeld's algorithm).

    .. math::
        m_{t+1} = \\frac{\\sum_j x_j / \\max(\\|x_j - m_t\\|, \\epsilon)}{\\sum_j 1 / \\max(\\|x_j - m_t\\|, \\epsilon)}

    started at the mean and stopped when the step is below ``tol`` times the scale of the data.
    Computed in float64. Reference: Weiszfeld (1937); used to initialise ``b_dec`` by Bricken et
    al. 2023 ("Towards Monosemanticity").
    """
    if points.ndim != 2 or points.shape[0] == 0:
        raise DataError(f"geometric_median needs a non-empty (n, d) sample, got shape {tuple(points.shape)}", "pass activation rows")
    x_ND = points.detach().to(torch.float64)
    if not torch.isfinite(x_ND).all():
        raise DataError("geometric_median got NaN/Inf activations", "check the activation source")
    m_D = x_ND.mean(dim=0)
    scale = x_ND.std(dim=0).norm().clamp_min(eps)
    for _ in range(max_iter):
        w_N = 1.0 / (x_ND - m_D).norm(dim=1).clamp_min(eps)
        new_D = (w_N[:, None] * x_ND).sum(dim=0) / w_N.sum()
        done = (new_D - m_D).norm() <= tol * scale
        m_D = new_D
        if done:
            break
    return m_D.to(points.dtype)
