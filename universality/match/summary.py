"""Summary metrics of how alike two dictionaries are. Each formula lives here once, with its source.

Directions are unit rows ``(n, d)``; codes are :class:`~universality.match.views.FeatureCodes` on shared tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from scipy.stats import spearmanr
from torch import Tensor

from universality.errors import MatchError
from universality.match.assignment import hungarian, sparse_assignment
from universality.match.result import MatchResult
from universality.match.similarity import constant_features, covariance_blocks, dense_similarity, topk_partners
from universality.match.views import FeatureCodes

__all__ = [
    "DENSE_LIMIT",
    "mean_matched_score",
    "max_similarity",
    "mmcs",
    "pw_mcc",
    "mppc",
    "dead_counts",
    "MIN_PAIRS_RATIO",
    "too_few_pairs",
    "one_to_one",
    "shared_fraction",
    "svcca",
    "rsa",
    "linear_cka",
    "linear_cka_codes",
    "cycle_consistency",
]

DENSE_LIMIT = 4096 * 4096  # largest n*m for a dense (n, m) matrix here; one_to_one goes sparse from a smaller crossover


def mean_matched_score(result: MatchResult) -> float:
    """Mean matched similarity :math:`\\frac1k \\sum_{(i,j) \\in \\pi} S_{ij}` over the ``k`` pairs of a
    one-to-one assignment (mean matched cosine when ``S`` is cosine)."""
    return result.mean_score


def max_similarity(a: Any, b: Any, kind: str = "cosine", block: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-feature best partner similarity in both directions: ``(max_j S_ij over i, max_i S_ij over j)``."""
    tk = topk_partners(a, b, kind, k=1, block=block, progress=False)
    return tk.row_values[:, 0], tk.col_values[:, 0]


def mmcs(A: Float[Tensor, "n d"], B: Float[Tensor, "m d"], block: int | None = None) -> tuple[float, float]:
    """Mean max cosine similarity in both directions (Sharkey, Braun & Millidge 2022, *Taking features out
    of superposition with sparse autoencoders*):

    .. math:: \\mathrm{MMCS}(A \\to B) = \\frac1n \\sum_i \\max_j \\hat a_i \\cdot \\hat b_j .
    """
    ra, rb = max_similarity(A, B, "cosine", block)
    return float(ra.mean()), float(rb.mean())


def pw_mcc(A: Float[Tensor, "n d"], B: Float[Tensor, "m d"]) -> float:
    """Pairwise dictionary mean correlation coefficient (PW-MCC) of two runs' decoders (Song et al. 2025,
    *Position: Mechanistic Interpretability Should Prioritize Feature Consistency in SAEs*): the mean
    cosine similarity of the decoder atoms paired by the optimal one-to-one (Hungarian) assignment,

    .. math:: \\mathrm{PW\\text{-}MCC}(A, B) = \\frac1k \\sum_{(i,j) \\in \\pi^*} \\hat a_i \\cdot \\hat b_j, \\qquad
              \\pi^* = \\arg\\max_\\pi \\sum_{(i,j) \\in \\pi} \\hat a_i \\cdot \\hat b_j,

    over the ``k = min(n, m)`` pairs. The authors' code (``sae-feature-consistency``,
    ``dictionary_learning/utils.py::MCC``) normalises the decoder rows, solves the assignment on the cost
    ``1 - cos`` (signed cosines, not absolute values) and averages the matched cosines, so in this
    library's conventions PW-MCC *is* the mean matched cosine
    (:func:`mean_matched_score` of :func:`one_to_one` on unit decoder rows), exactly; ``compare`` reports it
    as its own row so the number can be quoted under its published name. Large dictionaries take the sparse
    certified route of :func:`one_to_one` (its ``meta['gap_bound']`` bounds the shortfall).
    """
    return mean_matched_score(one_to_one(A, B, "cosine"))


