"""Shared-fraction readings of two dictionaries' codes on the same tokens, per latent and per feature.

"What fraction of A is shared with B?" has several honest answers; this module computes them side by side
and names one headline (:func:`shared_fraction_readings`). Every reading is a count of one-to-one matched
pairs whose Pearson correlation (:func:`universality.match.similarity.dense_similarity`) exceeds one
threshold :math:`\\theta` (:func:`shared_threshold`), divided by the size of one side:

- ``fraction_of_a`` = matched / (units of A), ``fraction_of_b`` = matched / (units of B); both are
  reported because with ``n_a != n_b`` they differ (and a "fraction" with no side named is ambiguous).
- **per latent**: the units are all latents, dead and duplicated ones included (what a latent-level table
  reads; a 2x-wide SAE that recovers every feature reads about half).
- **feature level**: the units are live, de-duplicated latent groups (:func:`feature_groups`): dead latents
  (constant on the tokens) are dropped and latents of one dictionary that fire together are merged, so a
  dictionary wider than its features is not penalised for its width.

Estimators, each at both levels:

- ``activation_hungarian``: maximum-similarity one-to-one assignment (Hungarian, Kuhn 1955) on the
  correlation, pairs with :math:`\\rho > \\theta` (the platform's activation matching; Wang et al. 2024 use
  the same correlation).
- ``partial_ot``: exact partial OT (Chapel et al. 2020) with the reference side's masses
  (:func:`universality.match.transport.partial_shared_fraction` with ``grid=None``): the largest mass whose
  marginal cost stays below :math:`1 - \\theta`, i.e. a maximum-weight matching on :math:`\\max(\\rho - \\theta, 0)`.
  It differs from the Hungarian reading only when the Hungarian trades an above-threshold pair for a larger
  total.
- ``seed_stable_hungarian`` (when a second seed A' of A is given): of A's units matched to A' above
  :math:`\\theta`, the fraction also matched to B - the denominator is what two seeds agree on.
- ``calibrated_unbalanced_ot`` (when a second seed of A is given): unbalanced-OT mass mapped linearly
  between a seed skyline and a token-shuffled null (:func:`calibrated_ot_fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Bool, Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from universality.errors import ConfigError, MatchError
from universality.match import transport as tr
from universality.match.baselines import shuffle_tokens
from universality.match.similarity import check_codes, code_moments, constant_features, dense_similarity
from universality.match.views import FeatureCodes

__all__ = [
    "DUPLICATE_THRESHOLD",
    "THRESHOLD_RULES",
    "HEADLINE",
    "HEADLINE_WITH_SKYLINE",
    "LatentGroups",
    "feature_groups",
    "group_similarity",
    "shared_threshold",
    "matched_count",
    "calibrated_ot_fraction",
    "shared_fraction_readings",
]

DUPLICATE_THRESHOLD = 0.9
"""Two latents of one dictionary are duplicates when their activation correlation exceeds this."""

THRESHOLD_RULES = ("fixed", "null_percentile")

HEADLINE = "feature_level.activation_hungarian"
HEADLINE_WHY = ("one-to-one activation matching counted over live, de-duplicated latents measures the fraction "
                "of A's features that B also learned, independent of dead latents, duplicates and dictionary width; "
                "per-latent readings mix that with the dead and duplicate fractions.")
HEADLINE_WITH_SKYLINE = "feature_level.seed_stable_hungarian"
HEADLINE_WITH_SKYLINE_WHY = ("with a second seed of A, counting only the features of A that the second seed "
                             "reproduces also drops live latents no seed reproduces (mixtures of an overcomplete "
                             "SAE), which the de-duplication cannot merge; in docs/calibration.md it is the "
                             "reading closest to the truth (0.86 for a true 0.90 with 2x-wide SAEs, where the "
                             "plain feature-level reading gives 0.52).")
PAULO_BELROSE_NOTE = ("Paulo & Belrose 2025's shared fraction (summary.shared_fraction: encoder and decoder Hungarian "
                      "assignments agree and both cosines > 0.7) is a stricter notion - same feature with the same "
                      "encoder and decoder - that reads 0.14 for a true 0.40 where decoder-only Hungarian reads 0.38; "
                      "it needs weights in one basis and is kept as their definition, not computed from codes here.")


@dataclass(frozen=True)
class LatentGroups:
    """Live latents of one dictionary grouped into features (:func:`feature_groups`).

    ``group[i]`` is latent ``i``'s feature group (``-1`` for dead latents); ``representatives[g]`` is the
    most frequently firing member of group ``g``.
    """

    group: Int[np.ndarray, " n"]
    representatives: Int[np.ndarray, " g"]
    dead: Bool[np.ndarray, " n"]
    threshold: float

    @property
    def n_latents(self) -> int:
        return int(len(self.group))

    @property
    def n_dead(self) -> int:
        return int(self.dead.sum())

    @property
    def n_features(self) -> int:
        return int(len(self.representatives))

    @property
    def n_duplicates(self) -> int:
        """Live latents that joined another latent's group."""
        return self.n_latents - self.n_dead - self.n_features

    def counts(self) -> dict[str, int]:
        return {"latents": self.n_latents, "dead": self.n_dead, "duplicates": self.n_duplicates,
                "features": self.n_features}


