"""Baselines every similarity is read against: a floor, a skyline, a null distribution.

- *Floor*: the metric between ``a`` and a random dictionary of ``b``'s size - random unit directions
  (:func:`random_unit_dictionary`), or random directions with the covariance of the activations
  (:func:`covariance_matched_dictionary`), which is the harder floor: activations are anisotropic and
  any two dictionaries fitted to them lean towards the same top principal directions.
- *Skyline*: the metric between two dictionaries trained on the same activations with different seeds
  (computed by the caller, passed to :func:`normalise`).
- *Null distribution*: :func:`permutation_test` recomputes a statistic after destroying the pairing -
  shuffling which tokens ``b``'s codes belong to (activation views) or rotating ``b``'s space by a random
  orthogonal matrix (weight views) - and gives the permutation p-value
  :math:`p = (1 + \\#\\{r : s_r \\ge s\\}) / (1 + R)` (Phipson & Smyth 2010).
- *Small p-values*: ``R`` permutations cannot certify a p-value below :math:`1/(R+1)`. When the observed
  statistic exceeds every null statistic, :func:`permutation_p_value` reports the tail probability of a
  normal distribution fitted to the ``R`` null statistics instead (labelled ``"normal tail from R perms"``),
  a stated parametric model of the null's tail; otherwise the exact permutation p-value (``"perm(R)"``).
  The statistics here are means over hundreds of features, close to normal under the null by the central
  limit theorem. :class:`CodeShuffles` makes a token shuffle cheap (one sparse x sparse product for the
  whole correlation matrix: the codes' moments do not change under a shuffle), so ``R`` can be 50-100.
"""

from __future__ import annotations

import hashlib

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float
from scipy import stats
from torch import Tensor

from universality.errors import ConfigError
from universality.match.intervals import full_sample_moments, scipy_codes
from universality.match.similarity import CONSTANT_RTOL, check_codes
from universality.match.views import FeatureCodes, codes_from_dense

__all__ = [
    "MIN_GAP",
    "null_generator",
    "random_unit_dictionary",
    "covariance_matched_dictionary",
    "random_rotation",
    "shuffle_tokens",
    "token_permutation",
    "CodeShuffles",
    "permutation_p_value",
    "permutation_test",
    "normalise",
]

MIN_GAP = 0.05  # a skyline - floor gap below this is too small to divide by