def mppc(ca: FeatureCodes, cb: FeatureCodes, block: int | None = None,
         exclude_dead: bool = True) -> tuple[float, float]:
    """Mean of per-feature maximum Pearson correlation over shared tokens, both directions (Wang et al. 2024,
    *Towards Universality: Studying Mechanistic Similarity Across Language Model Architectures*):

    .. math:: \\mathrm{MPPC}(A \\to B) = \\frac1{|L_A|} \\sum_{i \\in L_A} \\max_j \\rho(z^A_i, z^B_j),

    over the live features :math:`L_A` of ``a`` (not constant on the tokens,
    :func:`~universality.match.similarity.constant_features`): a dead feature has no correlation to speak
    of, and counting it as 0 would make MPPC measure the dead fraction (:func:`dead_counts` reports how many
    were left out). ``exclude_dead=False`` averages over all ``n`` features, dead ones as 0. NaN when no
    feature of that side is live.
    """
    ra, rb = max_similarity(ca, cb, "pearson", block)
    if not exclude_dead:
        return float(ra.mean()), float(rb.mean())
    live_a, live_b = ~constant_features(ca), ~constant_features(cb)
    return (float(ra[live_a].mean()) if live_a.any() else float("nan"),
            float(rb[live_b].mean()) if live_b.any() else float("nan"))


def dead_counts(ca: FeatureCodes, cb: FeatureCodes) -> tuple[int, int]:
    """``(dead in a, dead in b)``: features constant on the shared tokens, left out of :func:`mppc`."""
    return int(constant_features(ca).sum()), int(constant_features(cb).sum())


def one_to_one(
    a: Any, b: Any, kind: str = "cosine", k: int = 16, exact_limit: int | None = None, gap_tol: float | None = 1e-3
) -> MatchResult:
    """Maximum-similarity one-to-one assignment: exact (Hungarian, ``meta['gap_bound'] = 0``) when
    ``n*m <= exact_limit``, else the sparse top-``k`` route completed on left-over columns and refined
    until its certified gap ``meta['gap_bound']`` is at most ``gap_tol``
    (:func:`universality.match.assignment.sparse_assignment`; ``None``: one round, bound still reported).

    ``exact_limit=None`` picks the cheaper solver: dense up to ``2048 * 3072`` entries (and
    :data:`DENSE_LIMIT`), where scipy's dense ``linear_sum_assignment`` measured as fast as or faster than
    the certified sparse route; above it the sparse route was 1.7-3x faster at 4096^2
    (``benchmarks/match.py --crossover``, 2 CPU threads)."""
    n = a.shape[0] if isinstance(a, Tensor) else a.n
    m = b.shape[0] if isinstance(b, Tensor) else b.n
    if exact_limit is None:
        exact_limit = min(DENSE_LIMIT, 2048 * 3072)  # the measured dense/sparse crossover
    if n * m <= exact_limit:
        return hungarian(dense_similarity(a, b, kind), {"view_kind": kind})
    tk = topk_partners(a, b, kind, k=k)

    def complete(r: Tensor, c: Tensor) -> Tensor:
        sub_a = a[r] if isinstance(a, Tensor) else a.subset(r)
        sub_b = b[c] if isinstance(b, Tensor) else b.subset(c)
        return dense_similarity(sub_a, sub_b, kind)

    return sparse_assignment(tk, complete=complete, meta={"view_kind": kind}, gap_tol=gap_tol)


def shared_fraction(
    enc_a: Float[Tensor, "n d"], dec_a: Float[Tensor, "n d"], enc_b: Float[Tensor, "m d"], dec_b: Float[Tensor, "m d"],
    thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
) -> dict[float, float]:
    """Shared fraction of latents in the sense of Paulo & Belrose 2025 (*Sparse autoencoders trained on the
    same data learn different features*): latent ``i`` of ``a`` is shared when the one-to-one (Hungarian)
    assignments computed on encoder cosines and on decoder cosines send it to the same ``j`` and both
    cosines exceed :math:`\\theta`:

    .. math:: f(\\theta) = \\frac1n \\big|\\{i : \\pi_\\text{enc}(i) = \\pi_\\text{dec}(i),\\;
              \\cos(e_i, e'_{\\pi(i)}) > \\theta,\\; \\cos(d_i, d'_{\\pi(i)}) > \\theta\\}\\big| .
    """
    n = enc_a.shape[0]
    penc, pdec = one_to_one(enc_a, enc_b), one_to_one(dec_a, dec_b)
    je, se = np.full(n, -1), np.full(n, -np.inf)
    jd, sd = np.full(n, -2), np.full(n, -np.inf)
    je[penc.pairs[:, 0]], se[penc.pairs[:, 0]] = penc.pairs[:, 1], penc.scores
    jd[pdec.pairs[:, 0]], sd[pdec.pairs[:, 0]] = pdec.pairs[:, 1], pdec.scores
    agree = je == jd
    return {float(t): float((agree & (se > t) & (sd > t)).mean()) for t in thresholds}


