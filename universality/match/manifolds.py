"""Feature manifolds: groups of latents that form one multi-dimensional feature, and matching groups.

Engels et al. 2024 ("Not all language model features are linear") call a multi-dimensional feature
*reducible* when its distribution is a mixture of lower-dimensional parts that do not co-occur, or
separable into independent parts; a feature that is neither is *irreducible* (their circles of days
and months are the examples). They find candidates by clustering SAE decoder directions and test each
cluster's reconstruction in its top principal plane. This module does the same in three steps:

1. :func:`group_features` - average-linkage agglomerative clustering of the live latents on the affinity
   ``w |cos(d_i, d_j)| + (1 - w) Jaccard(fire_i, fire_j)`` (:func:`affinity`), with a size cap
   (larger clusters are split along their own tree).
2. :func:`irreducibility` - the group's reconstruction ``sum_i z_i d_i`` on the tokens where any member
   fires, projected on its top-2 principal plane and whitened (:func:`project_group`), scored by

   - the *separability index* :func:`separability_index`: Engels' ``S = min over rotations of I(a; b)``,
     here normalised, ``I(a; b) / min(H(a), H(b))`` with histogram estimates over a grid of angles
     (high: no rotation makes the two coordinates independent);
   - the *mixture index* :func:`mixture_index`: the largest fraction of points within a small angle of a
     union of two lines through the origin - Engels' ``M_epsilon`` (one hyperplane)
     widened to "a mixture of two 1-D parts" (high: reducible).

   ``score = min(separability, 1 - mixture)``: irreducible means neither separable nor a mixture. A
   circle scores high on both; two independent 1-D features (co-occurring or not) score low.
3. :func:`match_groups` - similarity of every group of A with every group of B, Hungarian assignment,
   and a floor per matched pair from random groups of the same size drawn from B's live latents.
   Similarities: :func:`subspace_similarity` (same basis: mean cosine of the principal angles between
   the spans of the groups' decoder rows, over the larger span's dimension; Bjorck & Golub 1973, via
   ``scipy.linalg.subspace_angles``) and
   :func:`code_similarity` (any bases: mean canonical correlation (Hotelling 1936) between the groups'
   codes on shared tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.linalg import subspace_angles
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform
from torch import Tensor

from universality.errors import ConfigError, DataError

__all__ = [
    "GroupingConfig",
    "IrreducibilityConfig",
    "Irreducibility",
    "GroupProjection",
    "GroupMatch",
    "affinity",
    "live_latents",
    "group_features",
    "project_group",
    "separability_index",
    "mixture_index",
    "irreducibility",
    "span",
    "subspace_similarity",
    "code_similarity",
    "code_similarity_fn",
    "code_basis",
    "random_group_floor",
    "match_groups",
]

Group = tuple[int, ...]


@dataclass(frozen=True)
class GroupingConfig:
    """``decoder_weight`` ``w`` of ``|cos|`` against co-activation (Jaccard of firing sets); clusters merge
    while their average affinity is at least ``min_affinity``; at most ``max_size`` latents per group; a
    latent is live when it fires on at least ``min_count`` tokens."""

    decoder_weight: float = 0.8
    min_affinity: float = 0.25
    max_size: int = 16
    min_count: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.decoder_weight <= 1.0:
            raise ConfigError(f"decoder_weight must be in [0, 1], got {self.decoder_weight}", "use e.g. 0.8")
        if not 0.0 < self.min_affinity < 1.0:
            raise ConfigError(f"min_affinity must be in (0, 1), got {self.min_affinity}", "use e.g. 0.25")
        if self.max_size < 2 or self.min_count < 1:
            raise ConfigError("max_size must be >= 2 and min_count >= 1", "use e.g. max_size=16, min_count=10")


@dataclass(frozen=True)
class IrreducibilityConfig:
    """Grid of ``n_angles`` rotations, ``n_bins`` histogram bins per coordinate, line width ``epsilon``
    (relative to the rms radius), and the fewest points (tokens where the group fires) to score."""

    n_angles: int = 90
    n_bins: int = 12
    epsilon: float = 0.1
    min_points: int = 50

    def __post_init__(self) -> None:
        if self.n_angles < 4 or self.n_bins < 2 or self.min_points < 10:
            raise ConfigError("IrreducibilityConfig needs n_angles >= 4, n_bins >= 2, min_points >= 10",
                              "use the defaults (90, 12, 50)")
        if not 0.0 < self.epsilon < 1.0:
            raise ConfigError(f"epsilon must be in (0, 1), got {self.epsilon}", "use e.g. 0.1")


@dataclass(frozen=True)
class Irreducibility:
    """Separability (high: not separable), mixture (high: a mixture, reducible), their combination
    ``score = min(separability, 1 - mixture)``, the number of points and the variance share of the plane."""

    separability: float
    mixture: float
    score: float
    n_points: int
    explained: float


@dataclass(frozen=True)
class GroupProjection:
    """The group's reconstructions in its whitened top-2 plane; ``owner`` is the member (position in the
    group) with the largest code on each token; ``explained`` the share of variance the plane holds."""

    points: Float[np.ndarray, "N 2"]
    owner: np.ndarray
    latents: Group
    explained: float

    def frame(self) -> pd.DataFrame:
        """Tidy table ``x, y, latent`` (latent = the dictionary index of the largest member)."""
        return pd.DataFrame({"x": self.points[:, 0], "y": self.points[:, 1],
                             "latent": np.asarray(self.latents)[self.owner]})


def _check_pair(W_dec: Tensor, codes: Tensor) -> None:
    if W_dec.ndim != 2 or codes.ndim != 2 or codes.shape[1] != W_dec.shape[0]:
        raise DataError(f"codes {tuple(codes.shape)} and W_dec {tuple(W_dec.shape)} do not fit",
                        "pass codes (T, n) and W_dec (n, d) of one dictionary")
    if not (torch.isfinite(W_dec).all() and torch.isfinite(codes).all()):
        raise DataError("W_dec or codes hold NaN/Inf", "check the dictionary and the activations")


def live_latents(codes: Float[Tensor, "T n"], min_count: int = 10) -> list[int]:
    """Latents that fire (code > 0) on at least ``min_count`` tokens."""
    return torch.nonzero((codes > 0).sum(0) >= min_count).flatten().tolist()


def affinity(W_dec: Float[Tensor, "n d"], codes: Float[Tensor, "T n"],
             decoder_weight: float = 0.8) -> Float[Tensor, "n n"]:
    """``w |cos(d_i, d_j)| + (1 - w) J_ij`` with ``J`` the Jaccard overlap of the firing sets; diagonal 1."""
    _check_pair(W_dec, codes)
    U = torch.nn.functional.normalize(W_dec.detach().double(), dim=1)
    fire = (codes.detach() > 0).double()
    both = fire.T @ fire
    cnt = fire.sum(0)
    jac = both / (cnt[:, None] + cnt[None, :] - both).clamp_min(1.0)
    A = decoder_weight * (U @ U.T).abs() + (1 - decoder_weight) * jac
    A.fill_diagonal_(1.0)
    return A.clamp(0.0, 1.0)


def _cluster(A: np.ndarray, threshold: float | None, n_clusters: int | None) -> np.ndarray:
    D = squareform(1.0 - A, checks=False)
    Z = linkage(D, method="average")
    if n_clusters is not None:
        return fcluster(Z, n_clusters, criterion="maxclust")
    return fcluster(Z, 1.0 - threshold, criterion="distance")


def group_features(W_dec: Float[Tensor, "n d"], codes: Float[Tensor, "T n"],
                   cfg: GroupingConfig = GroupingConfig()) -> list[Group]:
    """Groups (two or more live latents, sorted indices) of one dictionary, largest first.

    Deterministic: the affinity and scipy's average linkage have no randomness."""
    _check_pair(W_dec, codes)
    live = live_latents(codes, cfg.min_count)
    if len(live) < 2:
        raise DataError(f"only {len(live)} latent(s) fire on >= {cfg.min_count} tokens",
                        "pass more tokens or lower GroupingConfig.min_count")
    A = affinity(W_dec[live], codes[:, live], cfg.decoder_weight).numpy()
    labels = _cluster(A, cfg.min_affinity, None)
    pending = [np.flatnonzero(labels == lab) for lab in np.unique(labels)]
    out: list[Group] = []
    while pending:
        idx = pending.pop()
        if len(idx) > cfg.max_size:  # split along the cluster's own tree until it fits
            sub = _cluster(A[np.ix_(idx, idx)], None, 2)
            pending.extend(idx[sub == lab] for lab in np.unique(sub))
        elif len(idx) >= 2:
            out.append(tuple(sorted(live[i] for i in idx)))
    return sorted(out, key=lambda g: (-len(g), g))


