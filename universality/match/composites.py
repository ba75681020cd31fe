"""Composite features: rows of one dictionary that are sums of two rows of another.

The composite-feature hypothesis (Demian Till; StefanHex's shortform "Are the features learned by the
model the same as the features learned by SAEs?"): an SAE can lower its sparsity cost by giving two
often co-occurring *atomic* features one *composite* latent, whose decoder row is then close to a
non-negative combination of the atomic rows. The check here is the "naive test" of that text, on
decoder weights alone: for every unit row :math:`a` of ``W_a``,

.. math::
    \\cos_2(a) = \\max_{i \\ne j,\\; w \\ge 0} \\cos\\big(a,\\; w_1 b_i + w_2 b_j\\big), \\qquad
    \\cos_1(a) = \\max_i \\cos(a, b_i)

over the unit rows :math:`b` of ``W_b``. The pair search is exhaustive over the ``top_m`` rows of
``W_b`` with the largest cosine to :math:`a`; each pair is a two-variable non-negative least-squares
problem, solved in closed form (the unconstrained optimum when both weights are positive, else the
better single row). For unit :math:`a` the least-squares fit :math:`v` satisfies
:math:`a \\cdot v = |v|^2`, so its cosine is :math:`|v| = \\sqrt{c^\\top w}` with :math:`c` the two
cosines and :math:`w` the weights.

Row :math:`a` is a **composite** when :math:`\\cos_2(a) \\ge` ``threshold`` with both weights positive
while :math:`\\cos_1(a) <` ``threshold``: two rows explain it and no single row does.
:func:`random_rows` gives the floor: random unit directions (isotropic, or with a given covariance)
as ``W_a``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from universality.errors import ConfigError, DataError

__all__ = ["CompositeResult", "composite_features", "random_rows", "composite_floor", "TOP_M"]

#: Rows of ``W_b`` searched per row of ``W_a`` (the ``top_m`` with the largest cosine; all pairs among them).
TOP_M = 16
#: Two rows closer than this in cosine are one direction: their pair is not solved (the single row stands).
_PARALLEL = 1.0 - 1e-6


@dataclass(frozen=True)
class CompositeResult:
    """Per row of ``W_a``: the best non-negative combination of at most two rows of ``W_b``.

    ``parts``: ``(n_a, 2)`` row indices into ``W_b`` (``-1`` where the best fit uses one row or none);
    ``weights``: ``(n_a, 2)`` their non-negative weights (``0`` for an unused part); ``cosine``: the fit's
    cosine to the row; ``single_cosine``: the best single row's cosine; ``is_composite``: see the module
    docstring.
    """

    parts: np.ndarray
    weights: np.ndarray
    cosine: np.ndarray
    single_cosine: np.ndarray
    is_composite: np.ndarray
    threshold: float
    max_parts: int

    @property
    def n(self) -> int:
        return int(self.cosine.shape[0])

    @property
    def fraction(self) -> float:
        """Share of the rows of ``W_a`` that are composites (NaN for an empty ``W_a``)."""
        return float(self.is_composite.mean()) if self.n else float("nan")

    @property
    def explained_fraction(self) -> float:
        """Share of the rows whose best fit (one or two rows) reaches the threshold."""
        return float((self.cosine >= self.threshold).mean()) if self.n else float("nan")

    def to_frame(self) -> pd.DataFrame:
        """One row per row of ``W_a``: ``feature``, ``part_1``, ``part_2``, ``weight_1``, ``weight_2``,
        ``cosine``, ``single_cosine``, ``composite``."""
        return pd.DataFrame({"feature": np.arange(self.n), "part_1": self.parts[:, 0], "part_2": self.parts[:, 1],
                             "weight_1": self.weights[:, 0], "weight_2": self.weights[:, 1], "cosine": self.cosine,
                             "single_cosine": self.single_cosine, "composite": self.is_composite})


def _unit(W: Tensor, name: str) -> Tensor:
    if not isinstance(W, Tensor):
        W = torch.as_tensor(np.asarray(W))
    if W.ndim != 2:
        raise DataError(f"{name} must be a (rows, d) matrix, got shape {tuple(W.shape)}", "pass decoder rows, one per feature")
    W = W.detach().to("cpu", torch.float64)
    if not torch.isfinite(W).all():
        raise DataError(f"{name} holds NaN or infinite values", "check the dictionary's weights")
    norms = W.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise DataError(f"{name} has {int((norms == 0).sum())} all-zero rows", "drop them before the composite check")
    return W / norms


def composite_features(
    W_a: Float[Tensor, "n_a d"],
    W_b: Float[Tensor, "n_b d"],
    threshold: float = 0.9,
    max_parts: int = 2,
    top_m: int = TOP_M,
    chunk: int = 1024,
) -> CompositeResult:
    """For each row of ``W_a``, the best non-negative combination of at most ``max_parts`` (1 or 2) rows
    of ``W_b`` and whether the row is a composite (module docstring). Rows are normalised here.

    ``top_m``: candidate rows of ``W_b`` per row of ``W_a`` (every pair among them is solved);
    ``chunk``: rows of ``W_a`` per batch (memory only, the result does not depend on it).
    """
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be a number in (0, 1], got {threshold!r}", "use e.g. 0.9")
    if max_parts not in (1, 2):
        raise ConfigError(f"max_parts must be 1 or 2, got {max_parts!r}", "use 2 (pairs) or 1 (single rows only)")
    if not isinstance(top_m, int) or top_m < 2:
        raise ConfigError(f"top_m must be an integer >= 2, got {top_m!r}", "use e.g. 16")
    A, B = _unit(W_a, "W_a"), _unit(W_b, "W_b")
    if A.shape[1] != B.shape[1]:
        raise DataError(f"W_a rows have width {A.shape[1]}, W_b rows {B.shape[1]}",
                        "compare dictionaries of one activation space (same d)")
    if B.shape[0] == 0:
        raise DataError("W_b has no rows", "pass a dictionary with at least one feature")
    n_a, m = A.shape[0], min(top_m, B.shape[0])
    parts = np.full((n_a, 2), -1, dtype=np.int64)
    weights = np.zeros((n_a, 2))
    cosine, single = np.zeros(n_a), np.zeros(n_a)
    G = B @ B.T
    ii, jj = torch.triu_indices(m, m, offset=1)
    for lo in range(0, n_a, chunk):
        C = A[lo:lo + chunk] @ B.T                                   # (r, n_b) cosines
        top_c, top_i = C.topk(m, dim=1)                              # candidates, best first
        s = top_c[:, 0]
        single[lo:lo + chunk] = s.numpy()
        best_cos = s.clamp_min(0.0)
        best_w = torch.stack([s.clamp_min(0.0), torch.zeros_like(s)], 1)
        best_p = torch.stack([torch.where(s > 0, top_i[:, 0], -1), torch.full_like(top_i[:, 0], -1)], 1)
        if max_parts == 2 and m >= 2:
            pi, pj = top_i[:, ii], top_i[:, jj]                      # (r, pairs)
            ci, cj = top_c[:, ii], top_c[:, jj]
            g = G[pi, pj]
            det = 1.0 - g * g
            ok = det > 1.0 - _PARALLEL ** 2
            safe = torch.where(ok, det, torch.ones_like(det))
            wi, wj = (ci - g * cj) / safe, (cj - g * ci) / safe      # unconstrained least squares
            ok &= (wi > 0) & (wj > 0)
            pair_cos = torch.where(ok, (ci * wi + cj * wj).clamp_min(0.0).sqrt(), torch.full_like(ci, -1.0))
            k = pair_cos.argmax(dim=1)
            rows = torch.arange(len(k))
            pc = pair_cos[rows, k]
            better = pc > best_cos
            best_cos = torch.where(better, pc, best_cos)
            best_w = torch.where(better[:, None], torch.stack([wi[rows, k], wj[rows, k]], 1), best_w)
            best_p = torch.where(better[:, None], torch.stack([pi[rows, k], pj[rows, k]], 1), best_p)
        cosine[lo:lo + chunk] = best_cos.numpy()
        weights[lo:lo + chunk] = best_w.numpy()
        parts[lo:lo + chunk] = best_p.numpy()
    two = (parts[:, 1] >= 0) & (weights > 0).all(axis=1)
    is_comp = two & (cosine >= threshold) & (single < threshold)
    return CompositeResult(parts=parts, weights=weights, cosine=cosine, single_cosine=single, is_composite=is_comp,
                           threshold=float(threshold), max_parts=int(max_parts))


def random_rows(n: int, d: int, seed: int = 0, cov: Float[Tensor, "d d"] | None = None) -> Float[Tensor, "n d"]:
    """``n`` random unit rows in ``R^d``: isotropic Gaussian directions, or drawn with covariance ``cov``."""
    if not isinstance(n, int) or not isinstance(d, int) or n < 1 or d < 1:
        raise ConfigError(f"random_rows needs positive integer sizes, got ({n!r}, {d!r})", "use e.g. (256, 64)")
    gen = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if cov is not None:
        C = torch.as_tensor(cov, dtype=torch.float64)
        if C.shape != (d, d):
            raise DataError(f"cov has shape {tuple(C.shape)}, expected ({d}, {d})", "pass the covariance of the rows' space")
        vals, vecs = torch.linalg.eigh((C + C.T) / 2)
        X = X @ (vecs * vals.clamp_min(0.0).sqrt()).T
    return X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)


def composite_floor(W_b: Float[Tensor, "n_b d"], n: int, threshold: float = 0.9, seed: int = 0,
                    top_m: int = TOP_M) -> CompositeResult:
    """:func:`composite_features` of ``n`` random unit rows (:func:`random_rows`) against ``W_b``: the
    share of directions called composite by chance."""
    return composite_features(random_rows(n, int(W_b.shape[1]), seed), W_b, threshold=threshold, top_m=top_m)
