"""Confidence intervals for similarity statistics: token block bootstrap and seed intervals.

The small public API the comparisons and the studies share:

- :func:`block_bootstrap_weights` - ``(n_boot, T)`` token multiplicities of the *circular block bootstrap*
  (Politis & Romano 1992, *A circular block-resampling procedure for stationary data*): each replicate
  glues ``ceil(T / block)`` runs of ``block`` consecutive tokens, starting anywhere (wrapping around), and
  counts how often each token was drawn. Tokens of one sequence are dependent, so they are resampled in
  contiguous runs (Kuensch 1989); the circular variant gives every token the same expected weight 1.
- :func:`bootstrap_interval` - the interval of a statistic from its replicates ``statistic(weights)``:
  ``"percentile"`` :math:`[q_{\\alpha/2}, q_{1-\\alpha/2}]` or ``"basic"`` (pivot)
  :math:`[2\\hat\\theta - q_{1-\\alpha/2},\\, 2\\hat\\theta - q_{\\alpha/2}]` (Davison & Hinkley 1997, ch. 5).
- :func:`seed_interval` - Student-t interval of the mean over ``>= 3`` seed copies.
- :class:`WeightedCodes` - weighted moments and correlations of two code sets for many weight vectors
  at once, from the sparse codes (one sparse x dense product per quantity for all replicates), so a
  bootstrap never reruns a metric's full pipeline.

Which interval for which statistic (used by :func:`universality.match.compare`):

- *maximum-type statistics* (MPPC, Hungarian mean correlation, fraction of matches above ``t``) are
  bootstrapped with the partner of every feature **fixed from the full sample**
  (:meth:`WeightedCodes.pair_correlations`) and read with the percentile interval. Re-maximising on each
  resample is biased upward: resampling duplicates tokens, which inflates the spurious correlations the
  maximum picks up, so a plain percentile interval of re-maximised MPPC can miss the full-sample value
  entirely (0.504 against [0.525, 0.536] in an earlier attempt). With fixed partners each replicate is a
  smooth function of weighted moments, centred on the full-sample value. The interval is the sampling
  uncertainty of the matched pairs' correlations; the selection bias of the maximum itself (features with
  no true partner still find a noise partner) is what the token-shuffle floor measures.
- *linear CKA* is smooth but its numerator :math:`\\|C_{ab}\\|_F^2` carries a positive noise term that
  resampling enlarges again; the basic interval subtracts that bias once (the bootstrap estimates it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from jaxtyping import Float
from scipy import stats

from universality.errors import ConfigError, MatchError
from universality.match.similarity import CONSTANT_RTOL, check_codes, code_moments
from universality.match.views import FeatureCodes
from universality.progress import MIN_WORK, progress_bar

__all__ = [
    "Interval",
    "INTERVAL_METHODS",
    "default_block",
    "block_bootstrap_weights",
    "interval_from_replicates",
    "bootstrap_interval",
    "seed_interval",
    "scipy_codes",
    "WeightedCodes",
    "COFIRE_LIMIT",
    "DIRECT_PAIRS",
    "full_sample_moments",
]

INTERVAL_METHODS = ("percentile", "basic")
COFIRE_LIMIT = 20_000_000
"""Most co-firing ``(token, i, j)`` triples :meth:`WeightedCodes.cka` accumulates (dense codes exceed it)."""
DIRECT_PAIRS = 1 << 22
"""Up to this many feature pairs ``n m`` the co-firing sums are indexed by ``i m + j`` directly (no sort)."""


@dataclass(frozen=True)
class Interval:
    """A two-sided interval ``[low, high]`` at ``level``, how it was made (``method``) and from how many
    replicates or seeds (``n``)."""

    low: float
    high: float
    method: str
    level: float = 0.95
    n: int = 0

    def covers(self, x: float) -> bool:
        return bool(self.low <= x <= self.high)


def default_block(T: int) -> int:
    """Tokens per bootstrap block: 64 (one context of the quickstart harvest; dependence between tokens
    reaches across a context), at most ``T // 20`` so a replicate still draws >= 20 blocks."""
    return int(max(1, min(64, T // 20)))


def block_bootstrap_weights(T: int, n_boot: int, block: int | None = None,
                            seed: int = 0) -> Float[np.ndarray, "n_boot T"]:
    """``(n_boot, T)`` float64 token multiplicities of the circular block bootstrap (module docstring):
    every row sums to ``T``; ``block=1`` is the ordinary (i.i.d.) bootstrap. Memory: ``8 n_boot T`` bytes
    (100 replicates of 1M tokens: 800 MB; bootstrap a token subsample for larger sets)."""
    if T < 1 or n_boot < 1:
        raise ConfigError(f"block bootstrap needs T >= 1 and n_boot >= 1, got T={T}, n_boot={n_boot}",
                          "pass at least one token and one replicate")
    block = default_block(T) if block is None else int(block)
    if not 1 <= block <= T:
        raise ConfigError(f"bootstrap block must be in [1, T={T}], got {block}", "use e.g. block=64 (a context)")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB007]))
    nb = -(-T // block)
    starts = rng.integers(0, T, size=(n_boot, nb))
    idx = ((starts[:, :, None] + np.arange(block)[None, None, :]) % T).reshape(n_boot, -1)[:, :T]
    flat = (idx + (np.arange(n_boot) * T)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * T).reshape(n_boot, T).astype(np.float64)


def interval_from_replicates(replicates: Sequence[float] | np.ndarray, value: float, level: float = 0.95,
                             method: str = "percentile") -> Interval:
    """The ``method`` interval (``"percentile"`` or ``"basic"``, module docstring) of ``value`` from its
    bootstrap replicates; NaN replicates are dropped (NaN interval when none is left)."""
    if method not in INTERVAL_METHODS:
        raise ConfigError(f"unknown interval method {method!r}", f"use one of {INTERVAL_METHODS}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}", "use e.g. level=0.95")
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    label = f"{method} block bootstrap ({len(r)})"
    if len(r) == 0 or not np.isfinite(value):
        return Interval(float("nan"), float("nan"), label, level, len(r))
    lo_q, hi_q = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    if method == "basic":
        lo_q, hi_q = 2 * value - hi_q, 2 * value - lo_q
    return Interval(float(lo_q), float(hi_q), label, level, len(r))


def bootstrap_interval(statistic_of_weights: Callable[[np.ndarray], np.ndarray], value: float,
                       weights: Float[np.ndarray, "n_boot T"], level: float = 0.95,
                       method: str = "percentile") -> Interval:
    """Interval of ``value`` from ``statistic_of_weights(weights) -> (n_boot,)`` replicates (the statistic
    recomputed with token weights, e.g. from :func:`block_bootstrap_weights`); see
    :func:`interval_from_replicates`."""
    reps = np.asarray(statistic_of_weights(weights), dtype=np.float64).reshape(-1)
    if len(reps) != len(weights):
        raise MatchError(f"the statistic gave {len(reps)} replicates for {len(weights)} weight vectors",
                         "return one value per row of the weights")
    return interval_from_replicates(reps, value, level, method)


def seed_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean over seed copies,
    :math:`\\bar x \\pm t_{k-1, (1+\\text{level})/2}\\, s / \\sqrt k` with ``s`` the sample standard deviation
    of the ``k >= 3`` finite values (two seeds give one degree of freedom: an interval too wide to read)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 3:
        raise MatchError(f"a seed interval needs >= 3 finite seed values, got {len(x)}",
                         "train or pass at least three seed copies")
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return Interval(float(x.mean() - half), float(x.mean() + half), f"student-t over {len(x)} seeds", level, len(x))


def scipy_codes(c: FeatureCodes) -> sp.csr_matrix:
    """The codes ``(n, T)`` as a float64 ``scipy.sparse.csr_matrix`` (on the CPU)."""
    x = c.codes.cpu()
    return sp.csr_matrix((x.values().double().numpy(), x.col_indices().numpy(), x.crow_indices().numpy()),
                         shape=tuple(x.shape))


def _cofire(At: sp.csr_matrix, Bt: sp.csr_matrix) -> sp.csr_matrix:
    """``ZT (U, T)``: ``ZT[u, t] = a_{it} b_{jt}`` over feature pairs ``u``; every pair ``u = i m + j`` when
    ``n m <= DIRECT_PAIRS``, else only the pairs that fire together on some token (token-major codes
    ``At (T, n)``, ``Bt (T, m)``)."""
    T, m = At.shape[0], Bt.shape[1]
    ka, kb = np.diff(At.indptr), np.diff(Bt.indptr)
    cnt = ka * kb
    total = int(cnt.sum())
    if total > COFIRE_LIMIT:
        raise MatchError(f"{total} co-firing (token, i, j) triples exceed {COFIRE_LIMIT}",
                         "codes this dense get no CKA interval; pass n_boot=0")
    tok = np.repeat(np.arange(T), cnt)
    off = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    kbt = np.maximum(kb[tok], 1)
    pa, pb = At.indptr[tok] + off // kbt, Bt.indptr[tok] + off % kbt
    key = At.indices[pa].astype(np.int64) * m + Bt.indices[pb]
    n_pairs = At.shape[1] * m
    if n_pairs > DIRECT_PAIRS:
        _, key = np.unique(key, return_inverse=True)
        n_pairs = int(key.max()) + 1 if len(key) else 0
    return sp.csr_matrix((At.data[pa] * Bt.data[pb], (key, tok)), shape=(n_pairs, T))


class WeightedCodes:
    """Weighted moments of two code sets ``a (n, T)`` and ``b (m, T)`` on the same tokens, for many token
    weight vectors ``W (R, T)`` at once (bootstrap replicates). With :math:`W_r = \\sum_t w_{rt}`:

    .. math:: \\mu_{ri} = \\tfrac1{W_r} \\sum_t w_{rt} a_{it}, \\quad
              C_{r,ij} = \\tfrac1{W_r} \\sum_t w_{rt} a_{it} b_{jt} - \\mu_{ri} \\nu_{rj},

    the weighted (population) covariance; correlations divide by the weighted standard deviations and are 0
    where a feature is constant under the weights (:data:`~universality.match.similarity.CONSTANT_RTOL`).
    Sums run over the stored non-zeros in float64 (relative rounding :math:`\\sim 10^{-16}(1+|\\mu|/\\sigma)^2`).
    """

    def __init__(self, ca: FeatureCodes, cb: FeatureCodes) -> None:
        check_codes(ca, cb)
        self.A, self.B = scipy_codes(ca), scipy_codes(cb)
        self.T = ca.n_tokens

    def _moments(self, X: sp.csr_matrix, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ws = W.sum(1)[:, None]
        mean = (X @ W.T).T / ws
        var = np.maximum((X.multiply(X) @ W.T).T / ws - mean**2, 0.0)
        return mean, var

    def moments(self, W: Float[np.ndarray, "R T"]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(mean_a, var_a, mean_b, var_b)``, each ``(R, n)`` or ``(R, m)``."""
        return (*self._moments(self.A, W), *self._moments(self.B, W))

    def pair_correlations(self, W: Float[np.ndarray, "R T"], I: np.ndarray, J: np.ndarray) -> np.ndarray:
        """``(R, k)`` weighted Pearson correlations of the fixed pairs ``(I[u], J[u])``."""
        I, J = np.asarray(I, dtype=np.int64), np.asarray(J, dtype=np.int64)
        ma, va, mb, vb = self.moments(W)
        P = self.A[I].multiply(self.B[J]).tocsr()  # (k, T): a_{I_u t} b_{J_u t}
        cross = (P @ W.T).T / W.sum(1)[:, None]
        cov = cross - ma[:, I] * mb[:, J]
        sa, sb = va[:, I], vb[:, J]
        live = (sa > CONSTANT_RTOL**2 * (sa + ma[:, I] ** 2)) & (sb > CONSTANT_RTOL**2 * (sb + mb[:, J] ** 2))
        rho = np.where(live, cov / np.sqrt(np.where(live, sa * sb, 1.0)), 0.0)
        return np.clip(rho, -1.0, 1.0)

    @staticmethod
    def _frob2(X: sp.csr_matrix, Y: sp.csr_matrix, W: np.ndarray, mx: np.ndarray, my: np.ndarray,
               chunk: int) -> np.ndarray:
        """``(R,)`` :math:`\\|C_r\\|_F^2` of the weighted cross-covariance :math:`C_r = S_r - \\mu \\nu^\\top`,
        :math:`S_r = \\tfrac1{W_r} \\sum_t w_{rt} x_t y_t^\\top`:

        .. math:: \\|C_r\\|_F^2 = \\|S_r\\|_F^2 - \\tfrac2{W_r} \\sum_t w_{rt} (\\mu \\cdot x_t)(\\nu \\cdot y_t)
                  + \\|\\mu\\|^2 \\|\\nu\\|^2,

        with :math:`S_r` accumulated on the co-firing pairs only (zero elsewhere)."""
        ZT = _cofire(X.T.tocsr(), Y.T.tocsr())
        chunk = max(1, min(chunk, (1 << 24) // max(ZT.shape[0], 1)))  # (U, chunk) float64 stays <= 128 MiB
        ws = W.sum(1)
        out = np.empty(len(W))
        # a bar from about a second of sparse products on (2^28 nonzero x replicate products)
        bar = progress_bar(range(0, len(W), chunk), "bootstrap CKA", leave=False, work=ZT.nnz * len(W),
                           min_work=MIN_WORK << 6)
        for r0 in bar:
            S = ZT @ W[r0:r0 + chunk].T  # (U, r), not yet divided by W_r
            out[r0:r0 + chunk] = np.einsum("ur,ur->r", S, S) / ws[r0:r0 + chunk] ** 2
        p, q = (X.T @ mx.T).T, (Y.T @ my.T).T  # (R, T): mu . x_t and nu . y_t
        out -= 2 * (W * p * q).sum(1) / ws
        return out + (mx**2).sum(1) * (my**2).sum(1)

    def cka(self, W: Float[np.ndarray, "R T"], chunk: int = 16) -> np.ndarray:
        """``(R,)`` weighted linear CKA :math:`\\|C_{ab}\\|_F^2 / (\\|C_{aa}\\|_F \\|C_{bb}\\|_F)` (Kornblith et al.
        2019, as :func:`~universality.match.summary.linear_cka_codes`)."""
        ma, _, mb, _ = self.moments(W)
        num = self._frob2(self.A, self.B, W, ma, mb, chunk)
        den = np.sqrt(np.maximum(self._frob2(self.A, self.A, W, ma, ma, chunk), 0)
                      * np.maximum(self._frob2(self.B, self.B, W, mb, mb, chunk), 0))
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def full_sample_moments(c: FeatureCodes) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population variance (float64 numpy), as
    :func:`~universality.match.similarity.code_moments`."""
    m, v = code_moments(c)
    return m.cpu().numpy(), v.cpu().numpy()
