"""Optimal-transport matchers (POT) for dictionaries of different sizes or in different spaces.

Both dictionaries carry uniform mass, :math:`a = \\mathbf 1_n / n`, :math:`b = \\mathbf 1_m / m`, and the
ground cost is :math:`C = 1 - S` for a similarity ``S`` (cosine or Pearson) in ``[-1, 1]``.

- ``emd``: exact OT, :math:`\\min_{P \\in U(a,b)} \\langle P, C\\rangle` (``ot.emd``).
- ``sinkhorn``: entropic OT, :math:`\\min_P \\langle P, C\\rangle - \\varepsilon H(P)` (``ot.sinkhorn`` with
  ``method='sinkhorn_log'``, stable for small :math:`\\varepsilon`), rounded to pairs.
- ``unbalanced``: :math:`\\min_P \\langle P, C\\rangle - \\varepsilon H(P) + \\tau(\\mathrm{KL}(P\\mathbf 1\\|a)
  + \\mathrm{KL}(P^\\top\\mathbf 1\\|b))` (``ot.unbalanced.sinkhorn_unbalanced``, Chizat et al. 2018).
  The transported mass :math:`\\sum P` grows with :math:`\\tau` (``reg_m``); it is **not** a shared fraction
  until calibrated against the seed skyline and the independent null (:func:`calibrated_mass`).
- ``partial``: exactly mass ``s`` moved, :math:`\\min_{P \\ge 0, P\\mathbf 1 \\le a, P^\\top\\mathbf 1\\le b,
  \\sum P = s} \\langle P, C\\rangle` (``ot.partial.partial_wasserstein``, Chapel et al. 2020; entropic
  variant ``entropic_partial_wasserstein``); :func:`partial_shared_fraction` reads the largest ``s``
  whose marginal cost stays below a threshold.
- ``gw``/``fgw``: Gromov-Wasserstein (Memoli 2011) between within-dictionary cost matrices
  :math:`C^a_{ii'} = 1 - S^a_{ii'}`, :math:`C^b_{jj'}` - no cross-space similarity is needed, so it compares
  dictionaries of different widths (Transformer vs Mamba, different layers); fused GW (Vayer et al. 2019)
  adds a cross cost with weight :math:`1-\\alpha` (``ot.gromov.gromov_wasserstein``,
  ``fused_gromov_wasserstein``). GW is cubic-ish, so large dictionaries are reduced first
  (:func:`reduce_features`: random subsample or spherical k-means).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ot
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from tqdm.auto import tqdm

from universality.errors import ConfigError, MatchError
from universality.match.result import MatchResult

__all__ = [
    "emd_match",
    "sinkhorn_match",
    "unbalanced_match",
    "partial_match",
    "gw_match",
    "fgw_match",
    "round_plan",
    "reduce_features",
    "mass_curve",
    "calibrated_mass",
    "partial_shared_fraction",
]

_DENSE_ROUND_LIMIT = 4096 * 4096


def _np(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _torch(x: Any, device: Any = None) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().double()
    return torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)


def _uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def round_plan(P: np.ndarray, S: np.ndarray, min_row_mass: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Round a coupling to one-to-one pairs: a maximum-weight assignment on ``P`` (dense when small,
    else each row's argmax), keeping rows that carry more than ``min_row_mass`` of the plan."""
    n, m = P.shape
    if n * m <= _DENSE_ROUND_LIMIT:
        r, c = linear_sum_assignment(P, maximize=True)
    else:
        r, c = np.arange(n), P.argmax(1)
    keep = (P.sum(1)[r] > min_row_mass) & (P[r, c] > 0)
    r, c = r[keep], c[keep]
    return np.stack([r, c], 1), S[r, c]


def _result(P: np.ndarray, S: np.ndarray, value: float, method: str, params: dict, min_row_mass: float = 0.0,
            extra: dict | None = None) -> MatchResult:
    pairs, scores = round_plan(P, S, min_row_mass)
    meta = {"method": method, "n_a": S.shape[0], "n_b": S.shape[1], "params": params,
            "mass": float(P.sum()), **(extra or {})}
    return MatchResult(pairs, scores, P, value, meta)