def null_generator(kind: str, seed: int) -> torch.Generator:
    """The generator of null sample ``seed`` of ``kind``, seeded by a hash of both.

    Plain ``manual_seed(seed)`` would make the random-dictionary floor of seed ``s`` the very
    initialisation of an SAE trained with seed ``s`` (both draw ``randn`` from the same stream), so
    an untrained or barely trained dictionary would score 1.0 against its own floor.
    """
    digest = hashlib.sha256(f"universality.match.baselines/{kind}/{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def random_unit_dictionary(n: int, d: int, seed: int = 0) -> Float[Tensor, "n d"]:
    """``n`` directions drawn uniformly on the unit sphere in ``R^d``."""
    g = null_generator("random_unit_dictionary", seed)
    W = torch.randn(n, d, generator=g)
    return W / W.norm(dim=1, keepdim=True)


def covariance_matched_dictionary(n: int, x: Float[Tensor, "T d"], seed: int = 0) -> Float[Tensor, "n d"]:
    """``n`` unit directions :math:`w = L g / \\|L g\\|`, :math:`g \\sim N(0, I)`, :math:`LL^\\top = \\Sigma_x`:
    random directions distributed like the (centred) activations themselves."""
    x = x.double()
    cov = torch.cov(x.T) + 1e-6 * torch.eye(x.shape[1], dtype=torch.float64)
    L = torch.linalg.cholesky(cov)
    g = null_generator("covariance_matched_dictionary", seed)
    W = (torch.randn(n, x.shape[1], generator=g, dtype=torch.float64) @ L.T).float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def random_rotation(d: int, seed: int = 0) -> Float[Tensor, "d d"]:
    """A Haar-random orthogonal matrix (QR of a Gaussian with the sign fix of Mezzadri 2007)."""
    g = null_generator("random_rotation", seed)
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (Q * torch.sign(torch.diagonal(R))[None, :]).float()


def token_permutation(T: int, seed: int = 0, block: int = 1) -> Tensor:
    """The token order of null sample ``seed``: shuffled token ``t`` is original token ``perm[t]``
    (contiguous blocks of ``block`` tokens keep their inner order)."""
    g = null_generator("shuffle_tokens", seed)
    nb = (T + block - 1) // block
    order = torch.randperm(nb, generator=g)
    perm = (order[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
    return perm[perm < T]


def shuffle_tokens(codes: FeatureCodes, seed: int = 0, block: int = 1) -> FeatureCodes:
    """The same codes with tokens permuted (in contiguous blocks of ``block`` tokens, to keep local
    structure), so that their pairing with another dictionary's tokens is destroyed; the fingerprint is
    kept so the shuffled codes remain comparable."""
    perm = token_permutation(codes.n_tokens, seed, block)
    dense = codes.rows(0, codes.n)[:, perm]
    return codes_from_dense(dense.T, fingerprint=codes.fingerprint)


class CodeShuffles:
    """Pearson correlations of ``a``'s codes with token-shuffled ``b`` codes, one sparse product each.

    A shuffle leaves every feature's mean and variance unchanged, so only the cross moment moves:
    :math:`\\rho_{ij} = (\\tfrac1T \\sum_t a_{it} b_{j\\pi(t)} - \\mu_i \\nu_j) / (\\sigma_i \\tau_j)`,
    with :math:`\\sum_t a_{it} b_{j\\pi(t)}` one float64 sparse x sparse product (``b``'s column indices
    relabelled by :math:`\\pi^{-1}`). Null sample ``seed`` is the same shuffle as :func:`shuffle_tokens`
    ``(cb, seed)``; constant features correlate 0, as in
    :func:`~universality.match.similarity.pearson_blocks`. Float64 sums over the non-zeros lose about
    :math:`10^{-16}(1+|\\mu|/\\sigma)^2` relative, negligible unless a code's mean is ~10^6 of its spread.
    """

    def __init__(self, ca: FeatureCodes, cb: FeatureCodes, block: int = 1) -> None:
        check_codes(ca, cb)
        self.A, self.B, self.T, self.block = scipy_codes(ca), scipy_codes(cb), ca.n_tokens, block
        (self.ma, va), (self.mb, vb) = full_sample_moments(ca), full_sample_moments(cb)
        self.live_a = va > CONSTANT_RTOL**2 * (va + self.ma**2)
        self.live_b = vb > CONSTANT_RTOL**2 * (vb + self.mb**2)
        self.sa, self.sb = np.sqrt(va), np.sqrt(vb)
        self._AT = self.A.T.tocsc()  # (T, n): sum_t a_t b'_t as B' @ A^T

    def covariance(self, seed: int | None) -> Float[np.ndarray, "n m"]:
        """Covariance of ``a`` with null sample ``seed`` of ``b`` (``None``: with ``b`` itself, unshuffled)."""
        Bp = self.B
        if seed is not None:
            perm = token_permutation(self.T, seed, self.block).numpy()
            inv = np.empty_like(perm)
            inv[perm] = np.arange(self.T)
            Bp = sp.csr_matrix((self.B.data, inv[self.B.indices], self.B.indptr), shape=self.B.shape)
        cross = np.asarray((Bp @ self._AT).todense()).T / self.T
        return cross - self.ma[:, None] * self.mb[None, :]

    def self_frob2(self) -> tuple[float, float]:
        """``(||C_aa||_F^2, ||C_bb||_F^2)``: the within-code covariances' squared norms, which no shuffle of
        ``b`` changes (the denominator of linear CKA)."""
        out = []
        for X, m in ((self.A, self.ma), (self.B, self.mb)):
            C = np.asarray((X @ X.T).todense()) / self.T - m[:, None] * m[None, :]
            out.append(float((C**2).sum()))
        return out[0], out[1]

    def correlation(self, cov: Float[np.ndarray, "n m"]) -> Float[np.ndarray, "n m"]:
        """Pearson correlations from a covariance of these codes (0 where a feature is constant)."""
        live = self.live_a[:, None] & self.live_b[None, :]
        den = np.where(live, self.sa[:, None] * self.sb[None, :], 1.0)
        return np.clip(np.where(live, cov / den, 0.0), -1.0, 1.0)


def permutation_p_value(statistic: float, nulls: Float[np.ndarray, " R"]) -> tuple[float, str, float]:
    """``(p, method, resolution)`` for ``statistic`` (larger = more similar) against ``R`` null statistics.

    - some null statistic reaches ``statistic``: the permutation p-value
      :math:`(1 + \\#\\{r : s_r \\ge s\\}) / (1 + R)` (Phipson & Smyth 2010), ``method = "perm(R)"``;
    - it exceeds them all: :math:`\\min(1/(R+1),\\, 1 - \\Phi((s - \\bar s) / \\mathrm{sd}(s_r)))`, the upper
      tail of a normal fitted to the nulls, ``method = "normal tail from R perms"``; with a constant null
      (sd 0) it stays at :math:`1/(R+1)` (``"perm(R); null constant"``).

    ``resolution`` is :math:`1/(R+1)`, the smallest p the permutations certify without a model; NaNs when
    there is no statistic or no null.
    """
    s = np.asarray(nulls, dtype=np.float64)
    s = s[np.isfinite(s)]
    R = len(s)
    if R == 0 or not np.isfinite(statistic):
        return float("nan"), "none", float("nan")
    res = 1.0 / (R + 1)
    exceed = int((s >= statistic).sum())
    if exceed > 0:
        return (1 + exceed) * res, f"perm({R})", res
    sd = float(s.std(ddof=1)) if R > 1 else 0.0
    if not sd > 0:
        return res, f"perm({R}); null constant", res
    tail = float(stats.norm.sf((statistic - float(s.mean())) / sd))
    return min(res, tail), f"normal tail from {R} perms", res


def permutation_test(
    statistic: Callable[[Any, Any], float],
    a: Any,
    b: Any,
    null: Callable[[Any, int], Any],
    n_perm: int = 20,
) -> dict[str, Any]:
    """Permutation p-value of ``statistic(a, b)`` against ``statistic(a, null(b, seed))`` for seeds
    ``1..n_perm``; larger statistic = more similar. Returns ``{"statistic", "null_mean", "null_std",
    "p_value", "n_perm", "nulls"}`` with the exact permutation p-value :math:`(1 + \\#\\{s_r \\ge s\\})/(1 + R)`,
    and ``"p_tail", "p_method", "p_resolution"`` from :func:`permutation_p_value` (normal tail beyond the
    last null)."""
    if n_perm < 1:
        raise ConfigError(f"n_perm must be >= 1, got {n_perm}", "use e.g. n_perm=20")
    s = float(statistic(a, b))
    nulls = np.array([float(statistic(a, null(b, r + 1))) for r in range(n_perm)])
    p = (1 + int((nulls >= s).sum())) / (1 + n_perm)
    p_tail, method, res = permutation_p_value(s, nulls)
    return {"statistic": s, "null_mean": float(nulls.mean()), "null_std": float(nulls.std()), "p_value": p,
            "n_perm": n_perm, "nulls": nulls, "p_tail": p_tail, "p_method": method, "p_resolution": res}


def normalise(x: float, floor: float, skyline: float, min_gap: float = MIN_GAP) -> tuple[float, str]:
    """Normalised score :math:`(x - \\text{floor}) / (\\text{skyline} - \\text{floor})` and a note.

    When the skyline is missing or ``skyline - floor < min_gap`` the ratio would amplify noise, so the
    result is NaN and the note says why (this is printed in the table instead of a ratio).
    """
    if skyline is None or not np.isfinite(skyline):
        return float("nan"), "no skyline given"
    if not np.isfinite(floor) or not np.isfinite(x):
        return float("nan"), "metric or floor undefined"
    gap = skyline - floor
    if gap < min_gap:
        return float("nan"), f"skyline - floor = {gap:.3g} < {min_gap}: too small to normalise"
    return float((x - floor) / gap), ""
