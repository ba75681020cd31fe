"""Gromov-Wasserstein matchers: ``gw`` and ``fgw``.

GW compares the *within*-dictionary geometry of ``a`` and ``b`` - the costs :math:`C^a_{ii'} = 1 - S^a_{ii'}`
and :math:`C^b_{jj'} = 1 - S^b_{jj'}` - so it needs no shared space and matches dictionaries of different
widths (Transformer vs Mamba, different layers). Its solvers are cubic-ish, so a dictionary with more than
``n_max`` features is first reduced to ``n_max`` representatives (:func:`_reduce`); pairs are reported in
the original indices with the reduction in ``meta`` (``index_a``/``index_b``: the representatives,
``labels_a``/``labels_b``: each feature's cluster, ``reduced``). The solvers (POT) are in
:mod:`universality.match.transport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.checks import check_choice, check_int, check_number
from universality.errors import MatchError
from universality.match import transport as tr
from universality.match.methods import n_features, subset
from universality.match.registry import register
from universality.match.result import MatchResult
from universality.match.similarity import dense_similarity

__all__ = ["REDUCTIONS", "GWOptions", "FGWOptions", "gw", "fgw"]

REDUCTIONS = ("kmeans", "subsample")


def _reduce(x: Any, n_max: int, how: str) -> tuple[Int[Tensor, " r"], Int[Tensor, " n"]]:
    """``(index, labels)`` of at most ``n_max`` representatives: spherical k-means or a random subsample of
    directions (:func:`universality.match.transport.reduce_features`); codes are always subsampled."""
    if isinstance(x, Tensor):
        return tr.reduce_features(x.cpu(), n_max, how)
    return tr.reduce_features(torch.zeros(x.n, 1), n_max, "subsample")  # codes: subsample only


def _within_cost(x: Any, similarity: str) -> Float[Tensor, "r r"]:
    """:math:`C_{ii'} = 1 - S_{ii'}` between the features of one dictionary."""
    return 1.0 - dense_similarity(x, x, similarity)


@dataclass(frozen=True)
class _Structure:
    """The reduced problem: representatives, their within costs and (in a shared space) cross similarity."""

    index_a: Int[Tensor, " ra"]
    labels_a: Int[Tensor, " n"]
    index_b: Int[Tensor, " rb"]
    labels_b: Int[Tensor, " m"]
    C_a: Float[Tensor, "ra ra"]
    C_b: Float[Tensor, "rb rb"]
    S_cross: Float[Tensor, "ra rb"] | None  # None: cosine directions of different widths (no shared space)


def _structure(a: Any, b: Any, similarity: str, n_max: int, reduce: str) -> _Structure:
    ia, la = _reduce(a, n_max, reduce)
    ib, lb = _reduce(b, n_max, reduce)
    ra, rb = subset(a, ia), subset(b, ib)
    C_a, C_b = _within_cost(ra, similarity), _within_cost(rb, similarity)
    same_space = not (similarity == "cosine" and ra.shape[1] != rb.shape[1])
    S_cross = dense_similarity(ra, rb, similarity) if same_space else None
    return _Structure(ia, la, ib, lb, C_a, C_b, S_cross)


def _in_original_indices(res: MatchResult, st: _Structure, n: int, m: int) -> MatchResult:
    """Pairs of representatives -> pairs of original features, with the reduction recorded in ``meta``."""
    ia_np, ib_np = st.index_a.cpu().numpy(), st.index_b.cpu().numpy()
    pairs = np.stack([ia_np[res.pairs[:, 0]], ib_np[res.pairs[:, 1]]], 1) if len(res) else res.pairs
    return MatchResult(pairs, res.scores, res.plan, res.value,
                       {**res.meta, "reduced": bool(len(st.index_a) < n or len(st.index_b) < m),
                        "index_a": ia_np.tolist(), "index_b": ib_np.tolist(),
                        "labels_a": st.labels_a.cpu().numpy().tolist(), "labels_b": st.labels_b.cpu().numpy().tolist(),
                        "scored_by": "similarity" if st.S_cross is not None else "plan mass x n (no shared space)"})


def _check_reduction(owner: str, n_max: Any, reduce: Any) -> None:
    check_int(owner, "n_max", n_max)
    check_choice(owner, "reduce", reduce, REDUCTIONS)


# ---------------------------------------------------------------------------------------------- gw
@dataclass(frozen=True)
class GWOptions:
    """Options of ``gw``.

    Attributes:
        n_max: dictionaries with more features are reduced to ``n_max`` representatives first (>= 1).
        reduce: ``kmeans`` (the member nearest each spherical k-means centroid) or ``subsample`` (random);
            codes (``view='activations'``) are always subsampled.
    """

    n_max: int = 2000
    reduce: str = "kmeans"

    def __post_init__(self) -> None:
        _check_reduction("GWOptions", self.n_max, self.reduce)


@register("gw", GWOptions, across_widths=True)
def gw(a: Any, b: Any, similarity: str, options: GWOptions) -> MatchResult:
    """Gromov-Wasserstein coupling of the two within-dictionary costs (Memoli 2011; Peyre et al. 2016),

    .. math:: \\min_{P \\in U(a, b)} \\sum_{i,i',j,j'} (C^a_{ii'} - C^b_{jj'})^2 P_{ij} P_{i'j'},

    by ``ot.gromov.gromov_wasserstein`` (``square_loss``; non-convex, a local optimum). ``value`` is the GW
    distance. Pairs are scored by the cross similarity when ``a`` and ``b`` share a space, else by the
    plan's mass times ``n`` (``meta['scored_by']``).
    """
    st = _structure(a, b, similarity, options.n_max, options.reduce)
    res = tr.gw_match(st.C_a, st.C_b, st.S_cross)
    return _in_original_indices(res, st, n_features(a), n_features(b))


# ---------------------------------------------------------------------------------------------- fgw
@dataclass(frozen=True)
class FGWOptions:
    """Options of ``fgw``.

    Attributes:
        alpha: weight :math:`\\alpha \\in [0, 1]` of the structure term (1: pure GW, 0: pure OT on ``1 - S``).
        n_max: dictionaries with more features are reduced to ``n_max`` representatives first (>= 1).
        reduce: ``kmeans`` or ``subsample`` (codes are always subsampled).
    """

    alpha: float = 0.5
    n_max: int = 2000
    reduce: str = "kmeans"

    def __post_init__(self) -> None:
        check_number("FGWOptions", "alpha", self.alpha, 0.0, 1.0)
        _check_reduction("FGWOptions", self.n_max, self.reduce)


@register("fgw", FGWOptions)
def fgw(a: Any, b: Any, similarity: str, options: FGWOptions) -> MatchResult:
    """Fused Gromov-Wasserstein (Vayer et al. 2019): the cross cost :math:`M = 1 - S` plus the GW structure,

    .. math:: \\min_{P \\in U(a, b)} (1 - \\alpha) \\langle P, M \\rangle
              + \\alpha \\sum_{i,i',j,j'} (C^a_{ii'} - C^b_{jj'})^2 P_{ij} P_{i'j'},

    by ``ot.gromov.fused_gromov_wasserstein``. Needs a cross similarity, so both dictionaries must share a
    space (same width, or the activation view).
    """
    st = _structure(a, b, similarity, options.n_max, options.reduce)
    if st.S_cross is None:
        raise MatchError("fgw needs a cross similarity but the directions have different widths",
                         "use view='activations' for fgw, or method='gw'")
    res = tr.fgw_match(1.0 - st.S_cross, st.C_a, st.C_b, options.alpha)
    return _in_original_indices(res, st, n_features(a), n_features(b))