def emd_match(S: Float[Tensor, "n m"], numItermax: int = 1_000_000) -> MatchResult:
    """Exact OT plan between uniform masses with cost ``1 - S`` (``ot.emd``)."""
    S = _np(S)
    C = 1.0 - S
    P = ot.emd(_uniform(S.shape[0]), _uniform(S.shape[1]), C, numItermax=numItermax)
    return _result(P, S, float((P * C).sum()), "emd", {"numItermax": numItermax})


def sinkhorn_match(S: Float[Tensor, "n m"], reg: float = 0.01, numItermax: int = 2000) -> MatchResult:
    """Entropic OT (log-domain Sinkhorn) with cost ``1 - S``, rounded to pairs."""
    if reg <= 0:
        raise ConfigError(f"reg must be positive, got {reg}", "use e.g. reg=0.01")
    St = _torch(S)
    a, b = _torch(_uniform(St.shape[0]), St.device), _torch(_uniform(St.shape[1]), St.device)
    # POT's torch backend: log-domain iterations run where S lives (GPU when there is one), and on the CPU
    # torch's logsumexp is far faster than the numpy backend's
    P = ot.sinkhorn(a, b, 1.0 - St, reg, method="sinkhorn_log", numItermax=numItermax, stopThr=1e-7)
    S, P = _np(St), _np(P)
    return _result(P, S, float((P * (1.0 - S)).sum()), "sinkhorn", {"reg": reg})


def unbalanced_match(S: Float[Tensor, "n m"], reg: float = 0.02, reg_m: float = 0.1,
                     numItermax: int = 2000) -> MatchResult:
    """Unbalanced entropic OT; ``meta['mass']`` is the transported mass (uncalibrated)."""
    if reg <= 0 or reg_m <= 0:
        raise ConfigError(f"reg and reg_m must be positive, got {reg}, {reg_m}", "use e.g. reg=0.01, reg_m=0.1")
    St = _torch(S)
    a, b = _torch(_uniform(St.shape[0]), St.device), _torch(_uniform(St.shape[1]), St.device)
    P = ot.unbalanced.sinkhorn_unbalanced(a, b, 1.0 - St, reg, reg_m, method="sinkhorn_stabilized",
                                          numItermax=numItermax, stopThr=1e-7)
    S, P = _np(St), _np(P)
    C = 1.0 - S
    if not np.isfinite(P).all() or P.sum() > 1.5:
        raise MatchError(f"unbalanced Sinkhorn diverged at reg={reg}, reg_m={reg_m} (mass {P.sum():.3g})",
                         "use a larger entropic reg (e.g. 0.05) or a smaller reg_m")
    # a row counts as matched when it ships at least half of its own mass
    return _result(P, S, float((P * C).sum()), "unbalanced", {"reg": reg, "reg_m": reg_m}, 0.5 / S.shape[0])


def partial_match(S: Float[Tensor, "n m"], mass: float = 0.5, reg: float | None = None) -> MatchResult:
    """Partial OT moving exactly ``mass`` (in ``(0, 1]``); entropic when ``reg`` is given."""
    if not 0 < mass <= 1:
        raise ConfigError(f"mass must be in (0, 1], got {mass}", "pass the fraction of mass to transport")
    S = _np(S)
    C = 1.0 - S
    a, b = _uniform(S.shape[0]), _uniform(S.shape[1])
    m = min(mass, 1.0 - 1e-9)
    if reg is None:
        P = ot.partial.partial_wasserstein(a, b, C, m=m)
    else:
        P = ot.partial.entropic_partial_wasserstein(a, b, C, reg, m=m)
    return _result(P, S, float((P * C).sum()), "partial", {"mass": mass, "reg": reg}, 0.5 / S.shape[0])