def _self_correlation(codes: FeatureCodes, live: Int[np.ndarray, " k"]) -> Float[np.ndarray, "k k"]:
    """Pearson correlations among the ``live`` latents of one dictionary, from the exact float64 sparse Gram
    matrix: :math:`\\mathrm{cov}_{ij} = G_{ij}/T - \\mu_i \\mu_j`. The subtraction loses about
    :math:`10^{-16} (\\mu/\\sigma)^2` relative accuracy, under :math:`10^{-4}` for every latent that is not
    constant (:data:`universality.match.similarity.CONSTANT_RTOL` = :math:`10^{-6}`), and the sparse product
    is several times faster than the blocked dense route for the ``(n, n)`` matrix this needs."""
    c = codes.codes.cpu()
    M = sp.csr_matrix((c.values().double().numpy(), c.col_indices().numpy(), c.crow_indices().numpy()),
                      shape=tuple(c.shape))[live]
    T = max(codes.n_tokens, 1)
    G = (M @ M.T).toarray() / T
    mean, var = (x.cpu().numpy()[live] for x in code_moments(codes))
    sd = np.sqrt(var)
    R = (G - np.outer(mean, mean)) / np.outer(sd, sd)
    return np.clip(R, -1.0, 1.0)


def feature_groups(codes: FeatureCodes, threshold: float = DUPLICATE_THRESHOLD,
                   self_similarity: Float[Tensor, "n n"] | None = None) -> LatentGroups:
    """Group one dictionary's live latents into features.

    Rule: a latent is *dead* when it is constant on the tokens
    (:func:`universality.match.similarity.constant_features`). Live latents are visited from the most to
    the least frequently firing (ties by index); a latent whose activation correlation with an already
    chosen representative exceeds ``threshold`` is a *duplicate* and joins the group of the representative
    it correlates with most, otherwise it becomes the representative of a new group. So every duplicate has
    correlation above ``threshold`` with a more (or equally) frequently firing latent of the same dictionary,
    groups do not chain, and the count of groups is the number of distinct features the dictionary encodes.
    ``self_similarity`` (the ``(n, n)`` Pearson matrix of ``codes`` with itself) may be passed to skip its
    computation.
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"duplicate threshold must be in (0, 1], got {threshold}", "use e.g. 0.9")
    n = codes.n
    dead = constant_features(codes).numpy().astype(bool)
    live = np.nonzero(~dead)[0]
    group = np.full(n, -1, dtype=np.int64)
    if len(live) == 0:
        return LatentGroups(group, np.zeros(0, dtype=np.int64), dead, threshold)
    if self_similarity is None:
        R = _self_correlation(codes, live)
    else:
        R = np.asarray(self_similarity.double().cpu() if isinstance(self_similarity, Tensor) else self_similarity,
                       dtype=np.float64)[np.ix_(live, live)]
    nnz = codes.nnz.cpu().numpy()[live]
    order = np.lexsort((live, -nnz))  # most frequent first, ties by index
    reps: list[int] = []  # positions in `live`
    rep_group = np.full(len(live), -1, dtype=np.int64)
    for p in order:
        if reps:
            r = R[p, reps]
            best = int(np.argmax(r))
            if r[best] > threshold:
                rep_group[p] = rep_group[reps[best]]
                continue
        rep_group[p] = len(reps)
        reps.append(int(p))
    group[live] = rep_group
    return LatentGroups(group, live[np.asarray(reps, dtype=np.int64)], dead, threshold)


def group_similarity(S: Float[Tensor, "n m"], groups_a: LatentGroups,
                     groups_b: LatentGroups) -> Float[np.ndarray, "ga gb"]:
    """Feature-level similarity: :math:`S_{gh} = \\max_{i \\in g, j \\in h} S_{ij}` over the members of group
    ``g`` of A and ``h`` of B (dead latents belong to no group), so a group is matched when any of its members
    matches a member of the partner group."""
    S_np = S.double().cpu().numpy() if isinstance(S, Tensor) else np.asarray(S, dtype=np.float64)
    if S_np.shape != (groups_a.n_latents, groups_b.n_latents):
        raise MatchError(f"similarity is {S_np.shape} but the groups are for {groups_a.n_latents} x "
                         f"{groups_b.n_latents} latents", "group the same two dictionaries the similarity compares")
    out = np.full((groups_a.n_features, groups_b.n_features), -1.0)
    if out.size == 0:
        return out
    la, lb = np.nonzero(groups_a.group >= 0)[0], np.nonzero(groups_b.group >= 0)[0]
    oa = la[np.argsort(groups_a.group[la], kind="stable")]
    ob = lb[np.argsort(groups_b.group[lb], kind="stable")]
    starts_a = np.searchsorted(groups_a.group[oa], np.arange(groups_a.n_features))
    starts_b = np.searchsorted(groups_b.group[ob], np.arange(groups_b.n_features))
    rows = np.maximum.reduceat(S_np[oa][:, ob], starts_a, axis=0)
    return np.maximum.reduceat(rows, starts_b, axis=1)


def _null_similarities(ca: FeatureCodes, cb: FeatureCodes, n_null: int, seed: int) -> list[Tensor]:
    if n_null < 1:
        raise ConfigError(f"n_null must be >= 1, got {n_null}", "use e.g. n_null=1")
    return [dense_similarity(ca, shuffle_tokens(cb, seed + r), "pearson") for r in range(n_null)]


def matched_count(S: Any, threshold: float, estimator: str = "activation_hungarian") -> int:
    """Number of one-to-one pairs with similarity above ``threshold``: ``'activation_hungarian'`` (Hungarian
    on ``S``, then count) or ``'partial_ot'`` (exact partial OT = maximum-weight matching on
    :math:`\\max(S - \\theta, 0)`, :func:`universality.match.transport.partial_shared_fraction`)."""
    S_np = S.double().cpu().numpy() if isinstance(S, Tensor) else np.asarray(S, dtype=np.float64)
    if S_np.size == 0:
        return 0
    if estimator == "activation_hungarian":
        return int(len(_matched_rows(S_np, threshold)))
    if estimator == "partial_ot":
        return int(tr.partial_shared_fraction(S_np, threshold, grid=None)["n_matched"])
    raise ConfigError(f"unknown estimator {estimator!r}", "use 'activation_hungarian' or 'partial_ot'")


def _matched_rows(S: Any, threshold: float) -> np.ndarray:
    """Rows of a Hungarian assignment on ``S`` whose pair's similarity exceeds ``threshold``."""
    S_np = S.double().cpu().numpy() if isinstance(S, Tensor) else np.asarray(S, dtype=np.float64)
    if S_np.size == 0:
        return np.zeros(0, dtype=np.int64)
    r, c = linear_sum_assignment(S_np, maximize=True)
    return r[S_np[r, c] > threshold]


