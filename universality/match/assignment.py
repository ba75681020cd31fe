"""One-to-one, mutual and many-to-one assignments of features from a similarity.

- :func:`hungarian` - exact maximum-weight assignment (scipy's ``linear_sum_assignment``, a
  Jonker-Volgenant solver; rectangular allowed: ``min(n, m)`` pairs), maximising :math:`\\sum S_{i\\pi(i)}`.
- :func:`sparse_assignment` - the scalable route: the union of row and column top-k partners forms a
  sparse candidate graph solved exactly by ``scipy.sparse.csgraph.min_weight_full_bipartite_matching``
  (LAPJVsp) with cost :math:`2 - S`; when the graph cannot saturate the rows, every row also gets a
  private "unmatched" edge of prohibitive cost so a full matching exists; rows left unmatched are
  completed by an exact assignment against the left-over columns. Every answer carries a *certified*
  bound on its optimality gap, ``meta['gap_bound']`` :math:`\\ge (V^* - V)/|V^*|`, from LP duality
  without the dense optimum: dual prices of the graph matching (:func:`column_prices`) made feasible for
  the full similarity by a streamed row maximum (:func:`dual_upper_bound` is the dense form). While the
  bound exceeds ``gap_tol`` the graph grows by the violated edges the certificate finds (pricing), then
  the dense exact solver takes over. The true gap :math:`(V^* - V)/|V^*|` is also reported when
  :math:`V^*` is computable (``exact``).
- :func:`mutual_nearest_neighbours` - pairs that are each other's best partner.
- :func:`many_to_one` - every feature of ``b`` to its best feature of ``a`` above a threshold; groups
  of several ``b`` features on one ``a`` feature expose feature splitting (Bricken et al. 2023).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

from universality.errors import ConfigError, MatchError
from universality.match.result import MatchResult
from universality.match.similarity import TopK, default_block

__all__ = [
    "hungarian",
    "sparse_assignment",
    "mutual_nearest_neighbours",
    "many_to_one",
    "optimality_gap",
    "gap_bound",
    "dual_upper_bound",
    "column_prices",
    "GAP_TOL",
    "MAX_ROUNDS",
    "DENSE_FALLBACK_BYTES",
]


def _np(S: Any) -> np.ndarray:
    if isinstance(S, Tensor):
        return S.detach().cpu().double().numpy()
    return np.asarray(S, dtype=np.float64)


def hungarian(S: Float[Tensor, "n m"], meta: dict | None = None) -> MatchResult:
    """Exact maximum-similarity one-to-one assignment of a dense ``(n, m)`` similarity.

    ``meta['gap_bound']`` is 0 and ``meta['upper_bound']`` the optimum (the solver is exact)."""
    S_nm = _np(S)
    if not np.isfinite(S_nm).all():
        raise MatchError("the similarity matrix contains NaN or Inf", "check both dictionaries for NaN weights")
    rows, cols = linear_sum_assignment(S_nm, maximize=True)
    scores = S_nm[rows, cols]
    return MatchResult(
        np.stack([rows, cols], 1), scores, None, float(scores.sum()),
        {"method": "hungarian", "n_a": S_nm.shape[0], "n_b": S_nm.shape[1], "gap_bound": 0.0,
         "upper_bound": float(scores.sum()), "solver": "dense", **(meta or {})},
    )


GAP_TOL = 1e-3
"""Default tolerance of :func:`sparse_assignment` on the certified relative gap ``meta['gap_bound']``."""
MAX_ROUNDS = 8
"""Pricing rounds of :func:`sparse_assignment` before it falls back to the dense exact solver."""
DENSE_FALLBACK_BYTES = 2 << 30
"""The dense fallback runs only when the ``(n, m)`` float64 similarity fits this many bytes (2 GiB)."""
_VIOLATION = 1e-6  # reduced costs above this are "violated" (float32 similarities agree to ~1e-7)


def optimality_gap(value: float, exact_value: float) -> float:
    """Relative gap :math:`(V^* - V) / |V^*|` of a maximisation (0 = optimal)."""
    return float((exact_value - value) / max(abs(exact_value), 1e-12))


def gap_bound(value: float, upper_bound: float) -> float:
    """Certified relative gap :math:`\\max(0, (U - V) / |U|)` of a value ``V`` under an upper bound ``U``."""
    return float(max(0.0, (upper_bound - value) / max(abs(upper_bound), 1e-12)))


def dual_upper_bound(S: Float[Tensor, "n m"], v: Float[np.ndarray, " m"]) -> float:
    """LP-duality upper bound on the maximum-weight assignment of a dense ``S`` from column prices ``v``.

    The assignment LP :math:`\\max \\sum S_{ij} x_{ij}` s.t. every row of the smaller side matched once and
    every column at most once has the dual :math:`\\min \\sum_i u_i + \\sum_j v_j` s.t.
    :math:`u_i + v_j \\ge S_{ij}`, :math:`v \\ge 0`; for any ``v`` the best ``u`` is
    :math:`u_i = \\max_j (S_{ij} - v_j)`, so :math:`\\sum_i \\max_j (S_{ij} - v_j) + \\sum_j v_j \\ge V^*`
    (weak duality). ``S`` with more rows than columns is transposed (``v`` then prices its rows).
    """
    S_nm = _np(S)
    if S_nm.shape[0] > S_nm.shape[1]:
        S_nm = S_nm.T
    v = np.maximum(np.asarray(v, dtype=np.float64), 0.0)
    if v.shape != (S_nm.shape[1],):
        raise MatchError(f"v has shape {v.shape}, expected ({S_nm.shape[1]},)",
                         "pass one price per column of the larger side")
    return float((S_nm - v[None, :]).max(1).sum() + v.sum())


def column_prices(
    rows: Int[np.ndarray, " e"],
    cols: Int[np.ndarray, " e"],
    vals: Float[np.ndarray, " e"],
    match_col: Int[np.ndarray, " n"],
    m: int,
    max_iter: int | None = None,
) -> tuple[Float[np.ndarray, " m"], int, bool]:
    """Optimal dual column prices of a matching on a sparse bipartite graph (rows <= columns).

    For a matching ``match_col`` (column of each row, ``-1``: unmatched) that is optimal on the graph,
    complementary slackness gives :math:`u_i = S_{i\\mu(i)} - v_{\\mu(i)}` and
    :math:`u_i + v_j \\ge S_{ij}`, i.e. the difference constraints
    :math:`v_j \\ge v_{\\mu(i)} + S_{ij} - S_{i\\mu(i)}` on every edge, and :math:`v \\ge 0`. The least solution
    is the longest-path length from a source joined to every column by a 0 edge (alternating paths of
    the matching), computed by a vectorised Bellman-Ford (Bellman 1958; the shortest-augmenting-path view
    of Jonker & Volgenant 1987, where these are the LAPJV column potentials). An optimal matching has no
    positive alternating cycle, so it converges, unmatched columns keep price 0 and
    :math:`\\sum u + \\sum v` equals the matching's value. Returns ``(v, iterations, converged)``; if the
    matching is not optimal the iteration stops after ``max_iter`` (default ``n + 1``) sweeps and ``v`` is
    still usable (any ``v >= 0`` gives a valid bound, see :func:`dual_upper_bound`).
    """
    n = len(match_col)
    max_iter = n + 1 if max_iter is None else max_iter
    mc = match_col[rows]
    own = np.full(n, np.nan)  # S of each row's matched edge
    hit = mc == cols
    own[rows[hit]] = vals[hit]
    keep = (mc >= 0) & ~hit & ~np.isnan(own[rows])
    src, dst, w = mc[keep], cols[keep], vals[keep] - own[rows[keep]]
    order = np.argsort(dst, kind="stable")
    src, dst, w = src[order], dst[order], w[order]
    v = np.zeros(m)
    if len(dst) == 0:
        return v, 0, True
    starts = np.flatnonzero(np.r_[True, dst[1:] != dst[:-1]])
    targets = dst[starts]
    for it in range(1, max_iter + 1):
        best = np.maximum.reduceat(v[src] + w, starts)
        new = np.maximum(v[targets], best)
        step = float((new - v[targets]).max())
        v[targets] = new
        if step <= 1e-12:
            return v, it, True
    return v, max_iter, False


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


def _nonedge_bound(
    rk: Float[np.ndarray, " n"], ck: Float[np.ndarray, " m"], v: Float[np.ndarray, " m"]
) -> Float[np.ndarray, " n"]:
    """Per row ``i``, :math:`\\max_j (\\min(r_i, c_j) - v_j)`: a bound on :math:`S_{ij} - v_j` over the edges
    missing from a top-k graph (there :math:`S_{ij} \\le r_i`, the row's k-th best, and :math:`\\le c_j`,
    the column's). Columns sorted by ``c``: those with :math:`c_j \\le r_i` give a prefix maximum of
    :math:`c_j - v_j`, the rest :math:`r_i` minus a suffix minimum of ``v``; ``O((n + m) log m)``."""
    order = np.argsort(ck, kind="stable")
    cs, vs = ck[order], v[order]
    pre = np.maximum.accumulate(cs - vs)  # pre[t] = max over the t+1 smallest c
    suf = np.minimum.accumulate(vs[::-1])[::-1]  # suf[t] = min v over positions >= t
    pos = np.searchsorted(cs, rk, side="right")  # columns [0, pos) have c_j <= r_i
    m = len(cs)
    low = np.where(pos > 0, pre[np.maximum(pos - 1, 0)], -np.inf)
    high = np.where(pos < m, rk - suf[np.minimum(pos, m - 1)], -np.inf)
    return np.maximum(low, high)


def _dedup(r: np.ndarray, c: np.ndarray, s: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, first = np.unique(r.astype(np.int64) * m + c, return_index=True)
    return r[first], c[first], s[first]


def _solve_graph(r: np.ndarray, c: np.ndarray, s: np.ndarray, n: int, m: int) -> np.ndarray:
    """Column of each row (``-1``: unmatched) of a maximum-cardinality, then maximum-weight, matching.

    Solved as is when the graph saturates every row (several times faster); otherwise every row gets a
    private "unmatched" edge of prohibitive cost so that a full matching exists."""
    try:
        _, match_c = min_weight_full_bipartite_matching(sp.csr_matrix((2.0 - s, (r, c)), shape=(n, m)))
        return match_c
    except ValueError:  # no matching saturates the rows
        pass
    big = 3.0 * (n + m) + 10.0  # > any augmenting path's real cost, so the matching has maximum cardinality
    cost = np.concatenate([2.0 - s, np.full(n, big)])
    G = sp.csr_matrix((cost, (np.concatenate([r, np.arange(n)]), np.concatenate([c, m + np.arange(n)]))),
                      shape=(n, m + n))
    _, match_c = min_weight_full_bipartite_matching(G)
    return np.where(match_c < m, match_c, -1)


def _edge_values(r: np.ndarray, c: np.ndarray, s: np.ndarray, m: int, qr: np.ndarray, qc: np.ndarray) -> np.ndarray:
    keys = r.astype(np.int64) * m + c
    order = np.argsort(keys)
    return s[order[np.searchsorted(keys, qr.astype(np.int64) * m + qc, sorter=order)]]


def sparse_assignment(
    topk: TopK,
    complete: Any = None,
    exact: Any = None,
    meta: dict | None = None,
    *,
    gap_tol: float | None = GAP_TOL,
    max_rounds: int = MAX_ROUNDS,
    dense_bytes: int = DENSE_FALLBACK_BYTES,
) -> MatchResult:
    """One-to-one matching on the top-k candidate graph with a certified optimality gap (module docstring).

    Works on the smaller side as rows (``n > m`` is transposed). Each round: (1) solve the graph exactly
    (LAPJVsp), complete rows it leaves unmatched on the left-over columns; (2) dual column prices
    :math:`v \\ge 0` of that matching (:func:`column_prices`); (3) row duals
    :math:`u_i = \\max_j (S_{ij} - v_j)` over the *full* similarity, so that
    :math:`U = \\sum u + \\sum v \\ge V^*` by LP duality - rows whose missing edges are provably dominated
    (:math:`S_{ij} \\le \\min(r_i, c_j)`, the k-th best of row and column) are settled from the top-k
    alone, the others are streamed through ``complete`` in row blocks (memory ``O(block x m)``);
    (4) stop when ``meta['gap_bound']`` :math:`= (U - V)/|U|` is at most ``gap_tol``, else add each
    streamed row's violated edges (:math:`S_{ij} - v_j > u_i` on the graph, its best ``k`` by reduced
    cost) to the graph - pricing / column generation (Dantzig & Wolfe 1960; Gilmore & Gomory 1961), i.e.
    raising ``k`` exactly where the certificate fails - and repeat. After ``max_rounds`` rounds a dense
    exact solve replaces the answer when the float64 similarity fits ``dense_bytes``; otherwise the best
    bound reached is reported with ``meta['note']``.

    Args:
        topk: top-k partners of rows and columns (:func:`universality.match.similarity.topk_partners`).
        complete: ``callable(rows, cols) -> (len(rows), len(cols)) similarity`` (index tensors of ``a`` and
            ``b``): completes rows the graph left unmatched and streams rows for the certificate.
            ``None`` (and no ``exact``): no completion, and the bound comes from the top-k values alone.
        exact: optional ``(n, m)`` dense similarity; when given, the exact optimum is computed and
            ``meta['optimality_gap']`` reported (it also serves as ``complete`` when that is ``None``).
        gap_tol: target of the certified relative gap; ``None``: one round, no refinement.
        max_rounds: refinement rounds before the dense fallback.
        dense_bytes: memory budget of the dense fallback (``0``: never).

    ``meta`` adds ``gap_bound``, ``upper_bound``, ``solver`` (``'sparse'`` or ``'dense'`` for the fallback),
    ``rounds``, ``n_streamed_rows`` (rows whose full similarity row was scanned, all rounds) and
    ``dual_iterations`` to the graph statistics.
    """
    if gap_tol is not None and (isinstance(gap_tol, bool) or not isinstance(gap_tol, (int, float))
                                or not gap_tol >= 0):
        raise ConfigError(f"gap_tol must be a number >= 0 or None, got {gap_tol!r}", "use e.g. gap_tol=1e-3")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise ConfigError(f"max_rounds must be an integer >= 1, got {max_rounds!r}", "use e.g. max_rounds=8")
    n0, m0 = topk.n, topk.m
    exact_np = None if exact is None else _np(exact)
    transpose = n0 > m0  # the smaller side is the rows of the LP (every row matched, columns at most once)
    n, m = (m0, n0) if transpose else (n0, m0)

    def block(ri: np.ndarray, ci: np.ndarray) -> np.ndarray:  # similarity of frame rows ri x frame cols ci
        a_i, b_i = (ci, ri) if transpose else (ri, ci)
        if exact_np is not None:
            out = exact_np[np.ix_(a_i, b_i)]
        else:
            out = _np(complete(torch.as_tensor(a_i), torch.as_tensor(b_i)))
        return out.T if transpose else out

    oracle = complete is not None or exact_np is not None
    r, c, s = _candidate_graph(topk)
    kr, kc = int(topk.row_indices.shape[1]), int(topk.col_indices.shape[1])
    r_thr = topk.row_values[:, -1].double().numpy() if kr < m0 else np.full(n0, -np.inf)
    c_thr = topk.col_values[:, -1].double().numpy() if kc < n0 else np.full(m0, -np.inf)
    if transpose:
        r, c, r_thr, c_thr = c, r, c_thr, r_thr
    n_rows_blk = max(16, default_block(m) // 8)  # float64 and three temporaries per block
    k_new = max(kr, kc)
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
    upper, streamed, dual_iters, rounds = np.inf, 0, 0, 0
    stats: dict[str, int] = {}
    while True:
        rounds += 1
        match_c = _solve_graph(r, c, s, n, m)
        n_graph = int((match_c >= 0).sum())
        left_r = np.flatnonzero(match_c < 0)
        completed = 0
        if oracle and len(left_r):
            free_c = np.ones(m, bool)
            free_c[match_c[match_c >= 0]] = False
            cb = np.flatnonzero(free_c)
            sub = block(left_r, cb)
            i, j = linear_sum_assignment(sub, maximize=True)
            match_c[left_r[i]] = cb[j]
            completed = len(i)
            r, c, s = _dedup(np.concatenate([r, left_r[i]]), np.concatenate([c, cb[j]]),
                             np.concatenate([s, sub[i, j]]), m)
        pr = np.flatnonzero(match_c >= 0)
        pc = match_c[pr]
        ps = _edge_values(r, c, s, m, pr, pc)
        value = float(ps.sum())
        if best is None or value > best[0]:
            best = (value, pr, pc, ps)
            stats = {"n_candidate_edges": int(len(s)), "n_from_graph": n_graph, "n_completed": completed}
        v, it, _ = column_prices(r, c, s, match_c, m, max_iter=min(n + 1, 1000))  # any v >= 0 stays valid
        dual_iters += it
        # u over the graph's edges, then the edges it lacks: bounded from the top-k, or scanned
        u = np.full(n, -np.inf)
        np.maximum.at(u, r, s - v[c])
        miss = _nonedge_bound(r_thr, c_thr, v)
        suspects = np.flatnonzero(miss > u + 1e-12) if oracle else np.zeros(0, np.int64)
        u_cert = np.maximum(u, miss)
        new_r, new_c, new_s = [], [], []
        if len(suspects):
            all_c = np.arange(m)
            for b0 in range(0, len(suspects), n_rows_blk):
                rows = suspects[b0 : b0 + n_rows_blk]
                S = block(rows, all_c)
                red = S - v[None, :]
                u_full = red.max(1)
                u_cert[rows] = np.maximum(u[rows], u_full)
                hot = u_full - u[rows] > _VIOLATION  # rows with an edge the graph's duals do not cover
                if not hot.any():
                    continue
                rows, S, viol = rows[hot], S[hot], red[hot] - u[rows[hot], None]
                kk = min(k_new, m)
                top = np.argpartition(-viol, kk - 1, axis=1)[:, :kk] if kk < m else np.tile(all_c, (len(rows), 1))
                ok = np.take_along_axis(viol, top, 1) > _VIOLATION
                rr = np.repeat(rows, kk).reshape(len(rows), kk)
                new_r.append(rr[ok]), new_c.append(top[ok]), new_s.append(np.take_along_axis(S, top, 1)[ok])
            streamed += len(suspects)
        upper = min(upper, float(u_cert.sum() + v.sum()))
        bound = gap_bound(best[0], upper)
        n_new = int(sum(len(x) for x in new_r))
        if gap_tol is None or bound <= gap_tol or n_new == 0 or rounds >= max_rounds:
            break
        r, c, s = _dedup(np.concatenate([r, *new_r]), np.concatenate([c, *new_c]), np.concatenate([s, *new_s]), m)
    value, pr, pc, ps = best
    solver, note = "sparse", None
    ex = None if exact_np is None else hungarian(exact_np)
    if gap_tol is not None and bound > gap_tol:
        if oracle and n * m * 8 <= dense_bytes:
            if ex is not None:  # the exact optimum is already known
                pr, pc, ps = (ex.pairs[:, 1], ex.pairs[:, 0], ex.scores) if transpose else (*ex.pairs.T, ex.scores)
            else:
                S = block(np.arange(n), np.arange(m))
                pr, pc = linear_sum_assignment(S, maximize=True)
                ps = S[pr, pc]
            value, upper, bound, solver = float(ps.sum()), float(ps.sum()), 0.0, "dense"
        else:
            note = (f"certified gap {bound:.2e} above gap_tol={gap_tol:g} after {rounds} rounds and the dense "
                    f"fallback does not fit {dense_bytes} bytes (or no similarity oracle)")
    if transpose:
        pr, pc = pc, pr
    order = np.argsort(pr, kind="stable")
    pr, pc, ps = pr[order], pc[order], ps[order]
    info = {
        "method": "sparse", "n_a": n0, "n_b": m0, "k": kr, **stats,
        "gap_bound": bound, "upper_bound": upper, "gap_tol": gap_tol, "solver": solver, "rounds": rounds,
        "n_streamed_rows": streamed, "dual_iterations": dual_iters,
        **({"note": note} if note else {}), **(meta or {}),
    }
    if ex is not None:
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