def _check_square(C: np.ndarray, name: str) -> None:
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise MatchError(f"{name} must be a square within-dictionary cost, got {C.shape}", "pass (n, n) and (m, m)")


def gw_match(C_a: Float[Tensor, "n n"], C_b: Float[Tensor, "m m"], S: Float[Tensor, "n m"] | None = None,
             epsilon: float | None = None, max_iter: int = 500) -> MatchResult:
    """Gromov-Wasserstein coupling of two within-dictionary cost matrices (``square_loss``).

    ``S`` (optional, any cross similarity, e.g. ground truth for evaluation) is only used to score pairs;
    without it pairs are scored by the plan's mass times ``n``. ``epsilon`` switches to entropic GW.
    """
    C_a, C_b = _np(C_a), _np(C_b)
    _check_square(C_a, "C_a")
    _check_square(C_b, "C_b")
    p, q = _uniform(len(C_a)), _uniform(len(C_b))
    if epsilon is None:
        P, log = ot.gromov.gromov_wasserstein(C_a, C_b, p, q, "square_loss", log=True, max_iter=max_iter)
    else:
        P, log = ot.gromov.entropic_gromov_wasserstein(C_a, C_b, p, q, "square_loss", epsilon=epsilon, log=True,
                                                        max_iter=max_iter)
    Ssc = _np(S) if S is not None else P * len(C_a)
    return _result(P, Ssc, float(log["gw_dist"]), "gw", {"epsilon": epsilon, "max_iter": max_iter})