def _seed_stable(S: Any, S_sky: Any, threshold: float, n_b: int) -> dict[str, Any]:
    stable = _matched_rows(S_sky, threshold)
    shared = np.intersect1d(_matched_rows(S, threshold), stable)
    return {"n_matched": int(len(shared)), "n_seed_stable": int(len(stable)),
            "fraction_of_a": len(shared) / len(stable) if len(stable) else float("nan"),
            "fraction_of_b": len(shared) / n_b if n_b else float("nan")}


def shared_threshold(ca: FeatureCodes, cb: FeatureCodes, rule: str = "fixed", value: float = 0.5,
                     percentile: float = 99.0, n_null: int = 1, seed: int = 0,
                     null_similarities: list[Tensor] | None = None) -> dict[str, Any]:
    """The correlation threshold :math:`\\theta` above which a matched pair counts as shared - one rule for
    every reading (activation Hungarian, partial OT, the calibrated OT plan).

    - ``'fixed'`` (default): :math:`\\theta` = ``value`` (0.5). It answers "same feature": two latents whose
      activations correlate above 0.5 fire mostly together.
    - ``'null_percentile'``: :math:`\\theta` = the ``percentile``-th percentile of the Hungarian-matched
      correlations between A and B's codes with tokens shuffled (``n_null`` shuffles, seeds ``seed, seed+1,
      ...``; :func:`universality.match.baselines.shuffle_tokens`). It answers "more than chance": on many
      tokens chance correlations of sparse codes are small (about 0.05 at 8k tokens), so this counts weakly
      related pairs as shared and reads higher than ``'fixed'``.

    Returns ``{"threshold", "rule", "value", "percentile", "n_null", "null_matched_max"}`` (the null entries
    only for ``'null_percentile'``).
    """
    if rule == "fixed":
        if not -1 <= value <= 1:
            raise ConfigError(f"threshold must be a correlation in [-1, 1], got {value}", "use e.g. 0.5")
        return {"threshold": float(value), "rule": rule, "value": float(value)}
    if rule != "null_percentile":
        raise ConfigError(f"unknown threshold rule {rule!r}", f"use one of {THRESHOLD_RULES}")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}", "use e.g. 99")
    nulls = null_similarities if null_similarities is not None else _null_similarities(ca, cb, n_null, seed)
    scores = []
    for S0 in nulls:
        S_np = S0.double().cpu().numpy()
        r, c = linear_sum_assignment(S_np, maximize=True)
        scores.append(S_np[r, c])
    sc = np.concatenate(scores)
    return {"threshold": float(np.percentile(sc, percentile)), "rule": rule, "value": float(value),
            "percentile": float(percentile), "n_null": len(nulls), "null_matched_max": float(sc.max())}