def project_group(W_dec: Float[Tensor, "n d"], codes: Float[Tensor, "T n"], group: Sequence[int]) -> GroupProjection:
    """Reconstructions ``sum_i z_i d_i`` of ``group`` on the tokens where a member fires, in the group's
    top-2 principal plane (principal axes of the centred points), whitened without centring: the origin
    (no member active) stays at 0, and independent parts become independent after a rotation (as in ICA)."""
    _check_pair(W_dec, codes)
    g = list(group)
    if len(g) < 1 or len(set(g)) != len(g) or min(g) < 0 or max(g) >= W_dec.shape[0]:
        raise ConfigError(f"group {tuple(g)} is not a set of latent indices below {W_dec.shape[0]}",
                          "pass distinct indices of the dictionary's latents")
    z = codes[:, g].detach().double()
    on = (z > 0).any(1)
    R = (z[on] @ W_dec.detach().double()[g]).numpy()
    if len(R) < 3:
        raise DataError(f"group {tuple(g)} fires on {len(R)} token(s)", "pass more tokens")
    C = R - R.mean(0)
    evals, vecs = np.linalg.eigh(C.T @ C)  # principal axes from the d x d scatter matrix (cheaper than an SVD of C)
    order = np.argsort(evals)[::-1]
    lam = np.clip(evals[order], 0.0, None)
    explained = float(lam[:2].sum() / max(lam.sum(), 1e-300))
    P = R @ vecs[:, order[:2]]
    if P.shape[1] < 2:
        P = np.column_stack([P, np.zeros(len(P))])
    evals, evecs = np.linalg.eigh(np.cov(P.T) + 1e-12 * np.eye(2))
    P = P @ evecs @ np.diag(evals.clip(1e-12) ** -0.5) @ evecs.T
    return GroupProjection(P, z[on].argmax(1).numpy(), tuple(g), explained)


