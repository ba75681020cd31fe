"""Feature patching: how few directions at a site carry a task from clean to corrupted prompts?

Cunningham et al. 2023 ("Sparse autoencoders find highly interpretable features", section 4) patch
dictionary features on indirect object identification: with the corrupted prompt's activation
``x_corrupt`` at a site, the clean and corrupted codes ``c``, ``c'`` and the decoder rows ``f_i``,

.. math::
    x' = x_{corrupt} + \\sum_{i \\in F} (c_i - c'_i) f_i

for a feature set ``F``; the rest of the model runs from ``x'`` (at every position, through
``adapter.forward(replace=...)``, the mechanism of :func:`universality.eval.ablation.block_ablation`)
and the fraction of the clean-minus-corrupt logit difference it restores is
``(LD(x') - LD_corrupt) / (LD_clean - LD_corrupt)``. ``F`` grows along a ranking; the **restoration
curve** is k (the size of ``F``) against that fraction.

A :class:`Basis` is any set of directions with coefficients: an SAE (``c = encode(x)``, rows
``W_dec``), PCA of the site's activations, the standard basis (neurons) and random orthonormal
directions; the last three are linear and complete, so patching all of them restores exactly 1, while
patching all SAE features gives ``recon(clean) + (x_corrupt - recon(corrupt))`` (the corrupted
reconstruction error stays). The ranking (:func:`single_effects`) is causal: each direction is patched
alone and directions are ordered by the restoration each achieves alone, measured on a *ranking*
half of the pairs; curves are read on the other half. :func:`kl_floor` is the dictionary's own cost:
KL(clean || site replaced by the SAE reconstruction of clean) of the next-token distribution at the
final position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import ConfigError
from universality.sites import Site, as_site
from universality.zoo.ioi import logit_diff

__all__ = ["Basis", "sae_basis", "pca_basis", "neuron_basis", "random_basis", "site_activations", "patch",
           "PatchRun", "single_effects", "restoration_curve", "k_grid", "k_to_reach", "kl_floor"]


@dataclass(frozen=True)
class Basis:
    """Directions ``rows`` ``(n, d)`` and ``coeffs(x: (..., d)) -> (..., n)``, so that ``x`` moves by
    ``sum_i dc_i rows[i]`` when coefficient ``i`` changes by ``dc_i``."""

    name: str
    rows: Float[Tensor, "n d"]
    coeffs: Callable[[Tensor], Tensor]

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])


def sae_basis(sae: Any, name: str = "SAE features") -> Basis:
    """An SAE's features: ``c = sae.encode(x)``, rows ``W_dec``."""
    W = sae.W_dec.detach()

    @torch.no_grad()
    def coeffs(x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(W.dtype).to(W.device)
        return sae.encode(flat).float().cpu().reshape(*x.shape[:-1], -1)

    return Basis(name, W.float().cpu(), coeffs)


def _linear(name: str, rows: Tensor, mean: Tensor | None = None) -> Basis:
    rows = rows.float()
    mu = torch.zeros(rows.shape[1]) if mean is None else mean.float()
    return Basis(name, rows, lambda x: (x.float() - mu.to(x.device)) @ rows.to(x.device).T)


def pca_basis(acts: Float[Tensor, "T d"]) -> Basis:
    """All principal directions of ``acts`` (orthonormal rows, by decreasing variance; coefficients about the mean)."""
    x = acts.double()
    mu = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mu, full_matrices=True)
    return _linear("PCA directions", vh, mu)


def neuron_basis(d: int) -> Basis:
    """The standard basis of the site (its neurons / residual coordinates)."""
    return _linear("neurons (standard basis)", torch.eye(d))


def random_basis(d: int, seed: int = 0) -> Basis:
    """``d`` random orthonormal directions (QR of a seeded Gaussian matrix)."""
    g = torch.Generator().manual_seed(int(seed))
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return _linear("random directions", q.T)


@torch.no_grad()
def site_activations(adapter: Any, site: str | Site, input_ids: Int[Tensor, "n pos"]) -> Float[Tensor, "n pos d"]:
    """The activation at ``site`` exactly as :meth:`forward`'s ``replace`` sees it (a replacement that keeps it)."""
    got: list[Tensor] = []

    def keep(x: Tensor) -> Tensor:
        got.append(x.detach().float().cpu().clone())
        return x

    adapter.forward(input_ids, replace={as_site(site): keep})
    return got[0]


def patch(basis: Basis, x_clean: Float[Tensor, "... d"], x_corrupt: Float[Tensor, "... d"],
          F_set: Sequence[int]) -> Float[Tensor, "... d"]:
    """``x_corrupt + sum_{i in F} (c_i(x_clean) - c_i(x_corrupt)) f_i`` (Cunningham et al. 2023)."""
    idx = torch.as_tensor([int(i) for i in F_set], dtype=torch.long)
    if idx.numel() == 0:
        return x_corrupt.clone()
    dc = (basis.coeffs(x_clean) - basis.coeffs(x_corrupt))[..., idx]
    return x_corrupt + dc @ basis.rows[idx].to(dc.device)


