"""Assignment matchers: ``hungarian``, ``sparse``, ``mnn``, ``many_to_one``.

Each reads a similarity :math:`S \\in [-1, 1]^{n \\times m}` between the features of ``a`` and ``b`` (cosine
of unit directions, or Pearson / Jaccard of codes on shared tokens) and returns pairs ``(i, j)`` scored by
:math:`S_{ij}`. ``hungarian`` builds the dense ``S`` (in row blocks of ``block``); the other three stream it
and keep only the top-``k`` partners of every row and every column
(:func:`~universality.match.similarity.topk_partners`), so two 65,536-latent dictionaries never need the
``n x m`` matrix. The algorithms are in :mod:`universality.match.assignment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Int
from torch import Tensor

from universality.checks import check_int, check_number
from universality.errors import ConfigError
from universality.match import assignment as asg
from universality.match.methods import n_features, subset
from universality.match.registry import register
from universality.match.result import MatchResult
from universality.match.similarity import TopK, dense_similarity, topk_partners

__all__ = [
    "HungarianOptions",
    "SparseOptions",
    "MNNOptions",
    "ManyToOneOptions",
    "hungarian",
    "sparse",
    "mnn",
    "many_to_one",
]


def _check_threshold(owner: str, value: Any, *, none_ok: bool = False) -> None:
    """``value`` is a real number that is not NaN (``±inf`` keeps every / no pair), or ``None`` when ``none_ok``."""
    if value is None and none_ok:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        allowed = "a number (or None for no threshold)" if none_ok else "a number"
        raise ConfigError(f"{owner}.threshold must be {allowed}, got {value!r}", "use e.g. threshold=0.5")


def _topk(a: Any, b: Any, similarity: str, k: int, block: int | None) -> TopK:
    return topk_partners(a, b, similarity, k=k, block=block)


# ---------------------------------------------------------------------------------------------- hungarian
@dataclass(frozen=True)
class HungarianOptions:
    """Options of ``hungarian``.

    Attributes:
        block: rows of ``a`` per similarity block (``None``: sized so a block stays under ~256 MiB).
    """

    block: int | None = None

    def __post_init__(self) -> None:
        check_int("HungarianOptions", "block", self.block, none_ok=True)


@register("hungarian", HungarianOptions)
def hungarian(a: Any, b: Any, similarity: str, options: HungarianOptions) -> MatchResult:
    """Exact maximum-similarity one-to-one assignment.

    .. math:: \\max_{\\pi} \\sum_i S_{i\\pi(i)} \\quad \\text{over injective } \\pi
              \\text{ (rectangular: } \\min(n, m) \\text{ pairs)}

    on the dense ``(n, m)`` similarity, solved by scipy's ``linear_sum_assignment`` (the Hungarian method,
    Kuhn 1955, in the shortest-augmenting-path form of Jonker & Volgenant 1987 / Crouse 2016); cubic time,
    quadratic memory. ``value`` is the sum of matched similarities.
    """
    return asg.hungarian(dense_similarity(a, b, similarity, options.block))


# ---------------------------------------------------------------------------------------------- sparse
@dataclass(frozen=True)
class SparseOptions:
    """Options of ``sparse``.

    Attributes:
        k: top-``k`` partners kept per row and per column to form the candidate graph (>= 1).
        exact_limit: the exact optimum (and ``meta['optimality_gap']``) is computed when ``n * m`` is at
            most this (``0``: never).
        block: rows of ``a`` per similarity block (``None``: sized so a block stays under ~256 MiB).
        gap_tol: grow the candidate graph until the certified gap bound is at most this (``None``: one round,
            the bound is still reported).
        max_rounds: most graph-growing rounds before the dense fallback (>= 1).
    """

    k: int = 16
    exact_limit: int = 2048 * 2048
    block: int | None = None
    gap_tol: float | None = asg.GAP_TOL
    max_rounds: int = asg.MAX_ROUNDS

    def __post_init__(self) -> None:
        check_int("SparseOptions", "k", self.k)
        check_int("SparseOptions", "exact_limit", self.exact_limit, 0)
        check_int("SparseOptions", "block", self.block, none_ok=True)
        if self.gap_tol is not None:
            check_number("SparseOptions", "gap_tol", self.gap_tol, 0.0)
        check_int("SparseOptions", "max_rounds", self.max_rounds)


@register("sparse", SparseOptions)
def sparse(a: Any, b: Any, similarity: str, options: SparseOptions) -> MatchResult:
    """One-to-one matching on the top-``k`` candidate graph, the scalable route to ``hungarian``.

    The union of every row's and column's ``k`` best partners is a sparse bipartite graph, solved exactly by
    ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp, Jonker & Volgenant 1987) with edge
    cost :math:`2 - S_{ij}`; rows the graph leaves unmatched are completed by an exact assignment against the
    left-over columns (:func:`universality.match.assignment.sparse_assignment`).

    Every result carries a certified bound on its optimality gap, ``meta['gap_bound']``
    :math:`\ge (V^* - V)/|V^*|`, with ``meta['upper_bound']`` :math:`\ge V^*`, from LP duality (dual prices
    of the graph matching made feasible for the full similarity by a streamed row maximum), without the
    dense optimum; while it exceeds :data:`~universality.match.assignment.GAP_TOL` (0.1%) the graph grows by
    the violated edges (pricing), and after :data:`~universality.match.assignment.MAX_ROUNDS` rounds the
    dense exact solver takes over where the similarity fits 2 GiB (``meta['solver']`` says which ran).
    When ``n * m <= exact_limit`` the exact optimum :math:`V^*` is computed too and
    ``meta['optimality_gap']`` = :math:`(V^* - V) / |V^*|` reported.
    """
    n, m = n_features(a), n_features(b)
    tk = _topk(a, b, similarity, options.k, options.block)

    def complete(r: Int[Tensor, " r"], c: Int[Tensor, " c"]) -> Tensor:
        return dense_similarity(subset(a, r), subset(b, c), similarity, options.block)

    exact = dense_similarity(a, b, similarity, options.block) if n * m <= options.exact_limit else None
    return asg.sparse_assignment(tk, complete=complete, exact=exact, gap_tol=options.gap_tol,
                                 max_rounds=options.max_rounds)


# ---------------------------------------------------------------------------------------------- mnn
@dataclass(frozen=True)
class MNNOptions:
    """Options of ``mnn``.

    Attributes:
        k: top-``k`` partners streamed per row and column (only the best one is used; >= 1).
        threshold: keep a mutual pair only when :math:`S_{ij}` exceeds it (``None``: keep every mutual pair).
        block: rows of ``a`` per similarity block (``None``: sized so a block stays under ~256 MiB).
    """

    k: int = 16
    threshold: float | None = 0.5
    block: int | None = None

    def __post_init__(self) -> None:
        check_int("MNNOptions", "k", self.k)
        _check_threshold("MNNOptions", self.threshold, none_ok=True)
        check_int("MNNOptions", "block", self.block, none_ok=True)


@register("mnn", MNNOptions)
def mnn(a: Any, b: Any, similarity: str, options: MNNOptions) -> MatchResult:
    """Mutual nearest neighbours: pairs :math:`(i, j)` with :math:`j = \\arg\\max_{j'} S_{ij'}` and
    :math:`i = \\arg\\max_{i'} S_{i'j}` (and :math:`S_{ij} >` ``threshold``) - a one-to-one matching without an
    optimisation, as used for cross-model feature correspondence (e.g. Lan et al. 2024)."""
    tk = _topk(a, b, similarity, options.k, options.block)
    threshold = -np.inf if options.threshold is None else options.threshold
    return asg.mutual_nearest_neighbours(tk, threshold=threshold)


# ---------------------------------------------------------------------------------------------- many_to_one
@dataclass(frozen=True)
class ManyToOneOptions:
    """Options of ``many_to_one``.

    Attributes:
        k: top-``k`` partners streamed per row and column (only the best one is used; >= 1).
        threshold: a ``b`` feature is matched only when its best similarity exceeds it.
        block: rows of ``a`` per similarity block (``None``: sized so a block stays under ~256 MiB).
    """

    k: int = 16
    threshold: float = 0.5
    block: int | None = None

    def __post_init__(self) -> None:
        check_int("ManyToOneOptions", "k", self.k)
        _check_threshold("ManyToOneOptions", self.threshold)
        check_int("ManyToOneOptions", "block", self.block, none_ok=True)


@register("many_to_one", ManyToOneOptions)
def many_to_one(a: Any, b: Any, similarity: str, options: ManyToOneOptions) -> MatchResult:
    """Each feature :math:`j` of ``b`` to its best feature :math:`i = \\arg\\max_{i'} S_{i'j}` of ``a`` when
    :math:`S_{ij} >` ``threshold``; several ``b`` features on one ``a`` feature are a split of it
    (feature splitting, Bricken et al. 2023), listed in ``meta['groups']`` and counted in ``meta['n_split']``."""
    tk = _topk(a, b, similarity, options.k, options.block)
    return asg.many_to_one(tk, threshold=options.threshold)