def _center(X: Tensor) -> Tensor:
    X = X.double()
    return X - X.mean(0, keepdim=True)


MIN_PAIRS_RATIO = 2.0
"""SVCCA and RSA need ``k >= MIN_PAIRS_RATIO * (r_x + r_y)`` paired rows, see :func:`too_few_pairs`."""


def _reduce(Z: Tensor, keep: float) -> Tensor:
    """Orthonormal basis ``(k, r)`` of the centred rows' top singular directions holding ``keep`` of the
    variance (``r <= k - 1``; the reduced data ``U_r S_r`` spans the same space)."""
    U, s, _ = torch.linalg.svd(_center(Z), full_matrices=False)
    var = (s**2).cumsum(0) / (s**2).sum().clamp_min(1e-30)
    r = int(min(int((var < keep).sum()) + 1, Z.shape[0] - 1, len(s)))
    return U[:, :r]


def too_few_pairs(X: Float[Tensor, "k dx"], Y: Float[Tensor, "k dy"], keep: float = 0.99) -> str | None:
    """Why SVCCA/RSA of these ``k`` pairs would mislead, or ``None`` when there are enough.

    The rule: ``k >= MIN_PAIRS_RATIO * (r_x + r_y)`` with ``r`` the number of singular directions holding
    ``keep`` of each side's variance (the SVCCA reduction). Canonical correlations of ``r_x``- and
    ``r_y``-dimensional data from ``k`` samples are all 1 by construction once ``r_x + r_y >= k - 1`` (the two
    column spaces meet inside the ``k - 1`` centred dimensions), and for independent data they stay large
    while ``(r_x + r_y) / k`` is not small (Wachter 1980, *The limiting empirical measure of multiple
    discriminant ratios*; Johnstone 2008, *Multivariate analysis and Jacobi ensembles*): 4 pairs in 64
    dimensions give SVCCA 1 for any data. RSA reads the same pair set, so it follows the same rule.
    """
    k = X.shape[0]
    if k < 3:
        return f"{k} pairs: SVCCA/RSA need at least 3"
    rx, ry = _reduce(X, keep).shape[1], _reduce(Y, keep).shape[1]
    need = int(np.ceil(MIN_PAIRS_RATIO * (rx + ry)))
    if k < need:
        return (f"{k} pairs for {rx} + {ry} dimensions: SVCCA/RSA need >= {MIN_PAIRS_RATIO:g} x (r_a + r_b) = "
                f"{need} pairs (fewer fit any data)")
    return None


def svcca(X: Float[Tensor, "k dx"], Y: Float[Tensor, "k dy"], keep: float = 0.99) -> float:
    """Mean canonical correlation after SVD reduction (SVCCA, Raghu et al. 2017), applied as in Lan et al.
    2024 (*Sparse autoencoders reveal universal feature spaces across LLMs*) to the decoder rows of paired
    features: rows of ``X`` and ``Y`` are the ``k`` pairs. Each side is centred and reduced to the top
    singular directions holding ``keep`` of its variance (at most ``k - 1``); the canonical correlations
    are the singular values of :math:`Q_X^\\top Q_Y` for orthonormal bases :math:`Q` of the reduced data.
    NaN when there are too few pairs for the dimensions (:func:`too_few_pairs` says why).
    """
    if X.shape[0] != Y.shape[0] or X.shape[0] < 3:
        raise MatchError(f"SVCCA needs the same >= 3 paired rows, got {X.shape[0]} and {Y.shape[0]}", "match first")
    if too_few_pairs(X, Y, keep) is not None:
        return float("nan")
    rho = torch.linalg.svdvals(_reduce(X, keep).T @ _reduce(Y, keep)).clamp(0, 1)
    return float(rho.mean())