def _reading(k: int, n_a: int, n_b: int) -> dict[str, Any]:
    return {"n_matched": int(k), "fraction_of_a": k / n_a if n_a else float("nan"),
            "fraction_of_b": k / n_b if n_b else float("nan")}


def _calibrated(S: Tensor, S_sky: Tensor, nulls: list[Tensor], theta: float, reg_m_grid: Any, reg: float,
                seed: int) -> dict[str, Any]:
    cal = tr.calibrated_mass(S, S_sky, nulls, reg_m_grid, reg, reference="a", seed=seed)
    plan = tr.unbalanced_match(S, cal["reg_used"], cal["reg_m"], reference="a", retry=False)
    n_a, n_b = S.shape
    k = int(np.unique(plan.pairs[plan.scores > theta, 0]).size)
    return {"value": cal["fraction_of_a"], "fraction_of_a": cal["fraction_of_a"],
            "fraction_of_b": cal["fraction_of_b"], "reg_m": cal["reg_m"], "reg": cal["reg_used"],
            "anchor_mass": {"pair": cal["mass"], "skyline": cal["mass_skyline"], "null": cal["mass_null"],
                            "reg_m_grid": cal["reg_m_grid"]},
            "skyline_fraction_of_a": cal["skyline_fraction_of_a"], "skyline_shape": cal["skyline_shape"],
            "plan_fraction_of_a": k / n_a, "plan_fraction_of_b": k / n_b,
            "convergence": cal["convergence"]}