def fgw_match(M: Float[Tensor, "n m"], C_a: Float[Tensor, "n n"], C_b: Float[Tensor, "m m"], alpha: float = 0.5,
              max_iter: int = 500) -> MatchResult:
    """Fused GW: ``(1 - alpha)`` times the cross cost ``M`` plus ``alpha`` times the GW structure term."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}", "alpha weighs structure (1) against features (0)")
    M, C_a, C_b = _np(M), _np(C_a), _np(C_b)
    _check_square(C_a, "C_a")
    _check_square(C_b, "C_b")
    p, q = _uniform(len(C_a)), _uniform(len(C_b))
    P, log = ot.gromov.fused_gromov_wasserstein(M, C_a, C_b, p, q, "square_loss", alpha=alpha, log=True,
                                                max_iter=max_iter)
    return _result(P, 1.0 - M, float(log["fgw_dist"]), "fgw", {"alpha": alpha, "max_iter": max_iter})


@torch.no_grad()
def reduce_features(X: Float[Tensor, "n d"], n_max: int, how: str = "kmeans", seed: int = 0,
                    iters: int = 25) -> tuple[Tensor, Tensor]:
    """Reduce ``n`` unit rows to at most ``n_max`` representatives for GW.

    Returns ``(index, labels)``: ``index`` ``(r,)`` are the representative rows (for k-means the member
    nearest each spherical k-means centroid), ``labels`` ``(n,)`` the cluster of each row (subsample:
    -1 for rows not kept).
    """
    n = X.shape[0]
    g = torch.Generator().manual_seed(seed)
    if n <= n_max:
        idx = torch.arange(n)
        return idx, idx.clone()
    if how == "subsample":
        idx = torch.randperm(n, generator=g)[:n_max].sort().values
        labels = torch.full((n,), -1, dtype=torch.long)
        labels[idx] = torch.arange(n_max)
        return idx, labels
    if how != "kmeans":
        raise ConfigError(f"unknown reduction {how!r}", "use 'kmeans' or 'subsample'")
    Xf = X.float()
    cent = Xf[torch.randperm(n, generator=g)[:n_max]].clone()
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        labels = (Xf @ cent.T).argmax(1)
        new = torch.zeros_like(cent).index_add_(0, labels, Xf)
        empty = new.norm(dim=1) < 1e-12
        new[empty] = cent[empty]
        cent = new / new.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = (Xf @ cent.T).gather(1, labels[:, None]).squeeze(1)
    idx = torch.full((n_max,), -1, dtype=torch.long)
    best = torch.full((n_max,), -2.0)
    for i in torch.argsort(sims, descending=True).tolist():  # first seen per cluster = nearest member
        c = int(labels[i])
        if idx[c] < 0:
            idx[c], best[c] = i, sims[i]
    keep = idx >= 0
    remap = torch.full((n_max,), -1, dtype=torch.long)
    remap[keep] = torch.arange(int(keep.sum()))
    return idx[keep], remap[labels]


def mass_curve(S: Float[Tensor, "n m"], reg_m_grid: Any, reg: float = 0.02) -> np.ndarray:
    """Transported mass of unbalanced OT for each ``reg_m`` in the grid."""
    return np.array([unbalanced_match(S, reg, float(t)).meta["mass"] for t in tqdm(reg_m_grid, desc="mass curve",
                                                                                   leave=False)])


def calibrated_mass(S: Any, S_skyline: Any, S_null: Any, reg_m_grid: Any = (0.01, 0.03, 0.1, 0.3, 1.0),
                    reg: float = 0.02) -> dict[str, Any]:
    """Read unbalanced-OT mass as a shared fraction, calibrated against the skyline and the null.

    For each :math:`\\tau` in the grid the masses :math:`m(\\tau)`, :math:`m_\\text{sky}(\\tau)` (two seeds of
    one dictionary: everything shared) and :math:`m_\\text{null}(\\tau)` (independent dictionaries: nothing
    shared) are computed; :math:`\\tau^*` maximises the separation :math:`m_\\text{sky} - m_\\text{null}`, and

    .. math:: \\hat f = \\mathrm{clip}\\big((m(\\tau^*) - m_\\text{null}(\\tau^*)) /
              (m_\\text{sky}(\\tau^*) - m_\\text{null}(\\tau^*)), 0, 1\\big).

    This assumes mass grows linearly with the shared fraction between the two anchors; the calibration
    table in ``docs/calibration.md`` shows how far that holds.
    """
    grid = np.asarray(reg_m_grid, dtype=np.float64)
    m, sky, null = mass_curve(S, grid, reg), mass_curve(S_skyline, grid, reg), mass_curve(S_null, grid, reg)
    k = int(np.argmax(sky - null))
    gap = sky[k] - null[k]
    frac = float(np.clip((m[k] - null[k]) / gap, 0, 1)) if gap > 1e-6 else float("nan")
    return {"shared_fraction": frac, "reg_m": float(grid[k]), "mass": m.tolist(), "mass_skyline": sky.tolist(),
            "mass_null": null.tolist(), "reg_m_grid": grid.tolist(), "reg": reg}


def partial_shared_fraction(S: Float[Tensor, "n m"], threshold: float, grid: int = 20,
                            reg: float | None = None) -> dict[str, Any]:
    """Largest transported mass whose *marginal* cost stays below ``1 - threshold``.

    Partial OT moves the cheapest mass first, so :math:`c(s) = \\min \\langle P, C\\rangle` at mass ``s`` is
    convex with slope equal to the cost of the last mass moved; the shared fraction is
    :math:`\\max\\{s : c'(s) \\le 1 - \\theta\\}`, read on a grid of ``grid`` masses. ``threshold`` should come
    from the null (e.g. the 99th percentile of matched similarity between independent dictionaries).
    """
    masses = np.linspace(1.0 / grid, 1.0, grid)
    costs = np.array([partial_match(S, float(s), reg).value for s in masses])
    slopes = np.diff(np.concatenate([[0.0], costs])) / np.diff(np.concatenate([[0.0], masses]))
    bad = np.nonzero(slopes > 1.0 - threshold)[0]
    first_bad = int(bad[0]) if len(bad) else len(masses)
    frac = float(masses[first_bad - 1]) if first_bad > 0 else 0.0
    return {"shared_fraction": frac, "masses": masses.tolist(), "costs": costs.tolist(), "threshold": threshold}
