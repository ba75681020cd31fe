"""One-to-one, mutual and many-to-one assignments of features from a similarity.

- :func:`hungarian` - exact maximum-weight assignment (scipy's ``linear_sum_assignment``, a
  Jonker-Volgenant solver; rectangular allowed: ``min(n, m)`` pairs), maximising :math:`\\sum S_{i\\pi(i)}`.
- :func:`sparse_assignment` - the scalable route: the union of row and column top-k partners forms a
  sparse candidate graph solved exactly by ``scipy.sparse.csgraph.min_weight_full_bipartite_matching``
  (LAPJVsp) with cost :math:`2 - S`; every row also has a private "unmatched" edge of prohibitive cost so
  a full matching always exists; rows left unmatched are completed by an exact assignment against the
  left-over columns. Its optimality gap, :math:`(V^* - V)/|V^*|`, is reported when the exact optimum
  :math:`V^*` is computable (``exact_limit``).
- :func:`mutual_nearest_neighbours` - pairs that are each other's best partner.
- :func:`many_to_one` - every feature of ``b`` to its best feature of ``a`` above a threshold; groups
  of several ``b`` features on one ``a`` feature expose feature splitting (Bricken et al. 2023).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

from universality.errors import MatchError
from universality.match.result import MatchResult
from universality.match.similarity import TopK

__all__ = ["hungarian", "sparse_assignment", "mutual_nearest_neighbours", "many_to_one", "optimality_gap"]


def _np(S: Any) -> np.ndarray:
    if isinstance(S, Tensor):
        return S.detach().cpu().double().numpy()
    return np.asarray(S, dtype=np.float64)


def hungarian(S: Float[Tensor, "n m"], meta: dict | None = None) -> MatchResult:
    """Exact maximum-similarity one-to-one assignment of a dense ``(n, m)`` similarity."""
    S_nm = _np(S)
    if not np.isfinite(S_nm).all():
        raise MatchError("the similarity matrix contains NaN or Inf", "check both dictionaries for NaN weights")
    rows, cols = linear_sum_assignment(S_nm, maximize=True)
    scores = S_nm[rows, cols]
    return MatchResult(
        np.stack([rows, cols], 1), scores, None, float(scores.sum()),
        {"method": "hungarian", "n_a": S_nm.shape[0], "n_b": S_nm.shape[1], **(meta or {})},
    )


def optimality_gap(value: float, exact_value: float) -> float:
    """Relative gap :math:`(V^* - V) / |V^*|` of a maximisation (0 = optimal)."""
    return float((exact_value - value) / max(abs(exact_value), 1e-12))


def _candidate_graph(topk: TopK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, m = topk.n, topk.m
    kr, kc = topk.row_indices.shape[1], topk.col_indices.shape[1]
    r1 = np.repeat(np.arange(n), kr)
    c1 = topk.row_indices.numpy().reshape(-1)
    v1 = topk.row_values.double().numpy().reshape(-1)
    c2 = np.repeat(np.arange(m), kc)
    r2 = topk.col_indices.numpy().reshape(-1)
    v2 = topk.col_values.double().numpy().reshape(-1)
    r, c, v = np.concatenate([r1, r2]), np.concatenate([c1, c2]), np.concatenate([v1, v2])
    key = r.astype(np.int64) * m + c
    _, first = np.unique(key, return_index=True)
    return r[first], c[first], v[first]


def sparse_assignment(
    topk: TopK,
    complete: Any = None,
    exact: Any = None,
    meta: dict | None = None,
) -> MatchResult:
    """One-to-one matching on the top-k candidate graph (see module docstring).

    Args:
        topk: top-k partners of rows and columns (:func:`universality.match.similarity.topk_partners`).
        complete: ``callable(rows, cols) -> (len(rows), len(cols)) similarity`` used to complete rows the
            graph left unmatched with an exact assignment on the left-over columns; ``None`` leaves them out.
        exact: optional ``(n, m)`` dense similarity; when given, the exact optimum is computed and
            ``meta['optimality_gap']`` reported.
    """
    n, m = topk.n, topk.m
    r, c, v = _candidate_graph(topk)
    transpose = n > m  # the solver needs a full matching of the smaller side: put it in rows
    if transpose:
        r, c, n, m = c, r, m, n
    big = 3.0 * (n + m) + 10.0  # > any augmenting path's real cost, so the matching has maximum cardinality
    cost = np.concatenate([2.0 - v, np.full(n, big)])
    rows = np.concatenate([r, np.arange(n)])
    cols = np.concatenate([c, m + np.arange(n)])
    G = sp.csr_matrix((cost, (rows, cols)), shape=(n, m + n))
    _, match_c = min_weight_full_bipartite_matching(G)
    matched = match_c < m
    pr, pc = np.nonzero(matched)[0], match_c[matched]
    keys = r.astype(np.int64) * m + c
    order = np.argsort(keys)
    ps = v[order[np.searchsorted(keys, pr.astype(np.int64) * m + pc, sorter=order)]]
    n_graph = len(pr)
    left_r = np.nonzero(~matched)[0]
    if transpose:
        pr, pc = pc, pr
        n, m = m, n
    completed = 0
    if complete is not None and len(left_r):
        used_a, used_b = np.zeros(n, bool), np.zeros(m, bool)
        used_a[pr], used_b[pc] = True, True
        ra, cb = np.nonzero(~used_a)[0], np.nonzero(~used_b)[0]
        if len(ra) and len(cb):
            sub = _np(complete(torch.as_tensor(ra), torch.as_tensor(cb)))
            i, j = linear_sum_assignment(sub, maximize=True)
            pr, pc = np.concatenate([pr, ra[i]]), np.concatenate([pc, cb[j]])
            ps = np.concatenate([ps, sub[i, j]])
            completed = len(i)
    order = np.argsort(pr, kind="stable")
    pr, pc, ps = pr[order], pc[order], ps[order]
    info = {
        "method": "sparse", "n_a": n, "n_b": m, "k": int(topk.row_indices.shape[1]),
        "n_candidate_edges": int(len(v)), "n_from_graph": int(n_graph), "n_completed": int(completed),
        **(meta or {}),
    }
    value = float(ps.sum())
    if exact is not None:
        ex = hungarian(exact)
        info["exact_value"] = ex.value
        info["optimality_gap"] = optimality_gap(value, ex.value)
    return MatchResult(np.stack([pr, pc], 1), ps, None, value, info)


def mutual_nearest_neighbours(topk: TopK, threshold: float = -np.inf, meta: dict | None = None) -> MatchResult:
    """Pairs ``(i, j)`` with ``j = argmax_j S_ij`` and ``i = argmax_i S_ij`` (and ``S_ij > threshold``)."""
    best_j = topk.row_indices[:, 0].numpy()
    best_i = topk.col_indices[:, 0].numpy()
    i = np.arange(topk.n)
    keep = best_i[best_j] == i
    keep &= topk.row_values[:, 0].numpy() > threshold
    pairs = np.stack([i[keep], best_j[keep]], 1)
    scores = topk.row_values[:, 0].double().numpy()[keep]
    return MatchResult(pairs, scores, None, float(scores.sum()),
                       {"method": "mnn", "n_a": topk.n, "n_b": topk.m, "threshold": float(threshold), **(meta or {})})


def many_to_one(topk: TopK, threshold: float = 0.5, meta: dict | None = None) -> MatchResult:
    """Each feature ``j`` of ``b`` to its best feature ``i`` of ``a`` when ``S_ij > threshold``.

    ``meta['groups']`` maps every ``a`` feature with two or more ``b`` partners (a split of ``i`` in ``b``)
    to the list of those partners; ``meta['n_split']`` counts them.
    """
    best_i = topk.col_indices[:, 0].numpy()
    best_v = topk.col_values[:, 0].double().numpy()
    j = np.arange(topk.m)
    keep = best_v > threshold
    pairs = np.stack([best_i[keep], j[keep]], 1)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs, scores = pairs[order], best_v[keep][order]
    groups: dict[int, list[int]] = {}
    for a_i, b_j in pairs:
        groups.setdefault(int(a_i), []).append(int(b_j))
    splits = {a_i: js for a_i, js in groups.items() if len(js) > 1}
    return MatchResult(pairs, scores, None, float(scores.sum()),
                       {"method": "many_to_one", "n_a": topk.n, "n_b": topk.m, "threshold": float(threshold),
                        "groups": splits, "n_split": len(splits), **(meta or {})})
