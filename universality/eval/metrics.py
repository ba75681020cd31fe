"""Reconstruction and sparsity metrics of an SAE, each formula written once.

Conventions (all reductions in float64):

- **Explained variance** (and its complement, the fraction of variance unexplained, FVU) pools
  the variance over all dimensions, as in Gao et al. 2024 ("normalized MSE") and sparsify's
  ``fvu``:

  .. math::
      \\mathrm{EV} = 1 - \\frac{\\sum_n \\|x_n - \\hat x_n\\|^2}{\\sum_n \\|x_n - \\bar x\\|^2}, \\qquad
      \\mathrm{FVU} = 1 - \\mathrm{EV},

  where ``x̄`` is the mean row of the evaluated data. Predicting ``x̄`` gives 0, the identity 1.
  (This is *not* the mean over dimensions of per-dimension R^2, nor the per-row average used by
  some SAELens versions.)
- **MSE**: mean over rows and dimensions of ``(x - x̂)^2``.
- **L0**: mean over rows of the number of non-zero latents; **L1**: mean over rows of ``sum |z|``.
- **Cosine**: mean over rows of ``cos(x, x̂)``.
- **L2 norm ratio**: mean over rows with ``x != 0`` of ``||x̂|| / ||x||`` (SAELens ``l2_ratio``; the quantity
  OpenMOSS report to measure feature suppression).
- **Firing density** of latent ``i``: fraction of rows where ``z_i > 0``; **dead** latents have
  density 0 (or at most ``threshold``), **dense** ones density above ``threshold`` (0.1 by default,
  the "dense latents" of Gao et al. 2024 and Anthropic's updates).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from universality.errors import DataError
from universality.progress import progress_bar

__all__ = [
    "explained_variance",
    "fvu",
    "mse",
    "l0",
    "l1",
    "cosine",
    "l2_ratio",
    "firing_density",
    "dead_fraction",
    "dense_fraction",
    "density_histogram",
    "ReconstructionStats",
    "listed_rows",
    "evaluate",
]


@dataclass
class ReconstructionStats:
    """Streaming sums from which every reconstruction metric above is computed exactly."""

    n: int = 0
    sse: float = 0.0
    sum_sq: float = 0.0
    sum_x: Tensor | None = None
    d: int = 0
    l0_sum: float = 0.0
    l1_sum: float = 0.0
    cos_sum: float = 0.0
    ratio_sum: float = 0.0
    ratio_n: int = 0
    fire_count: Tensor | None = None
    max_act: Tensor | None = None
    extra: dict = field(default_factory=dict)

    @torch.no_grad()
    def update(self, x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"], z: Float[Tensor, "batch d_sae"] | None = None) -> None:
        x64, xh64 = x.detach().double(), x_hat.detach().double()
        if not (torch.isfinite(x64).all() and torch.isfinite(xh64).all()):
            raise DataError("NaN/Inf in activations or reconstructions", "check the activation source and the SAE weights")
        self.n += x64.shape[0]
        self.d = x64.shape[1]
        self.sse += float((x64 - xh64).pow(2).sum())
        self.sum_sq += float(x64.pow(2).sum())
        s = x64.sum(dim=0).cpu()
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        nx, nh = x64.norm(dim=1), xh64.norm(dim=1)
        self.cos_sum += float(((x64 * xh64).sum(dim=1) / (nx * nh).clamp_min(1e-30)).sum())
        nonzero = nx > 0
        self.ratio_sum += float((nh[nonzero] / nx[nonzero]).sum())
        self.ratio_n += int(nonzero.sum())
        if z is not None:
            z = z.detach()
            fired = z != 0
            self.l0_sum += float(fired.sum())
            self.l1_sum += float(z.double().abs().sum())
            cnt = fired.sum(dim=0).cpu()
            self.fire_count = cnt if self.fire_count is None else self.fire_count + cnt
            mx = z.max(dim=0).values.double().cpu()
            self.max_act = mx if self.max_act is None else torch.maximum(self.max_act, mx)

    def total_variance(self) -> float:
        """``sum_n ||x_n - x̄||^2 = sum ||x||^2 - N ||x̄||^2``."""
        if self.n == 0 or self.sum_x is None:
            raise DataError("no rows were evaluated", "pass a non-empty batch or source")
        return self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n

    def explained_variance(self) -> float:
        return 1.0 - self.sse / max(self.total_variance(), 1e-30)

    def summary(self) -> dict[str, float]:
        out = {
            "explained_variance": self.explained_variance(),
            "fvu": 1.0 - self.explained_variance(),
            "mse": self.sse / (self.n * self.d),
            "cosine": self.cos_sum / self.n,
            "l2_ratio": self.ratio_sum / max(self.ratio_n, 1),
            "n_rows": float(self.n),
        }
        if self.fire_count is not None:
            density = self.fire_count.double() / self.n
            out.update(
                l0=self.l0_sum / self.n,
                l1=self.l1_sum / self.n,
                dead_fraction=dead_fraction(density),
                dense_fraction=dense_fraction(density),
            )
        return out


def _one(x: Tensor, x_hat: Tensor) -> ReconstructionStats:
    if x.shape != x_hat.shape or x.ndim != 2:
        raise DataError(f"x and x_hat must both be (batch, d), got {tuple(x.shape)} and {tuple(x_hat.shape)}", "flatten positions into rows")
    stats = ReconstructionStats()
    stats.update(x, x_hat)
    return stats


def explained_variance(x: Float[Tensor, "batch d"], x_hat: Float[Tensor, "batch d"]) -> float:
    """``1 - sum ||x - x̂||^2 / sum ||x - x̄||^2`` (pooled over dimensions; see module docstring)."""
    return _one(x, x_hat).explained_variance()


def fvu(x: Float[Tensor, "batch d"], x_hat: Float[Tensor, "batch d"]) -> float:
    """Fraction of variance unexplained, ``1 - explained_variance``."""
    return 1.0 - explained_variance(x, x_hat)


def mse(x: Float[Tensor, "batch d"], x_hat: Float[Tensor, "batch d"]) -> float:
    """Mean over rows and dimensions of ``(x - x̂)^2``."""
    return _one(x, x_hat).summary()["mse"]


def cosine(x: Float[Tensor, "batch d"], x_hat: Float[Tensor, "batch d"]) -> float:
    """Mean over rows of ``cos(x, x̂)``."""
    return _one(x, x_hat).summary()["cosine"]


def l2_ratio(x: Float[Tensor, "batch d"], x_hat: Float[Tensor, "batch d"]) -> float:
    """Mean over rows with ``x != 0`` of ``||x̂|| / ||x||``."""
    return _one(x, x_hat).summary()["l2_ratio"]


def l0(z: Float[Tensor, "batch d_sae"]) -> float:
    """Mean over rows of the number of non-zero latents."""
    return float((z != 0).sum(dim=-1).double().mean())


def l1(z: Float[Tensor, "batch d_sae"]) -> float:
    """Mean over rows of ``sum_i |z_i|``."""
    return float(z.double().abs().sum(dim=-1).mean())


def firing_density(z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, " d_sae"]:
    """Per-latent fraction of rows where the latent is non-zero."""
    return (z != 0).double().mean(dim=0)


def dead_fraction(density: Float[Tensor, " d_sae"], threshold: float = 0.0) -> float:
    """Fraction of latents whose firing density is at most ``threshold`` (0: never fired)."""
    return float((density <= threshold).double().mean())


def dense_fraction(density: Float[Tensor, " d_sae"], threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than ``threshold`` of the rows."""
    return float((density > threshold).double().mean())