def _as_points(points: np.ndarray | Tensor) -> np.ndarray:
    P = np.asarray(points.detach().cpu() if isinstance(points, Tensor) else points, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 2 or len(P) < 10:
        raise DataError(f"points must be (N >= 10, 2), got {P.shape}", "pass a 2-D projection of a group")
    if not np.isfinite(P).all():
        raise DataError("points hold NaN/Inf", "check the group's codes")
    return P


def _rotations(P: np.ndarray, n_angles: int, half_turn: bool) -> tuple[np.ndarray, np.ndarray]:
    th = np.linspace(0.0, np.pi if half_turn else np.pi / 2, n_angles, endpoint=False)
    a = P @ np.stack([np.cos(th), np.sin(th)])  # (N, n_angles)
    b = P @ np.stack([-np.sin(th), np.cos(th)])
    return a, b


def _binned(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins over the 1st-99th percentile of each column (outliers go to the end bins)."""
    lo, hi = np.percentile(x, 1, axis=0), np.percentile(x, 99, axis=0)
    w = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(((x - lo) / w * n_bins).astype(np.int64), 0, n_bins - 1)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def separability_index(points: Float[np.ndarray, "N 2"], n_angles: int = 90, n_bins: int = 12) -> float:
    """``min over rotations theta of I(a; b) / min(H(a), H(b))`` for the rotated coordinates ``(a, b)``
    (histogram estimates, ``n_angles`` angles in ``[0, pi/2)``: a quarter turn covers every pair of axes
    up to order and sign). 0: some rotation makes the coordinates independent (separable); 1: one
    coordinate determines the other."""
    P = _as_points(points)
    a, b = (_binned(x, n_bins) for x in _rotations(P, n_angles, False))
    best = math.inf
    for t in range(n_angles):
        joint = np.bincount(a[:, t] * n_bins + b[:, t], minlength=n_bins * n_bins).reshape(n_bins, n_bins)
        ha, hb = _entropy(joint.sum(1)), _entropy(joint.sum(0))
        hab = _entropy(joint.ravel())
        norm = min(ha, hb)
        best = min(best, (ha + hb - hab) / norm if norm > 0 else 0.0)
    return float(max(best, 0.0))


def mixture_index(points: Float[np.ndarray, "N 2"], epsilon: float = 0.1, n_angles: int = 90) -> float:
    """The largest fraction of points within angle ``asin(epsilon)`` of a union of two lines through the
    origin (``n_angles`` directions in ``[0, pi)``; a line may be taken twice, i.e. one line). Points
    closer to the origin than ``epsilon`` times the rms radius have no direction and count as near every
    line. High: the points are a mixture of 1-D parts that rarely co-occur (reducible)."""
    P = _as_points(points)
    radius = np.sqrt((P**2).sum(1))
    scale = float(np.sqrt((radius**2).mean()))
    if scale == 0:
        return 1.0
    off = np.abs(_rotations(P, n_angles, True)[1])  # distance to each line, (N, n_angles)
    near = ((off < epsilon * radius[:, None]) | (radius[:, None] < epsilon * scale)).astype(np.float64)
    both = near.T @ near
    cnt = near.sum(0)
    union = cnt[:, None] + cnt[None, :] - both
    return float(union.max() / len(P))


def irreducibility(W_dec: Float[Tensor, "n d"], codes: Float[Tensor, "T n"], group: Sequence[int],
                   cfg: IrreducibilityConfig = IrreducibilityConfig()) -> Irreducibility:
    """Engels-style irreducibility of ``group`` (see the module doc); NaN scores when the group fires on
    fewer than ``cfg.min_points`` tokens."""
    proj = project_group(W_dec, codes, group)
    n = len(proj.points)
    if n < cfg.min_points:
        return Irreducibility(math.nan, math.nan, math.nan, n, proj.explained)
    s = separability_index(proj.points, cfg.n_angles, cfg.n_bins)
    m = mixture_index(proj.points, cfg.epsilon, cfg.n_angles)
    return Irreducibility(s, m, min(s, 1.0 - m), n, proj.explained)


def span(rows: Float[Tensor, "k d"], energy: float = 0.8) -> Float[np.ndarray, "d r"]:
    """Orthonormal basis of the top principal directions of ``rows`` (unit-normalised) that hold at least
    ``energy`` of their squared norm: a group of seven latents on one circle spans 2 dimensions, not 7."""
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise DataError(f"rows must be (k >= 1, d), got {tuple(rows.shape)}", "pass the group's decoder rows")
    if not 0.0 < energy <= 1.0:
        raise ConfigError(f"energy must be in (0, 1], got {energy}", "use e.g. 0.8")
    U = torch.nn.functional.normalize(rows.detach().double(), dim=1).numpy()
    _, s, Vt = np.linalg.svd(U, full_matrices=False)
    frac = np.cumsum(s**2) / (s**2).sum()
    r = int(np.searchsorted(frac, energy - 1e-9) + 1)
    return Vt[:r].T


def subspace_similarity(rows_a: Float[Tensor, "k d"], rows_b: Float[Tensor, "m d"], energy: float = 0.8) -> float:
    """Mean cosine of the principal angles between the spans (:func:`span`) of two groups' decoder rows,
    in one basis, over ``max(r_a, r_b)`` angles (the directions one span has beyond the other's
    dimension count as orthogonal, so a 2-D circle is not "inside" every wide random group): 1 for one
    subspace (whatever the rows inside it), 0 for orthogonal subspaces."""
    if rows_a.shape[-1] != rows_b.shape[-1]:
        raise ConfigError(f"decoder rows live in R^{rows_a.shape[-1]} and R^{rows_b.shape[-1]}: no common basis",
                          "compare groups across bases with code_similarity on shared tokens")
    Sa, Sb = span(rows_a, energy), span(rows_b, energy)
    cos = np.cos(subspace_angles(Sa, Sb))
    return float(cos.sum() / max(Sa.shape[1], Sb.shape[1]))


def code_basis(codes: Float[Tensor, "T k"], tol: float = 1e-6) -> Float[np.ndarray, "T r"]:
    """Orthonormal basis of the centred code columns (directions whose singular value is below ``tol``
    of the largest dropped), from the ``k x k`` Gram matrix: ``O(T k^2)``, so a group's basis is cheap
    even on many tokens."""
    X = codes.detach().double().cpu().numpy()
    X = X - X.mean(0)
    evals, V = np.linalg.eigh(X.T @ X)
    sv = np.sqrt(np.clip(evals, 0.0, None))
    if sv.size == 0 or sv.max() == 0:
        return np.zeros((X.shape[0], 0))
    keep = sv > tol * sv.max()
    return (X @ V[:, keep]) / sv[keep]


def _canonical(Qa: np.ndarray, Qb: np.ndarray) -> float:
    if Qa.shape[1] == 0 or Qb.shape[1] == 0:
        return 0.0
    rho = np.linalg.svd(Qa.T @ Qb, compute_uv=False)
    return float(np.clip(rho, 0.0, 1.0).mean())


def code_similarity(codes_a: Float[Tensor, "T k"], codes_b: Float[Tensor, "T m"], tol: float = 1e-6) -> float:
    """Mean canonical correlation between two groups' codes on the same ``T`` tokens (works across bases,
    widths and models): the singular values of ``Q_a^T Q_b`` with ``Q`` orthonormal bases of the centred
    code columns (:func:`code_basis`), averaged over ``min(rank_a, rank_b)``; 0 when either group never
    varies."""
    if codes_a.ndim != 2 or codes_b.ndim != 2 or codes_a.shape[0] != codes_b.shape[0]:
        raise DataError(f"codes {tuple(codes_a.shape)} and {tuple(codes_b.shape)} are not on the same tokens",
                        "encode both dictionaries on the same token set")
    return _canonical(code_basis(codes_a, tol), code_basis(codes_b, tol))


def code_similarity_fn(codes_a: Float[Tensor, "T n_a"], codes_b: Float[Tensor, "T n_b"],
                       tol: float = 1e-6) -> Callable[[Sequence[int], Sequence[int]], float]:
    """``similarity(group_a, group_b)`` = :func:`code_similarity` of the two groups' columns, with each
    group's basis computed once (for :func:`match_groups`, which scores every pair and many random groups)."""
    if codes_a.ndim != 2 or codes_b.ndim != 2 or codes_a.shape[0] != codes_b.shape[0]:
        raise DataError(f"codes {tuple(codes_a.shape)} and {tuple(codes_b.shape)} are not on the same tokens",
                        "encode both dictionaries on the same token set")
    cache: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def basis(side: int, g: Sequence[int]) -> np.ndarray:
        key = (side, tuple(g))
        if key not in cache:
            cache[key] = code_basis((codes_a, codes_b)[side][:, list(g)], tol)
        return cache[key]

    return lambda g, h: _canonical(basis(0, g), basis(1, h))


Similarity = Callable[[Group, Group], float]


def random_group_floor(similarity: Similarity, group_a: Group, pool_b: Sequence[int], size: int,
                       n_draws: int = 50, seed: int = 0) -> tuple[float, float]:
    """Mean and 95th percentile of ``similarity(group_a, random group)`` over ``n_draws`` random groups of
    ``size`` latents drawn without replacement from ``pool_b`` (the other dictionary's live latents)."""
    if size < 1 or size > len(pool_b) or n_draws < 1:
        raise ConfigError(f"cannot draw {n_draws} random groups of {size} from {len(pool_b)} live latents",
                          "lower the group size or pass more live latents")
    rng = np.random.default_rng(seed)
    vals = np.array([similarity(group_a, tuple(sorted(rng.choice(pool_b, size, replace=False).tolist())))
                     for _ in range(n_draws)])
    return float(vals.mean()), float(np.percentile(vals, 95))


@dataclass(frozen=True)
class GroupMatch:
    """Hungarian matching of groups: ``matrix`` ``(len(groups_a), len(groups_b))`` of similarities,
    ``pairs`` the assigned ``(i, j)`` indices into the group lists, with per-pair similarity and floor."""

    groups_a: list[Group]
    groups_b: list[Group]
    matrix: Float[np.ndarray, "ga gb"]
    pairs: list[tuple[int, int]]
    similarity: list[float]
    floor_mean: list[float]
    floor_p95: list[float]

    def table(self) -> pd.DataFrame:
        """One row per matched pair: groups, sizes, similarity, floor mean and 95th percentile, excess."""
        rows = [{"group_a": self.groups_a[i], "group_b": self.groups_b[j], "size_a": len(self.groups_a[i]),
                 "size_b": len(self.groups_b[j]), "similarity": s, "floor_mean": fm, "floor_p95": fp,
                 "above_floor": s > fp}
                for (i, j), s, fm, fp in zip(self.pairs, self.similarity, self.floor_mean, self.floor_p95)]
        return pd.DataFrame(rows)


def match_groups(groups_a: Sequence[Group], groups_b: Sequence[Group], similarity: Similarity,
                 pool_b: Sequence[int], n_draws: int = 50, seed: int = 0) -> GroupMatch:
    """Match the groups of A to those of B one-to-one (``scipy.optimize.linear_sum_assignment``, maximal
    total ``similarity(group_a, group_b)``); each pair's floor comes from ``n_draws`` random groups of
    ``len(group_b)`` latents drawn from ``pool_b`` (:func:`random_group_floor`).

    ``similarity`` is e.g. ``lambda g, h: subspace_similarity(W_a[list(g)], W_b[list(h)])`` (one basis) or
    ``lambda g, h: code_similarity(Z_a[:, list(g)], Z_b[:, list(h)])`` (codes on shared tokens)."""
    if not groups_a or not groups_b:
        raise DataError(f"nothing to match: {len(groups_a)} group(s) in A, {len(groups_b)} in B",
                        "group both dictionaries first (group_features) and check that each has a group")
    ga, gb = [tuple(g) for g in groups_a], [tuple(g) for g in groups_b]
    S = np.array([[similarity(g, h) for h in gb] for g in ga], dtype=np.float64)
    if not np.isfinite(S).all():
        raise DataError("a group similarity is NaN/Inf", "check the groups' decoder rows and codes")
    rows, cols = linear_sum_assignment(S, maximize=True)
    pairs = [(int(i), int(j)) for i, j in zip(rows, cols)]
    floors = [random_group_floor(similarity, ga[i], pool_b, len(gb[j]), n_draws, seed + 7_919 * k)
              for k, (i, j) in enumerate(pairs)]
    return GroupMatch(ga, gb, S, pairs, [float(S[i, j]) for i, j in pairs],
                      [f[0] for f in floors], [f[1] for f in floors])
