"""Optimal-transport matchers (POT) for dictionaries of different sizes or in different spaces.

The ground cost is :math:`C = 1 - S` for a similarity ``S`` (cosine or Pearson) in ``[-1, 1]``. The masses
(:func:`reference_marginals`) are, by ``reference``:

- ``'uniform'`` (the matchers' default): :math:`a = \\mathbf 1_n / n`, :math:`b = \\mathbf 1_m / m`. Moved mass is
  then capped at :math:`\\min(n, m) / \\max(n, m)` of anything, so it is **not** a fraction of latents when
  ``n != m`` (90% of A's 384 latents shared reads 0.45 against 768 latents of B).
- ``'a'`` (the shared-fraction readings' default): every latent of A carries :math:`1/n` and every latent of
  B a capacity of :math:`1/n` too, so a one-to-one match moves :math:`1/n` per matched pair and the moved mass
  is the fraction of A's latents matched (``fraction_of_a``); ``fraction_of_b = mass * n / m``.
- ``'b'``: the same with B as the reference side.

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

import warnings
from typing import Any

import numpy as np
import ot
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from universality.errors import ConfigError, MatchError
from universality.match.result import MatchResult
from universality.progress import MIN_WORK, progress_bar

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
    "REFERENCES",
    "reference_marginals",
    "uot_marginal_violation",
    "UOT_MARGINAL_TOL",
    "comparable_skyline",
]

REFERENCES = ("uniform", "a", "b")
UOT_MARGINAL_TOL = 1e-3
"""Unbalanced Sinkhorn counts as converged when one more scaling update would move the plan's marginals
by at most this much in total, in units of the reference side's total mass (:func:`uot_marginal_violation`),
i.e. the mass reading is accurate to about 0.001."""

_DENSE_ROUND_LIMIT = 4096 * 4096
PROGRESS_MIN_ENTRIES = MIN_WORK
"""Mass curves over similarity matrices with fewer entries than this show no progress bar."""


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


def reference_marginals(n: int, m: int, reference: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
    """Masses ``(a, b)`` of the ``n`` latents of A and the ``m`` latents of B (see the module docstring).

    ``'uniform'``: ``1/n`` and ``1/m``; ``'a'``: ``1/n`` on both sides (B's latents are capacities of one A
    latent each, so moved mass = fraction of A's latents matched); ``'b'``: ``1/m`` on both sides.
    """
    if reference == "uniform":
        return _uniform(n), _uniform(m)
    if reference == "a":
        return np.full(n, 1.0 / n), np.full(m, 1.0 / n)
    if reference == "b":
        return np.full(n, 1.0 / m), np.full(m, 1.0 / m)
    raise ConfigError(f"unknown reference {reference!r}", f"use one of {REFERENCES}")


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


def uot_marginal_violation(logu: Tensor, logv: Tensor, a: Tensor, b: Tensor, C: Tensor, reg: float,
                           reg_m: float) -> float:
    """How far an unbalanced-Sinkhorn plan is from its fixed point, in units of ``a``'s total mass.

    The plan is :math:`P = \\mathrm{diag}(u) K \\mathrm{diag}(v)`, :math:`K_{ij} = a_i b_j e^{-C_{ij}/\\varepsilon}`
    (POT's entropy is relative to :math:`a \\otimes b`), and at the
    optimum of the KL-relaxed problem :math:`u = (a / Kv)^{\\varphi}`, :math:`v = (b / K^\\top u)^{\\varphi}`
    with :math:`\\varphi = \\tau / (\\tau + \\varepsilon)` (Chizat et al. 2018, *Scaling algorithms for
    unbalanced optimal transport problems*, Prop. 2). One more update of ``u`` (resp. ``v``) changes the row
    (column) marginals by :math:`\\|P\\mathbf 1 - u' \\odot Kv\\|_1`; the larger of the two, divided by
    :math:`\\sum a`, is returned (0 at the fixed point). Computed in the log domain.
    """
    phi = reg_m / (reg_m + reg)
    logK = -C / reg + torch.log(a)[:, None] + torch.log(b)[None, :]
    lkv = torch.logsumexp(logK + logv[None, :], dim=1)
    lktu = torch.logsumexp(logK + logu[:, None], dim=0)
    row, row_new = torch.exp(logu + lkv), torch.exp(phi * (torch.log(a) - lkv) + lkv)
    col, col_new = torch.exp(logv + lktu), torch.exp(phi * (torch.log(b) - lktu) + lktu)
    viol = max(float((row - row_new).abs().sum()), float((col - col_new).abs().sum())) / float(a.sum())
    return viol if np.isfinite(viol) else float("inf")


def _uot_log_domain(C: Tensor, a: Tensor, b: Tensor, reg: float, reg_m: float, numItermax: int,
                    tol: float) -> tuple[Tensor, Tensor, int]:
    """Log-domain unbalanced Sinkhorn (Chizat et al. 2018, Alg. 1 in log form; POT's kernel
    :math:`K_{ij} = a_i b_j e^{-C_{ij}/\\varepsilon}`), stopping when the marginal violation is below ``tol``."""
    phi = reg_m / (reg_m + reg)
    la, lb = torch.log(a), torch.log(b)
    logK = -C / reg + la[:, None] + lb[None, :]
    logu, logv = torch.zeros_like(a), torch.zeros_like(b)
    it = 0
    for it in range(1, numItermax + 1):
        logu = phi * (la - torch.logsumexp(logK + logv[None, :], 1))
        logv = phi * (lb - torch.logsumexp(logK + logu[:, None], 0))
        if it % 10 == 0 and uot_marginal_violation(logu, logv, a, b, C, reg, reg_m) <= tol:
            break
    return logu, logv, it


def _uot_attempt(St: Tensor, a: Tensor, b: Tensor, reg: float, reg_m: float, numItermax: int,
                 stopThr: float, marginal_tol: float, method: str) -> tuple[np.ndarray, dict[str, Any]]:
    C = 1.0 - St
    errs: list[float] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method == "pot_sinkhorn":
            P, log = ot.unbalanced.sinkhorn_unbalanced(a, b, C, reg, reg_m, method="sinkhorn",
                                                       numItermax=numItermax, stopThr=stopThr, log=True)
            logu, logv = log["logu"], log["logv"]
            errs = [float(e) for e in log.get("err", [])]
            n_iter = numItermax if errs and errs[-1] > stopThr else None
        else:
            logu, logv, n_iter = _uot_log_domain(C, a, b, reg, reg_m, numItermax, marginal_tol / 10)
            P = torch.exp(-C / reg + torch.log(a)[:, None] + torch.log(b)[None, :] + logu[:, None] + logv[None, :])
    Pn = _np(P)
    finite = bool(np.isfinite(Pn).all())
    viol = uot_marginal_violation(logu, logv, a, b, C, reg, reg_m) if finite else float("inf")
    diverged = (not finite) or Pn.sum() > 1.5 * max(float(a.sum()), float(b.sum()))
    info = {"method": method, "reg": reg, "numItermax": numItermax, "iterations": n_iter,
            "err": errs[-1] if errs else float("nan"), "marginal_violation": viol,
            "pot_warning": "; ".join(sorted({str(w.message).split(".")[0] for w in caught})) or None,
            "mass": float(Pn.sum()) if finite else float("nan"),
            "converged": (not diverged) and viol <= marginal_tol}
    return Pn, info


def unbalanced_match(S: Float[Tensor, "n m"], reg: float = 0.02, reg_m: float = 0.1,
                     numItermax: int = 2000, *, reference: str = "uniform", retry: bool = True,
                     marginal_tol: float = UOT_MARGINAL_TOL, stopThr: float = 1e-7) -> MatchResult:
    """Unbalanced entropic OT; ``meta['mass']`` is the transported mass (uncalibrated).

    Convergence is checked, never assumed: an attempt converged when the plan is finite and one more
    Sinkhorn update moves its marginals by at most ``marginal_tol`` of the reference mass
    (:func:`uot_marginal_violation`; POT's own error, every 10 iterations, is recorded too). The first attempt
    is POT's scaling Sinkhorn (``method='sinkhorn'``, float64: fast, but it under/overflows for a very small
    ``reg``; POT's ``'sinkhorn_stabilized'`` was used before and can stall in its absorption steps with a small
    error but a plan far from the fixed point - the checks catch both). Otherwise, with ``retry``, the same
    problem is re-solved by log-domain Sinkhorn with
    10x the iterations, then at 2x and 4x ``reg`` (a larger entropic reg converges faster but moves mass
    differently, so ``meta['convergence']['reg']`` says which was used);
    when none converges a :class:`MatchError` is raised. ``meta['convergence']`` lists every attempt.
    """
    if reg <= 0 or reg_m <= 0:
        raise ConfigError(f"reg and reg_m must be positive, got {reg}, {reg_m}", "use e.g. reg=0.01, reg_m=0.1")
    St = _torch(S)
    a_np, b_np = reference_marginals(St.shape[0], St.shape[1], reference)
    a, b = _torch(a_np, St.device), _torch(b_np, St.device)
    plan_sched = [(reg, numItermax, "pot_sinkhorn")]
    if retry:
        plan_sched += [(reg, 10 * numItermax, "log_domain"), (2 * reg, 10 * numItermax, "log_domain"),
                       (4 * reg, 10 * numItermax, "log_domain")]
    attempts = []
    for r, it, how in plan_sched:
        P, info = _uot_attempt(St, a, b, r, reg_m, it, stopThr, marginal_tol, how)
        attempts.append(info)
        if info["converged"]:
            break
    else:
        last = attempts[-1]
        raise MatchError(
            f"unbalanced Sinkhorn did not converge at reg={reg}, reg_m={reg_m} after {len(attempts)} attempt(s) "
            f"(last: reg={last['reg']}, {last['numItermax']} iterations, marginal violation "
            f"{last['marginal_violation']:.3g} > {marginal_tol:g}, mass {last['mass']:.3g})",
            "use a larger entropic reg (e.g. 0.05), a smaller reg_m, or a larger numItermax")
    S_np = _np(St)
    C = 1.0 - S_np
    conv = {"converged": True, "reg": attempts[-1]["reg"], "numItermax": attempts[-1]["numItermax"],
            "method": attempts[-1]["method"],
            "marginal_violation": attempts[-1]["marginal_violation"], "retried": len(attempts) > 1,
            "attempts": attempts}
    # a row counts as matched when it ships at least half of its own mass
    return _result(P, S_np, float((P * C).sum()), "unbalanced",
                   {"reg": reg, "reg_m": reg_m, "reference": reference}, 0.5 * float(a_np[0]),
                   {"convergence": conv})


def partial_match(S: Float[Tensor, "n m"], mass: float = 0.5, reg: float | None = None,
                  reference: str = "uniform") -> MatchResult:
    """Partial OT moving exactly ``mass`` (in ``(0, 1]``); entropic when ``reg`` is given.

    ``reference`` picks the masses (:func:`reference_marginals`); with ``'a'``/``'b'`` the mass cannot
    exceed the smaller side's total, ``min(n, m) / n_ref``, and is clipped there (``meta['mass']`` says
    what moved)."""
    if not 0 < mass <= 1:
        raise ConfigError(f"mass must be in (0, 1], got {mass}", "pass the fraction of mass to transport")
    S = _np(S)
    C = 1.0 - S
    a, b = reference_marginals(S.shape[0], S.shape[1], reference)
    m = min(mass, float(a.sum()) * (1.0 - 1e-9), float(b.sum()) * (1.0 - 1e-9))
    if reg is None:
        P = ot.partial.partial_wasserstein(a, b, C, m=m)
    else:
        P = ot.partial.entropic_partial_wasserstein(a, b, C, reg, m=m)
    return _result(P, S, float((P * C).sum()), "partial", {"mass": mass, "reg": reg, "reference": reference},
                   0.5 * float(a[0]))


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


def mass_curve(S: Float[Tensor, "n m"], reg_m_grid: Any, reg: float = 0.02, reference: str = "uniform",
               retry: bool = True) -> np.ndarray:
    """Transported mass of unbalanced OT for each ``reg_m`` in the grid (each run convergence-checked,
    :func:`unbalanced_match`)."""
    return np.array([m for m, _ in _curve(S, reg_m_grid, reg, reference, retry)])


def _curve(S: Any, grid: Any, reg: float, reference: str, retry: bool) -> list[tuple[float, dict[str, Any]]]:
    out = []
    n, m = S.shape
    # a bar only where a curve takes long enough to watch (small curves run inside compare, many at once)
    for t in progress_bar(grid, "mass curve", leave=False, work=n * m, min_work=PROGRESS_MIN_ENTRIES):
        r = unbalanced_match(S, reg, float(t), reference=reference, retry=retry)
        c = r.meta["convergence"]
        out.append((r.meta["mass"], {"reg_m": float(t), "reg": c["reg"], "numItermax": c["numItermax"],
                                     "marginal_violation": c["marginal_violation"], "retried": c["retried"]}))
    return out


def comparable_skyline(S_skyline: Float[Tensor, "n k"], S_null: Float[Tensor, "n m"],
                       seed: int = 0) -> tuple[Float[Tensor, "n m"], float]:
    """Reshape the seed skyline ``(n, k)`` (A against a second seed of A) to the pair's shape ``(n, m)``.

    The skyline is the anchor "every latent of A has its counterpart", but the pair is ``n x m``: with
    ``m > k`` the pair's B has ``m - k`` more latents competing for A's mass, so the skyline gets ``m - k``
    distractor columns, drawn without replacement (``seed``) from the null similarity ``S_null`` (A against
    B's token-shuffled codes: B-sized latents unrelated to A); with ``m < k`` only ``m`` of the skyline's
    columns (drawn at random) are kept, so at most ``m`` of A's latents can be matched there, as in the pair.
    Returns the ``(n, m)`` anchor and its known ``fraction_of_a`` = ``min(n, k, m) / n``.
    """
    Sk, Sn = _torch(S_skyline), _torch(S_null)
    n, k = Sk.shape
    m = Sn.shape[1]
    if Sn.shape[0] != n:
        raise MatchError(f"skyline has {n} rows but the null has {Sn.shape[0]}: both must be A's latents",
                         "pass the skyline as S(A, A') and the null as S(A, shuffled B), A's latents in rows")
    g = torch.Generator().manual_seed(int(seed))
    if m > k:
        extra = torch.randperm(m, generator=g)[: m - k]
        Sk = torch.cat([Sk, Sn[:, extra]], 1)
    elif m < k:
        Sk = Sk[:, torch.randperm(k, generator=g)[:m].sort().values]
    return Sk, min(n, k, m) / n


def calibrated_mass(S: Any, S_skyline: Any, S_null: Any | list[Any], reg_m_grid: Any = (0.01, 0.03, 0.1, 0.3, 1.0),
                    reg: float = 0.02, *, reference: str = "a", seed: int = 0) -> dict[str, Any]:
    """Read unbalanced-OT mass as a shared fraction of A's latents, calibrated against skyline and null.

    Masses use ``reference='a'`` (:func:`reference_marginals`: every latent of A carries ``1/n`` and every
    latent of B a capacity of ``1/n``), so mass is in units of A's latents whatever B's width. The skyline
    (A against a second seed of A) is first made the pair's shape by :func:`comparable_skyline`; its known
    fraction of A is :math:`f_\\text{sky} = \\min(n, k, m)/n` (1 unless B is narrower than A) and the null
    (independent dictionaries, e.g. token-shuffled B) reads 0; ``S_null`` may be a list of null matrices
    (several shuffles), whose masses are averaged.

    For each :math:`\\tau` in the grid the masses :math:`m(\\tau)`, :math:`m_\\text{sky}(\\tau)` and
    :math:`m_\\text{null}(\\tau)` are computed; :math:`\\tau^*` maximises the separation
    :math:`m_\\text{sky} - m_\\text{null}`, and

    .. math:: \\hat f_A = \\mathrm{clip}\\big(f_\\text{sky} (m(\\tau^*) - m_\\text{null}(\\tau^*)) /
              (m_\\text{sky}(\\tau^*) - m_\\text{null}(\\tau^*)), 0, \\min(1, m/n)\\big),
              \\qquad \\hat f_B = \\hat f_A \\, n / m .

    This assumes mass grows linearly with the shared fraction between the two anchors; the calibration
    table in ``docs/calibration.md`` shows how far that holds. Every Sinkhorn run is convergence-checked
    (:func:`unbalanced_match`); if any needed a larger ``reg``, all three curves are recomputed at the largest
    ``reg`` used so that the anchors stay comparable (``convergence`` in the result lists every run).
    """
    grid = np.asarray(reg_m_grid, dtype=np.float64)
    S_t = _torch(S)
    nulls = [_torch(x) for x in (S_null if isinstance(S_null, (list, tuple)) else [S_null])]
    for S_null_t in nulls:
        if S_null_t.shape != S_t.shape:
            raise MatchError(f"the null is {tuple(S_null_t.shape)} but the pair is {tuple(S_t.shape)}",
                             "build the null from the same two dictionaries (e.g. B's codes with tokens shuffled)")
    S_sky, sky_frac = comparable_skyline(S_skyline, nulls[0], seed)
    mats = {"pair": S_t, "skyline": S_sky, **{f"null{i}": M for i, M in enumerate(nulls)}}
    curves = {name: _curve(M, grid, reg, reference, True) for name, M in mats.items()}
    used = max(info["reg"] for c in curves.values() for _, info in c)
    if used > reg:  # some run only converged at a larger reg: recompute everything there
        curves = {name: _curve(M, grid, used, reference, False) for name, M in mats.items()}
    m, sky = (np.array([v for v, _ in curves[k]]) for k in ("pair", "skyline"))
    null = np.mean([[v for v, _ in curves[f"null{i}"]] for i in range(len(nulls))], axis=0)
    n_a, n_b = S_t.shape
    k = int(np.argmax(sky - null))
    gap = sky[k] - null[k]
    frac = (float(np.clip(sky_frac * (m[k] - null[k]) / gap, 0, min(1.0, n_b / n_a))) if gap > 1e-6
            else float("nan"))
    return {"shared_fraction": frac, "fraction_of_a": frac, "fraction_of_b": frac * n_a / n_b,
            "reg_m": float(grid[k]), "mass": m.tolist(), "mass_skyline": sky.tolist(), "mass_null": null.tolist(),
            "reg_m_grid": grid.tolist(), "reg": reg, "reg_used": used, "reference": reference,
            "skyline_fraction_of_a": sky_frac, "skyline_shape": [int(S_sky.shape[0]), int(S_sky.shape[1])],
            "skyline_shape_given": list(np.shape(S_skyline)),
            "convergence": {name: [info for _, info in c] for name, c in curves.items()}}


def _fraction_keys(mass: float, n: int, m: int, reference: str) -> dict[str, float]:
    if reference == "a":
        return {"fraction_of_a": mass, "fraction_of_b": mass * n / m}
    if reference == "b":
        return {"fraction_of_a": mass * m / n, "fraction_of_b": mass}
    return {"fraction_of_a": float("nan"), "fraction_of_b": float("nan")}  # uniform masses: neither side's


def partial_shared_fraction(S: Float[Tensor, "n m"], threshold: float, grid: int | None = 20,
                            reg: float | None = None, reference: str = "a") -> dict[str, Any]:
    """Largest transported mass whose *marginal* cost stays below ``1 - threshold`` (partial OT, Chapel et
    al. 2020, *Partial optimal transport with applications on positive-unlabeled learning*).

    Partial OT moves the cheapest mass first, so :math:`c(s) = \\min \\langle P, C\\rangle` at mass ``s`` is
    convex with slope equal to the cost of the last mass moved; the shared fraction is
    :math:`\\max\\{s : c'(s) \\le 1 - \\theta\\}`. Masses use ``reference`` (:func:`reference_marginals`;
    default ``'a'``: moved mass = fraction of A's latents matched, whatever B's width - with ``'uniform'``
    masses it tops out at ``min(n, m) / max(n, m)``). ``threshold`` is :math:`\\theta`; pick it with
    :func:`universality.match.fractions.shared_threshold` (fixed 0.5 or a null percentile).

    ``grid`` masses up to ``min(sum a, sum b)`` are read with POT (entropic when ``reg`` is given);
    ``grid=None`` reads it exactly: with equal masses per latent the partial-OT polytope has integral
    vertices (a transportation polytope), so the plan at mass ``k/n`` is a minimum-cost matching of size
    ``k``, :math:`c` is convex in ``k`` and the largest ``k`` with :math:`c(k) - c(k-1) \\le 1 - \\theta` is the
    size of a maximum-weight matching with weights :math:`\\max(S_{ij} - \\theta, 0)` - one
    ``linear_sum_assignment``, counting pairs with :math:`S_{ij} > \\theta`.
    """
    S_np = _np(S)
    n, m_b = S_np.shape
    if grid is None:
        if reg is not None or reference == "uniform":
            raise ConfigError("the exact reading (grid=None) needs reg=None and reference 'a' or 'b'",
                              "pass grid=20 for the entropic or uniform-mass reading")
        W = np.where(S_np > threshold, S_np - threshold, 0.0)
        r, c = linear_sum_assignment(W, maximize=True)
        keep = S_np[r, c] > threshold
        r, c = r[keep], c[keep]
        n_ref = n if reference == "a" else m_b
        frac = len(r) / n_ref
        return {"shared_fraction": frac, **_fraction_keys(frac, n, m_b, reference), "n_matched": int(len(r)),
                "pairs": np.stack([r, c], 1), "masses": [frac], "costs": [float((1.0 - S_np[r, c]).sum() / n_ref)],
                "threshold": threshold, "reference": reference, "exact": True}
    a, b = reference_marginals(n, m_b, reference)
    top = min(float(a.sum()), float(b.sum()))
    masses = np.linspace(top / grid, top, grid)
    costs = np.array([partial_match(S_np, float(s), reg, reference).value for s in masses])
    slopes = np.diff(np.concatenate([[0.0], costs])) / np.diff(np.concatenate([[0.0], masses]))
    bad = np.nonzero(slopes > 1.0 - threshold)[0]
    first_bad = int(bad[0]) if len(bad) else len(masses)
    frac = float(masses[first_bad - 1]) if first_bad > 0 else 0.0
    return {"shared_fraction": frac, **_fraction_keys(frac, n, m_b, reference), "masses": masses.tolist(),
            "costs": costs.tolist(), "threshold": threshold, "reference": reference, "exact": False}