@dataclass
class PatchRun:
    """One model, one site, one set of prompt pairs: clean and corrupted activations and logit differences.

    ``adapter``: a loaded model; ``clean``/``corrupt``: ``(n, pos)`` prompts; ``io``/``s``: ``(n,)`` answer ids.
    """

    adapter: Any
    site: str
    clean: Int[Tensor, "n pos"]
    corrupt: Int[Tensor, "n pos"]
    io: Int[Tensor, " n"]
    s: Int[Tensor, " n"]

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupt.shape:
            raise ConfigError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupt.shape)} prompts differ "
                              "in shape", "build them with universality.zoo.ioi.ioi_pairs")
        self.x_clean = site_activations(self.adapter, self.site, self.clean)
        self.x_corrupt = site_activations(self.adapter, self.site, self.corrupt)
        with torch.no_grad():
            self.ld_clean = logit_diff(self.adapter.forward(self.clean), self.io, self.s).mean().item()
            self.ld_corrupt = logit_diff(self.adapter.forward(self.corrupt), self.io, self.s).mean().item()

    @torch.no_grad()
    def run_patched(self, xs: Float[Tensor, "m n pos d"]) -> Float[Tensor, " m"]:
        """Mean logit difference of the corrupted prompts with the site set to each ``xs[j]`` (one batched pass)."""
        m, n = xs.shape[0], self.corrupt.shape[0]
        flat = xs.reshape(m * n, *xs.shape[2:])

        def put(x: Tensor) -> Tensor:
            return flat.to(x.dtype).to(x.device)

        logits = self.adapter.forward(self.corrupt.repeat(m, 1), replace={as_site(self.site): put})
        return logit_diff(logits, self.io.repeat(m), self.s.repeat(m)).reshape(m, n).mean(1)

    def fraction(self, ld: Tensor | float) -> Tensor | float:
        """Share of the clean-minus-corrupt logit difference restored."""
        return (ld - self.ld_corrupt) / (self.ld_clean - self.ld_corrupt)


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def single_effects(run: PatchRun, basis: Basis, block: int = 16) -> Float[Tensor, " n_dirs"]:
    """Restored fraction when each direction of ``basis`` is patched alone (directions whose coefficient
    does not change between clean and corrupted get 0 without a forward pass)."""
    dc = (basis.coeffs(run.x_clean) - basis.coeffs(run.x_corrupt)).abs().sum((0, 1))
    out = torch.zeros(basis.n, dtype=torch.float64)
    moving = [int(i) for i in torch.nonzero(dc > 0).flatten()]
    for part in _chunks(moving, block):
        xs = torch.stack([patch(basis, run.x_clean, run.x_corrupt, [i]) for i in part])
        out[list(part)] = run.fraction(run.run_patched(xs)).double()
    return out


def k_grid(n: int) -> list[int]:
    """0, 1, 2, 4, ... (powers of two) and ``n``."""
    ks, k = [0], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def restoration_curve(run: PatchRun, basis: Basis, order: Sequence[int], ks: Sequence[int] | None = None,
                      block: int = 8) -> tuple[list[int], np.ndarray]:
    """``(ks, fraction restored)`` when the first ``k`` directions of ``order`` are patched, for each ``k`` of ``ks``
    (default :func:`k_grid` of ``len(order)``)."""
    order = [int(i) for i in order]
    ks = list(ks) if ks is not None else k_grid(len(order))
    fr = []
    for part in _chunks(ks, block):
        xs = torch.stack([patch(basis, run.x_clean, run.x_corrupt, order[:k]) for k in part])
        fr += [float(v) for v in run.fraction(run.run_patched(xs))]
    return ks, np.asarray(fr)


def k_to_reach(ks: Sequence[int], fractions: Sequence[float], target: float) -> int | None:
    """The smallest ``k`` whose restored fraction is at least ``target`` (``None`` when none is)."""
    for k, f in zip(ks, fractions):
        if np.isfinite(f) and f >= target:
            return int(k)
    return None


@torch.no_grad()
def kl_floor(adapter: Any, sae: Any, site: str | Site, input_ids: Int[Tensor, "n pos"]) -> float:
    """Mean KL(clean || site replaced by ``sae``'s reconstruction) of the next-token distribution at the final position."""
    clean = F.log_softmax(adapter.forward(input_ids)[:, -1].double(), -1)

    def recon(x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype).to(sae.W_dec.device)
        return sae.decode(sae.encode(flat)).reshape(x.shape).to(x.dtype).to(x.device)

    rec = F.log_softmax(adapter.forward(input_ids, replace={as_site(site): recon})[:, -1].double(), -1)
    return float((clean.exp() * (clean - rec)).sum(-1).mean())