def density_histogram(density: Float[Tensor, " d_sae"], bins: int = 50, lo: float = -8.0, hi: float = 0.0) -> dict:
    """Histogram of ``log10`` firing densities of the latents that fired at least once.

    Returns ``{"counts", "edges", "n_dead"}``; dead latents (density 0, ``log10 = -inf``) are
    counted separately in ``n_dead``, densities below ``10**lo`` fall in the first bin.
    """
    d = density.double().cpu()
    alive = d > 0
    logd = d[alive].log10().clamp(lo, hi)
    counts = torch.histc(logd, bins=bins, min=lo, max=hi) if logd.numel() else torch.zeros(bins, dtype=torch.float64)
    return {
        "counts": counts.long().tolist(),
        "edges": torch.linspace(lo, hi, bins + 1).tolist(),
        "n_dead": int((~alive).sum()),
    }


@torch.no_grad()
def evaluate(sae, batches: Iterable[Tensor], max_rows: int | None = None) -> dict[str, float]:
    """Every metric above for ``sae`` over ``(batch, d_in)`` tensors (raw activations). A bar shows
    from :data:`~universality.progress.MIN_WORK` rows x latents on (rows: of a list/tuple of
    batches, else ``max_rows``), and for a stream of unknown length."""
    stats = ReconstructionStats()
    rows = listed_rows(batches)
    if rows is not None and max_rows is not None:
        rows = min(rows, max_rows)
    total = rows if rows is not None else max_rows
    work = None if total is None else total * int(getattr(sae, "d_sae", 1))
    with progress_bar(desc="evaluate", total=total, unit="row", leave=False, work=work) as bar:
        for x in batches:
            z = sae.encode(x)
            stats.update(x, sae.decode(z), z)
            bar.update(x.shape[0])
            if max_rows is not None and stats.n >= max_rows:
                break
    return stats.summary()


def listed_rows(batches: Iterable[Tensor]) -> int | None:
    """Rows of ``batches`` when it is a list or tuple of tensors (known up front), else ``None`` (a stream)."""
    if isinstance(batches, (list, tuple)) and all(isinstance(x, Tensor) for x in batches):
        return sum(int(x.shape[0]) for x in batches)
    return None