def rsa(X: Float[Tensor, "k dx"], Y: Float[Tensor, "k dy"]) -> float:
    """Representational similarity analysis (Kriegeskorte et al. 2008) as used by Lan et al. 2024: Spearman
    correlation between the upper triangles of the within-space cosine-similarity matrices of the ``k``
    paired features, :math:`\\rho_s(\\mathrm{triu}(\\hat X\\hat X^\\top), \\mathrm{triu}(\\hat Y\\hat Y^\\top))`.
    NaN when there are too few pairs for the dimensions (:func:`too_few_pairs`)."""
    if X.shape[0] != Y.shape[0] or X.shape[0] < 3:
        raise MatchError(f"RSA needs the same >= 3 paired rows, got {X.shape[0]} and {Y.shape[0]}", "match first")
    if too_few_pairs(X, Y) is not None:
        return float("nan")
    Xn = torch.nn.functional.normalize(X.double(), dim=1)
    Yn = torch.nn.functional.normalize(Y.double(), dim=1)
    iu = torch.triu_indices(len(X), len(X), 1)
    rx, ry = (Xn @ Xn.T)[iu[0], iu[1]], (Yn @ Yn.T)[iu[0], iu[1]]
    return float(spearmanr(rx.numpy(), ry.numpy()).statistic)


def linear_cka(X: Float[Tensor, "T n"], Y: Float[Tensor, "T m"]) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two representations of the same ``T`` rows:

    .. math:: \\mathrm{CKA}(X, Y) = \\frac{\\|Y_c^\\top X_c\\|_F^2}{\\|X_c^\\top X_c\\|_F\\,\\|Y_c^\\top Y_c\\|_F}.
    """
    Xc, Yc = _center(X), _center(Y)
    num = (Yc.T @ Xc).pow(2).sum()
    den = (Xc.T @ Xc).pow(2).sum().sqrt() * (Yc.T @ Yc).pow(2).sum().sqrt()
    return float(num / den) if den > 0 else float("nan")


def _cov_frob2(ca: FeatureCodes, cb: FeatureCodes, block: int | None) -> float:
    return float(sum(float(C.pow(2).sum()) for _, C in covariance_blocks(ca, cb, block)))


def linear_cka_codes(ca: FeatureCodes, cb: FeatureCodes, block: int | None = None) -> float:
    """:func:`linear_cka` of two code sets computed blockwise from sparse codes (same formula, covariances
    :math:`\\tfrac1T X_c^\\top Y_c` accumulated centred in float64 block by block, so the ``(n, m)`` matrix is
    never held and the value is invariant to shifting and scaling the codes)."""
    num = _cov_frob2(ca, cb, block)
    den = np.sqrt(_cov_frob2(ca, ca, block)) * np.sqrt(_cov_frob2(cb, cb, block))
    return float(num / den) if den > 0 else float("nan")


def cycle_consistency(dicts: Sequence[Any], kind: str = "cosine") -> float:
    """Fraction of features of the first dictionary that return to themselves after following one-to-one
    matches around the cycle ``D_0 -> D_1 -> ... -> D_{r-1} -> D_0`` (unmatched features count as failures).

    .. math:: \\mathrm{CC} = \\frac1{n_0} |\\{i : \\pi_{r-1,0} \\circ \\cdots \\circ \\pi_{0,1}(i) = i\\}|.
    """
    if len(dicts) < 3:
        raise MatchError(f"cycle consistency needs three or more dictionaries, got {len(dicts)}", "pass >= 3")
    n0 = dicts[0].shape[0] if isinstance(dicts[0], Tensor) else dicts[0].n
    cur = np.arange(n0)
    for s, t in zip(dicts, list(dicts[1:]) + [dicts[0]]):
        mp = one_to_one(s, t, kind).as_dict()
        cur = np.array([mp.get(int(i), -1) if i >= 0 else -1 for i in cur])
    return float((cur == np.arange(n0)).mean())