def calibrated_ot_fraction(
    ca: FeatureCodes, cb: FeatureCodes, skyline_a: FeatureCodes | None = None, *,
    threshold_rule: str = "fixed", threshold: float = 0.5, percentile: float = 99.0, n_null: int = 1,
    seed: int = 0, reg_m_grid: Any = (0.01, 0.03, 0.1, 0.3), reg: float = 0.02, feature_level: bool = True,
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
) -> dict[str, Any]:
    """Unbalanced-OT shared fraction of A, calibrated between a seed skyline and a token-shuffled null, in
    one call (:func:`universality.match.transport.calibrated_mass` does the arithmetic).

    Builds, all Pearson on the shared tokens: the pair's similarity ``S(A, B)``; the skyline
    ``S(A, A')`` with ``skyline_a`` the codes of a second-seed SAE of A on the same tokens (``None``: A
    against itself, ``skyline='self'`` - an optimistic anchor, every latent identical to its partner, which
    biases the fraction low); ``n_null`` nulls ``S(A, shuffled B)``
    (:func:`universality.match.baselines.shuffle_tokens`,
    seeds ``seed, seed+1, ...``; their masses are averaged). Masses use reference A (each latent of A carries
    ``1/n_a``, each latent of B a capacity ``1/n_a``), and the skyline is reshaped to the pair's ``n_a x n_b``
    (:func:`universality.match.transport.comparable_skyline`).

    ``value`` is the calibrated ``fraction_of_a`` (``fraction_of_b`` = ``fraction_of_a * n_a / n_b``);
    ``plan_fraction_of_a`` additionally counts A's latents whose rounded plan pair ships half their mass and
    correlates above the threshold of :func:`shared_threshold` (``threshold_rule``, ``threshold``). With
    ``feature_level`` the same is computed on feature groups (:func:`feature_groups`, :func:`group_similarity`).
    Returns a plain dict: ``value``, ``fraction_of_a``, ``fraction_of_b``, ``reg_m``, ``reg``,
    ``anchor_mass`` (pair, skyline, null masses on the grid), ``convergence`` (every Sinkhorn run),
    ``threshold``/``threshold_rule``, ``skyline``, and ``feature_level`` (same keys, or ``None``).
    """
    check_codes(ca, cb)
    if skyline_a is not None:
        check_codes(ca, skyline_a)
    S = dense_similarity(ca, cb, "pearson")
    nulls = _null_similarities(ca, cb, n_null, seed)
    thr = shared_threshold(ca, cb, threshold_rule, threshold, percentile, n_null, seed, nulls)
    return _calibrated_all(ca, cb, skyline_a, S, nulls, thr, reg_m_grid, reg, seed, feature_level,
                           duplicate_threshold, None, None)


def _calibrated_all(ca: FeatureCodes, cb: FeatureCodes, skyline_a: FeatureCodes | None, S: Tensor,
                    nulls: list[Tensor], thr: dict[str, Any], reg_m_grid: Any, reg: float, seed: int,
                    feature_level: bool, duplicate_threshold: float, groups_a: LatentGroups | None,
                    groups_b: LatentGroups | None, S_sky: Tensor | None = None,
                    groups_sky: LatentGroups | None = None) -> dict[str, Any]:
    theta = thr["threshold"]
    sky = skyline_a if skyline_a is not None else ca
    if S_sky is None:
        S_sky = dense_similarity(ca, sky, "pearson")
    out = _calibrated(S, S_sky, nulls, theta, reg_m_grid, reg, seed)
    out.update({"threshold": theta, "threshold_rule": thr["rule"],
                "skyline": "second seed" if skyline_a is not None else "self"})
    out["feature_level"] = None
    if feature_level:
        ga = groups_a or feature_groups(ca, duplicate_threshold)
        gb = groups_b or feature_groups(cb, duplicate_threshold)
        gs = groups_sky or (feature_groups(sky, duplicate_threshold) if skyline_a is not None else ga)
        if ga.n_features and gb.n_features and gs.n_features:
            Sg = torch.as_tensor(group_similarity(S, ga, gb))
            Sg_sky = torch.as_tensor(group_similarity(S_sky, ga, gs))
            Sg_null = [torch.as_tensor(group_similarity(S0, ga, gb)) for S0 in nulls]
            out["feature_level"] = _calibrated(Sg, Sg_sky, Sg_null, theta, reg_m_grid, reg, seed)
    return out


def shared_fraction_readings(
    ca: FeatureCodes, cb: FeatureCodes, *, skyline_a: FeatureCodes | None = None, corr_threshold: float = 0.5,
    threshold_rule: str = "fixed", percentile: float = 99.0, duplicate_threshold: float = DUPLICATE_THRESHOLD,
    n_null: int = 1, seed: int = 0, reg_m_grid: Any = (0.01, 0.03, 0.1, 0.3), reg: float = 0.02,
) -> dict[str, Any]:
    """Every shared-fraction reading of A and B (codes on the same tokens) as plain data, with a headline.

    Returns::

        {"n_a", "n_b",
         "threshold": theta, "threshold_rule": "fixed" | "null_percentile", "threshold_detail": {...},
         "duplicate_threshold": 0.9,
         "counts": {"a": {"latents", "dead", "duplicates", "features"}, "b": {...}},
         "per_latent":    {"activation_hungarian": {"n_matched", "fraction_of_a", "fraction_of_b"},
                           "partial_ot": {...}, "seed_stable_hungarian": {...} | None,
                           "calibrated_unbalanced_ot": {...} | None},
         "feature_level": {same keys, over live de-duplicated latent groups},
         "headline": {"estimator": "feature_level.activation_hungarian", "value", "fraction_of_a",
                      "fraction_of_b", "why"},
         "notes": {"paulo_belrose": ...}}

    The threshold comes from :func:`shared_threshold` (``threshold_rule``; ``corr_threshold`` is the fixed
    value) and is used by every estimator. Dead latents and duplicates follow :func:`feature_groups`
    (``duplicate_threshold``). Two readings need ``skyline_a`` (codes of a second seed of A on the same
    tokens): ``seed_stable_hungarian`` - of A's units that the second seed also finds (Hungarian, above the
    threshold), the fraction that B finds too (``n_seed_stable`` is the denominator; ``fraction_of_b`` is
    the count over B's units): live latents that no other seed reproduces (mixtures, partial features of an
    overcomplete SAE) leave the denominator; and the calibrated unbalanced-OT readings
    (:func:`calibrated_ot_fraction`), computed only with a skyline because
    without a skyline OT mass is not a fraction; they are slower (Sinkhorn runs) than the rest, which is
    one Pearson matrix per pair of sides, Hungarian and partial-OT assignments.

    The headline is the feature-level activation-matching ``fraction_of_a`` (:data:`HEADLINE`), or, when
    ``skyline_a`` is given, the feature-level seed-stable one (:data:`HEADLINE_WITH_SKYLINE`; the calibration
    in ``docs/calibration.md`` shows the plain feature-level reading under-reads overcomplete SAEs, whose
    mixture latents are live and not duplicates); ``headline['why']`` says which and why. The Paulo &
    Belrose encoder+decoder shared fraction is a stricter notion (``notes``).
    """
    check_codes(ca, cb)
    n_a, n_b = ca.n, cb.n
    S = dense_similarity(ca, cb, "pearson")
    need_null = threshold_rule == "null_percentile" or skyline_a is not None
    nulls = _null_similarities(ca, cb, n_null, seed) if need_null else None
    thr = shared_threshold(ca, cb, threshold_rule, corr_threshold, percentile, n_null, seed, nulls)
    theta = thr["threshold"]
    ga, gb = feature_groups(ca, duplicate_threshold), feature_groups(cb, duplicate_threshold)
    Sg = group_similarity(S, ga, gb)
    per_latent = {est: _reading(matched_count(S, theta, est), n_a, n_b)
                  for est in ("activation_hungarian", "partial_ot")}
    feature = {est: _reading(matched_count(Sg, theta, est), ga.n_features, gb.n_features)
               for est in ("activation_hungarian", "partial_ot")}
    for level in (per_latent, feature):
        level["seed_stable_hungarian"] = level["calibrated_unbalanced_ot"] = None
    if skyline_a is not None and nulls is not None:
        check_codes(ca, skyline_a)
        S_sky = dense_similarity(ca, skyline_a, "pearson")
        gs = feature_groups(skyline_a, duplicate_threshold)
        per_latent["seed_stable_hungarian"] = _seed_stable(S, S_sky, theta, n_b)
        feature["seed_stable_hungarian"] = _seed_stable(Sg, group_similarity(S_sky, ga, gs), theta, gb.n_features)
        cal = _calibrated_all(ca, cb, skyline_a, S, nulls, thr, reg_m_grid, reg, seed, True, duplicate_threshold,
                              ga, gb, S_sky, gs)
        feature["calibrated_unbalanced_ot"] = cal.pop("feature_level")
        per_latent["calibrated_unbalanced_ot"] = cal
    head_name, why = HEADLINE, HEADLINE_WHY
    if feature["seed_stable_hungarian"] is not None:
        head_name, why = HEADLINE_WITH_SKYLINE, HEADLINE_WITH_SKYLINE_WHY
    head = feature[head_name.split(".", 1)[1]]
    return {
        "n_a": n_a, "n_b": n_b, "threshold": theta, "threshold_rule": thr["rule"], "threshold_detail": thr,
        "duplicate_threshold": duplicate_threshold, "counts": {"a": ga.counts(), "b": gb.counts()},
        "per_latent": per_latent, "feature_level": feature,
        "headline": {"estimator": head_name, "value": head["fraction_of_a"], "fraction_of_a": head["fraction_of_a"],
                     "fraction_of_b": head["fraction_of_b"], "why": why},
        "notes": {"paulo_belrose": PAULO_BELROSE_NOTE},
    }
