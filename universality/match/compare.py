"""``compare``: every summary metric of two dictionaries, each with its floor, skylines, normalised value
and (for the headline statistics) a permutation p-value, as one ``pandas.DataFrame``.

The table is assembled from small parts, one concern each:

- *weight metrics* (:func:`weight_rows`): mean matched cosine and MMCS on decoder directions
  (:func:`decoder_rows`), the encoder+decoder shared fraction (:func:`shared_fraction_rows`); they need a
  shared space (the same width);
- *activation metrics* (:func:`activation_rows`): MPPC, correlation matching and linear CKA on codes over
  shared tokens (:func:`correlation_rows`), SVCCA and RSA on decoder rows of activation-matched pairs
  (:func:`matched_decoder_rows`); they work across widths;
- *baselines*: the random floor dictionary of the weight metrics (:func:`weight_floor`), the null samples
  shared by all metrics (:class:`NullSamples`: random rotations of ``b``, token shuffles of ``b``'s codes,
  shuffled pairings), the skylines (:func:`skyline_values`) - collected per metric in :class:`Baselines`;
- *p-values* (:func:`null_test`): :math:`p = (1 + \\#\\{r : s_r \\ge s\\}) / (1 + R)` over ``n_perm`` null samples,
  or, when the statistic beats every null sample, the upper tail of a normal fitted to the null statistics
  (:func:`~universality.match.baselines.permutation_p_value`); the columns ``p_method`` (``"perm(R)"`` or
  ``"normal tail from R perms"``) and ``p_resolution`` (:math:`1/(R+1)`, the smallest p the permutations
  certify without the normal model) say which. The activation metrics share their null samples: each token
  shuffle is one sparse product for the whole correlation matrix
  (:class:`~universality.match.baselines.CodeShuffles`) read by all five statistics; the weight metrics
  share each random rotation;
- *intervals* (:func:`activation_intervals`): ``ci_low``/``ci_high`` from a circular block bootstrap over
  tokens (:mod:`universality.match.intervals`), partners fixed from the full sample for the maximum-type
  statistics, the basic interval for linear CKA; ``ci_method`` says which. Weight metrics have no token
  sampling (their spread across training seeds is :func:`~universality.match.intervals.seed_interval`);
- *summary assembly* (:func:`score`, :func:`metric_row`, :func:`missing_row`): value, floor, skylines,
  :math:`(\\text{value} - \\text{floor}) / (\\text{skyline} - \\text{floor})` and its note, the source;
- *guards* (:func:`with_note`, :func:`basis_mismatch`, :func:`same_dictionary`, :func:`initialisation_notes`):
  notes that keep a number from misleading - a normalised value above 1, dead latents left out of MPPC, too
  few pairs for SVCCA/RSA, decoder metrics across different bases, a dictionary compared with itself, two
  dictionaries (or a dictionary and its skyline) that started from the same initial weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from universality.errors import MatchError
from universality.match import baselines as bl
from universality.match import fractions as fr
from universality.match import intervals as iv
from universality.match import summary as sm
from universality.match.api import as_pair, check_activations
from universality.match.result import SELF_MATCH_NOTE
from universality.match.similarity import constant_features, topk_partners
from universality.match.views import FeatureCodes, decoder_directions, encode_codes, encoder_directions
from universality.progress import progress_bar
from universality.sae.identity import shared_initialisation

__all__ = [
    "compare",
    "COLUMNS",
    "Dictionaries",
    "Baselines",
    "NullSamples",
    "p_value",
    "NullTest",
    "null_test",
    "N_PERM",
    "N_BOOT",
    "ASSIGNMENT_NULLS",
    "skyline_values",
    "score",
    "metric_row",
    "missing_row",
    "weight_floor",
    "weight_rows",
    "decoder_rows",
    "shared_fraction_rows",
    "activation_codes",
    "activation_rows",
    "correlation_rows",
    "matched_decoder_rows",
    "activation_null_stats",
    "activation_intervals",
    "NO_CI_WEIGHTS",
    "HEADLINE_SHARED_NOTE",
    "PER_LATENT_NOTE",
    "fraction_rows",
    "OUTSIDE_CI_NOTE",
    "with_note",
    "basis_mismatch",
    "same_dictionary",
    "SELF_NOTE",
    "SHARED_INIT_NOTE",
    "initialisation_notes",
    "ABOVE_SKYLINE_NOTE",
]

COLUMNS = ["metric", "view", "direction", "value", "floor", "skyline_a", "skyline_b", "normalised", "p_value",
           "note", "source", "p_method", "p_resolution", "ci_low", "ci_high", "ci_method"]
N_PERM = 49
"""Default null samples per p-value: exact permutation p-values down to 1/50, a normal tail below."""
ASSIGNMENT_NULLS = 29
"""The assignment (Hungarian) statistics read the first ``min(n_perm, ASSIGNMENT_NULLS)`` null samples only:
one 512 x 512 assignment costs ~10 ms, as much as the rest of a null sample (their ``p_method`` says
how many they used)."""
N_BOOT = 100
"""Default bootstrap replicates of the activation metrics' intervals (``n_boot=0``: no intervals)."""
NO_CI_WEIGHTS = "none: weights are fixed (no token sampling); across seeds use intervals.seed_interval"
OUTSIDE_CI_NOTE = ("value outside its interval: the bootstrap finds the statistic biased upward at this sample "
                   "size (noise adds to ||C||^2), and the basic interval removes that bias")
HEADLINE_SHARED_NOTE = ("stricter 'same encoder and decoder partner' notion (Paulo & Belrose); the headline shared "
                        "fraction is the feature-level activation-matching row (shared_fraction_features, or "
                        "shared_fraction_seed_stable when a skyline is given)")
PER_LATENT_NOTE = ("per-latent reading: dead and duplicate latents stay in the denominator; see "
                   "shared_fraction_features for the feature-level reading")

_SOURCES = {
    "mean_matched_cosine": "Hungarian one-to-one assignment, mean cosine of pairs",
    "mmcs": "Sharkey, Braun & Millidge 2022",
    "pw_mcc": "Song et al. 2025 (PW-MCC: mean Hungarian-matched decoder cosine; equals mean_matched_cosine)",
    "shared_fraction": "Paulo & Belrose 2025 (encoder and decoder assignments agree, both cosines > t)",
    "mppc": "Wang et al. 2024 (mean max Pearson correlation)",
    "mean_matched_correlation": "Hungarian one-to-one on activation correlation, mean of pairs",
    "shared_fraction_corr": "fraction of a's latents whose Hungarian partner on activation correlation exceeds t",
    "shared_fraction_features": "fractions.shared_fraction_readings: Hungarian on activation correlation over live, "
                                "de-duplicated latents (feature level), fraction of a's (a->b) or b's (b->a) features",
    "shared_fraction_seed_stable": "fractions.shared_fraction_readings: of a's features its second seed also finds, "
                                   "the fraction b finds (needs a skyline)",
    "shared_fraction_ot": "fractions.calibrated_ot_fraction: unbalanced-OT mass per latent of a, mapped linearly "
                          "between the token-shuffled null (0) and the seed skyline (1)",
    "linear_cka": "Kornblith et al. 2019 (linear CKA of codes)",
    "svcca": "Lan et al. 2024 / Raghu et al. 2017 (decoder rows of activation-matched pairs)",
    "rsa": "Lan et al. 2024 / Kriegeskorte et al. 2008 (Spearman of within-space cosines)",
    "ablation_agreement": "Cunningham et al. 2023 (ablation effects of features); pairs: Hungarian on activation "
                          "correlation; Pearson correlation of the next-token log-probability changes",
}

Row = dict[str, Any]
SELF_NOTE = SELF_MATCH_NOTE
SHARED_INIT_NOTE = "a and b share their initial weights (see the warning): similarity inflated by the shared start"
ABOVE_SKYLINE_NOTE = "above the seed skyline"
Statistic = Callable[[Any, Any], float]
"""``statistic(x_a, x_b) -> float``, larger = more similar."""
Null = Callable[[Any, int], Any]
"""``null(x_b, seed)``: ``x_b`` with its pairing to ``x_a`` destroyed (null sample ``seed``)."""
Pair = tuple[Any, Any]


@dataclass(frozen=True)
class Dictionaries:
    """The two dictionaries compared, their unit decoder directions and their second-seed skylines (or ``None``)."""

    a: Any
    b: Any
    Da: Float[Tensor, "n d_a"]
    Db: Float[Tensor, "m d_b"]
    sky_a: Any = None
    sky_b: Any = None


# ============================================================================================ baselines
class NullSamples:
    """Each null sample (a rotation or token shuffle of ``b`` for a seed) is drawn once and shared by the
    metrics that read it; samples are keyed by the object they transform, the seed and the kind."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, str], Any] = {}

    def cached(self, fn: Null, name: str) -> Null:
        def draw(x: Any, seed: int) -> Any:
            key = (id(x), seed, name)
            if key not in self._cache:
                self._cache[key] = fn(x, seed)
            return self._cache[key]

        return draw


@dataclass(frozen=True)
class Baselines:
    """What one metric is read against.

    Attributes:
        floor_b: the stand-in for ``b`` whose score with ``a`` is the floor (a random dictionary), or ``None``.
        skyline_a, skyline_b: ``(x, x_seed2)`` inputs whose score is the skyline of ``a`` / of ``b``, or ``None``.
        null: draws null samples of ``b`` for the p-value (``None``: no p-value).
        floor_is_null: the floor is the null mean instead (activation metrics: token-shuffled ``b``).
    """

    floor_b: Any = None
    skyline_a: Pair | None = None
    skyline_b: Pair | None = None
    null: Null | None = None
    floor_is_null: bool = False


def weight_floor(Db: Float[Tensor, "m d"], xb: Float[Tensor, "T d"] | None, floor: str,
                 seed: int) -> Float[Tensor, "m d"]:
    """The floor dictionary of the weight metrics: ``m`` unit directions with the covariance of ``b``'s
    activations (``floor='covariance'``, or ``'auto'`` with activations) or uniform on the sphere."""
    use_cov = floor == "covariance" or (floor == "auto" and xb is not None)
    if floor == "covariance" and xb is None:
        raise MatchError("floor='covariance' needs activations", "pass activations=..., or floor='random'")
    if use_cov:
        return bl.covariance_matched_dictionary(Db.shape[0], torch.as_tensor(xb), seed)
    return bl.random_unit_dictionary(Db.shape[0], Db.shape[1], seed)


def _rotate(D: Float[Tensor, "m d"], seed: int) -> Float[Tensor, "m d"]:
    """Null sample of a weight view: ``b``'s directions under a Haar-random rotation."""
    return D @ bl.random_rotation(D.shape[1], seed).T


def _shuffle_pairs(Y: Float[Tensor, "k d"], seed: int) -> Float[Tensor, "k d"]:
    """Null sample of SVCCA/RSA: the matched rows of ``b`` in a random order (Lan et al.'s random pairing)."""
    return Y[torch.randperm(len(Y), generator=torch.Generator().manual_seed(seed))]


def skyline_values(fn: Statistic, sky_a: Pair | None, sky_b: Pair | None) -> tuple[float, float, float]:
    """``(skyline_a, skyline_b, skyline)``: the statistic on each seed pair (NaN when absent) and the mean of
    those present (NaN when none is finite)."""
    ska = fn(*sky_a) if sky_a is not None else float("nan")
    skb = fn(*sky_b) if sky_b is not None else float("nan")
    sky = np.nanmean([ska, skb]) if np.isfinite([ska, skb]).any() else float("nan")
    return ska, skb, sky


# ============================================================================================ p-values
@dataclass(frozen=True)
class NullTest:
    """A statistic read against its null samples: the p-value, how it was obtained, the null mean."""

    p: float = float("nan")
    method: str = ""
    resolution: float = float("nan")
    null_mean: float = float("nan")

    @classmethod
    def of(cls, statistic: float, nulls: np.ndarray | None) -> NullTest:
        """From the null statistics (:func:`~universality.match.baselines.permutation_p_value`)."""
        if nulls is None or len(nulls) == 0:
            return cls()
        p, method, res = bl.permutation_p_value(statistic, nulls)
        finite = np.asarray(nulls, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        return cls(p, method, res, float(finite.mean()) if len(finite) else float("nan"))


def null_test(fn: Statistic, x_a: Any, x_b: Any, null: Null | None, n_perm: int) -> NullTest:
    """``fn(x_a, x_b)`` against ``fn(x_a, null(x_b, r))`` for ``r = 1..n_perm`` (Phipson & Smyth 2010
    permutation p-value, a normal tail beyond the last null sample); empty without a null or permutations."""
    if null is None or n_perm <= 0:
        return NullTest()
    pt = bl.permutation_test(fn, x_a, x_b, null, n_perm)
    return NullTest.of(pt["statistic"], pt["nulls"])


def p_value(fn: Statistic, x_a: Any, x_b: Any, null: Null | None, n_perm: int) -> tuple[float, float]:
    """``(p, null_mean)`` of :func:`null_test`; ``(NaN, NaN)`` without a null or permutations."""
    t = null_test(fn, x_a, x_b, null, n_perm)
    return t.p, t.null_mean


# ============================================================================================ summary assembly
def metric_row(metric: str, view: str, direction: str, value: float, floor: float, skyline_a: float,
               skyline_b: float, skyline: float, p: float, test: NullTest | None = None,
               ci: iv.Interval | None = None, ci_method: str = "") -> Row:
    """One table row: the values, ``(value - floor) / (skyline - floor)`` (or NaN and why), the source,
    how the p-value was obtained (``test``) and the interval (``ci``, or NaN and ``ci_method`` saying why)."""
    norm, note = bl.normalise(value, floor, skyline)
    if np.isfinite(norm) and norm > 1:
        note = with_note(note, f"{ABOVE_SKYLINE_NOTE} (normalised {norm:.3f} > 1)")
    test = test or NullTest()
    return {"metric": metric, "view": view, "direction": direction, "value": value, "floor": floor,
            "skyline_a": skyline_a, "skyline_b": skyline_b, "normalised": norm, "p_value": p, "note": note,
            "source": _SOURCES.get(metric.split("@")[0], ""), "p_method": test.method,
            "p_resolution": test.resolution, "ci_low": ci.low if ci is not None else np.nan,
            "ci_high": ci.high if ci is not None else np.nan, "ci_method": ci.method if ci is not None else ci_method}


def with_note(note: str, extra: str) -> str:
    """``note`` and ``extra`` joined by ``"; "`` (either may be empty)."""
    return "; ".join(x for x in (note, extra) if x)


def missing_row(metric: str, view: str, direction: str, note: str) -> Row:
    """A row for a metric that cannot be computed: all values NaN, the reason in ``note``."""
    return {"metric": metric, "view": view, "direction": direction, "value": np.nan, "floor": np.nan,
            "skyline_a": np.nan, "skyline_b": np.nan, "normalised": np.nan, "p_value": np.nan, "note": note,
            "source": _SOURCES[metric.split("@")[0]], "p_method": "", "p_resolution": np.nan, "ci_low": np.nan,
            "ci_high": np.nan, "ci_method": ""}


def score(metric: str, view: str, direction: str, fn: Statistic, x_a: Any, x_b: Any, base: Baselines,
          n_perm: int, *, value: float | None = None, nulls: np.ndarray | None = None,
          ci: iv.Interval | None = None, ci_method: str = "") -> Row:
    """Compute ``fn(x_a, x_b)`` (or take ``value``) with its p-value - against ``nulls`` when given (null
    statistics computed elsewhere, shared between metrics), else ``n_perm`` samples of ``base.null`` - its
    floor and skylines (``base``), and assemble its row with the interval ``ci``."""
    value = fn(x_a, x_b) if value is None else value
    test = NullTest.of(value, nulls) if nulls is not None else null_test(fn, x_a, x_b, base.null, n_perm)
    if base.floor_is_null:
        fl = test.null_mean
    else:
        fl = fn(x_a, base.floor_b) if base.floor_b is not None else float("nan")
    ska, skb, sky = skyline_values(fn, base.skyline_a, base.skyline_b)
    return metric_row(metric, view, direction, value, fl, ska, skb, sky, test.p, test, ci, ci_method)


# ============================================================================================ weight metrics
def _has_encoder(d: Any) -> bool:
    return hasattr(d, "W_enc") or isinstance(d, Tensor)


def _decoder_stats(x: Float[Tensor, "n d"], y: Float[Tensor, "m d"],
                   assign: bool = True) -> tuple[float, float, float]:
    """``(mean matched cosine, MMCS a->b, MMCS b->a)`` of unit directions from one cosine matrix (blocked
    summary functions above :data:`~universality.match.summary.DENSE_LIMIT`); ``assign=False`` leaves the
    assignment out (NaN)."""
    if x.shape[0] * y.shape[0] > sm.DENSE_LIMIT:
        mmc = sm.mean_matched_score(sm.one_to_one(x, y, "cosine")) if assign else float("nan")
        return mmc, *sm.mmcs(x, y)
    S = (x.double() @ y.double().T).numpy()
    mmc = float("nan")
    if assign:
        r, c = linear_sum_assignment(S, maximize=True)
        mmc = float(S[r, c].mean())
    return mmc, float(S.max(1).mean()), float(S.max(0).mean())


def decoder_rows(Da: Float[Tensor, "n d"], Db: Float[Tensor, "m d"], base: Baselines, n_perm: int) -> list[Row]:
    """Mean matched cosine (Hungarian), PW-MCC (Song et al. 2025; the same number under its published
    name) and MMCS in both directions on unit decoder directions; the null statistics of all four come
    from one cosine matrix per random rotation of ``b``."""

    def mmc(x: Float[Tensor, "n d"], y: Float[Tensor, "m d"]) -> float:
        return sm.mean_matched_score(sm.one_to_one(x, y, "cosine"))

    nulls = None
    if base.null is not None and n_perm > 0:
        perms = progress_bar(range(n_perm), "decoder nulls", leave=False, work=n_perm * Da.shape[0] * Db.shape[0])
        nulls = np.array([_decoder_stats(Da, base.null(Db, r + 1), r < ASSIGNMENT_NULLS) for r in perms])
    col = (lambda k: nulls[:, k]) if nulls is not None else (lambda k: None)  # noqa: E731
    kw = {"ci_method": NO_CI_WEIGHTS}
    return [
        score("mean_matched_cosine", "decoder", "a<->b", mmc, Da, Db, base, n_perm, nulls=col(0), **kw),
        score("pw_mcc", "decoder", "a<->b", sm.pw_mcc, Da, Db, base, n_perm, nulls=col(0), **kw),
        score("mmcs", "decoder", "a->b", lambda x, y: sm.mmcs(x, y)[0], Da, Db, base, n_perm, nulls=col(1), **kw),
        score("mmcs", "decoder", "b->a", lambda x, y: sm.mmcs(y, x)[0], Da, Db, base, n_perm, nulls=col(2), **kw),
    ]


def shared_fraction_rows(d: Dictionaries, floor_dec: Float[Tensor, "m d"], thresholds: Sequence[float]) -> list[Row]:
    """Paulo & Belrose's shared fraction at each threshold on (encoder, decoder) directions; the floor is the
    random dictionary as both encoder and decoder (it has no separate encoder), no p-value. Their note says
    that this is the stricter notion (the encoder *and* the decoder assignment must agree, and both cosines
    pass ``t``; an encoder bent away from its decoder by interference fails it) and that the headline shared
    fraction is the feature-level activation-matching row (:data:`HEADLINE_SHARED_NOTE`, :func:`fraction_rows`): in a
    planted world with 40% shared features the encoder+decoder rows read 0.14 where matching on activations
    (and decoder-only Hungarian) recover ~0.4."""
    Da, Db, sky_a, sky_b = d.Da, d.Db, d.sky_a, d.sky_b
    Ea, Eb = encoder_directions(d.a), encoder_directions(d.b)
    sa = ((Ea, Da), (encoder_directions(sky_a), decoder_directions(sky_a))) if sky_a is not None else None
    sb = ((Eb, Db), (encoder_directions(sky_b), decoder_directions(sky_b))) if sky_b is not None else None
    base = Baselines(floor_b=(floor_dec, floor_dec), skyline_a=sa, skyline_b=sb)
    rows = []
    for t in thresholds:
        def shf(x: Pair, y: Pair, t: float = t) -> float:
            return sm.shared_fraction(x[0], x[1], y[0], y[1], (t,))[t]

        row = score(f"shared_fraction@{t:g}", "encoder+decoder", "a->b", shf, (Ea, Da), (Eb, Db), base, 0,
                    ci_method=NO_CI_WEIGHTS)
        row["note"] = with_note(row["note"], HEADLINE_SHARED_NOTE)
        rows.append(row)
    return rows


def weight_rows(d: Dictionaries, xb: Float[Tensor, "T d_b"] | None, *, floor: str, thresholds: Sequence[float],
                seed: int, n_perm: int, nulls: NullSamples) -> list[Row]:
    """The weight-view rows: against the floor dictionary, the skylines and (for p-values) random rotations of
    ``b``; one explanatory NaN row when the widths differ (cosines need a shared space)."""
    Da, Db, sky_a, sky_b = d.Da, d.Db, d.sky_a, d.sky_b
    if Da.shape[1] != Db.shape[1]:
        why = (f"widths differ ({Da.shape[1]} vs {Db.shape[1]}): weight metrics need a shared space; "
               "see the activation metrics")
        return [missing_row("mean_matched_cosine", "decoder", "a<->b", why),
                missing_row("pw_mcc", "decoder", "a<->b", why)]
    fl_dec = weight_floor(Db, xb, floor, seed)
    base = Baselines(floor_b=fl_dec,
                     skyline_a=(Da, decoder_directions(sky_a)) if sky_a is not None else None,
                     skyline_b=(Db, decoder_directions(sky_b)) if sky_b is not None else None,
                     null=nulls.cached(_rotate, "rotation"))
    rows = decoder_rows(Da, Db, base, n_perm)
    if _has_encoder(d.a) and _has_encoder(d.b):
        rows += shared_fraction_rows(d, fl_dec, thresholds)
    why = basis_mismatch(d.a, d.b)
    if why is not None:
        for r in rows:
            r["note"] = with_note(r["note"], f"not meaningful: different bases ({why})")
    return rows


def basis_mismatch(a: Any, b: Any) -> str | None:
    """Why the weights of ``a`` and ``b`` live in different bases, or ``None``: the dictionaries record
    (in ``meta``) different models or sites. Cosines between decoder rows of different residual streams
    compare coordinates that mean different things, whatever their width."""
    ma, mb = getattr(a, "meta", None), getattr(b, "meta", None)
    if not isinstance(ma, dict) or not isinstance(mb, dict):
        return None
    diff = [f"{k} {ma[k]!r} vs {mb[k]!r}" for k in ("model", "site")
            if ma.get(k) is not None and mb.get(k) is not None and ma[k] != mb[k]]
    return ", ".join(diff) if diff else None


def same_dictionary(a: Any, b: Any, Da: Float[Tensor, "n d"], Db: Float[Tensor, "m d"]) -> bool:
    """``a`` and ``b`` are the same object, or have identical decoder directions."""
    return a is b or (Da.shape == Db.shape and bool(torch.equal(Da, Db.to(Da.device))))


# ============================================================================================ activation metrics
def activation_codes(
    d: Dictionaries, activations: Any, token_ids: Any
) -> tuple[FeatureCodes, FeatureCodes, FeatureCodes | None, FeatureCodes | None]:
    """Codes ``(n, T)``/``(m, T)`` of ``a`` and ``b`` (and of their skylines, or ``None``) on the shared tokens."""
    xa, xb = as_pair(activations)
    ta, tb = as_pair(token_ids)
    ca = d.a if isinstance(d.a, FeatureCodes) else encode_codes(d.a, xa, ta)
    cb = d.b if isinstance(d.b, FeatureCodes) else encode_codes(d.b, xb, tb)
    sca = encode_codes(d.sky_a, xa, ta) if d.sky_a is not None else None
    scb = encode_codes(d.sky_b, xb, tb) if d.sky_b is not None else None
    return ca, cb, sca, scb


def _matched(x: FeatureCodes, y: FeatureCodes) -> Any:
    return sm.one_to_one(x, y, "pearson")


_ACT_STATS = ("mppc a->b", "mppc b->a", "mean_matched_correlation", "shared_fraction_corr", "linear_cka")


def activation_null_stats(ca: FeatureCodes, cb: FeatureCodes, corr_threshold: float, n_perm: int,
                          eng: bl.CodeShuffles | None = None) -> np.ndarray | None:
    """``(n_perm, 5)`` null statistics of the correlation metrics (columns :data:`_ACT_STATS` order: MPPC both
    ways, Hungarian mean correlation, fraction above ``corr_threshold``, linear CKA) on token shuffles
    ``1..n_perm`` of ``b`` (:func:`~universality.match.baselines.shuffle_tokens`). Each shuffle is one sparse
    product for the whole correlation matrix (:class:`~universality.match.baselines.CodeShuffles`) read by
    all five statistics (the assignment ones on the first :data:`ASSIGNMENT_NULLS` only, NaN after);
    ``None`` above :data:`~universality.match.summary.DENSE_LIMIT` (then each metric
    runs its own blocked pipeline per shuffle). ``eng``: the shuffle engine of these codes, if built."""
    if n_perm <= 0 or ca.n * cb.n > sm.DENSE_LIMIT:
        return None
    eng = eng or bl.CodeShuffles(ca, cb)
    faa, fbb = eng.self_frob2()
    den = np.sqrt(faa) * np.sqrt(fbb)
    live_a, live_b = eng.live_a, eng.live_b
    out = np.empty((n_perm, len(_ACT_STATS)))
    for r in progress_bar(range(n_perm), "activation nulls", leave=False, work=n_perm * ca.n * cb.n):
        cov = eng.covariance(r + 1)
        rho = eng.correlation(cov)
        mean_sc = frac = np.nan
        if r < ASSIGNMENT_NULLS:
            i, j = linear_sum_assignment(rho, maximize=True)
            sc = rho[i, j]
            mean_sc, frac = sc.mean(), len(np.unique(i[sc > corr_threshold])) / ca.n
        out[r] = (rho.max(1)[live_a].mean() if live_a.any() else np.nan,
                  rho.max(0)[live_b].mean() if live_b.any() else np.nan,
                  mean_sc, frac, float((cov**2).sum()) / den if den > 0 else np.nan)
    return out


def activation_intervals(ca: FeatureCodes, cb: FeatureCodes, matched: Any, corr_threshold: float,
                         values: Sequence[float], n_boot: int, block: int | None, seed: int,
                         level: float = 0.95, eng: bl.CodeShuffles | None = None) -> list[iv.Interval | str]:
    """Block-bootstrap intervals of the five correlation statistics (:data:`_ACT_STATS` order; a string says
    why one is missing). One weight matrix ``(n_boot, T)`` of circular-block token multiplicities
    (:func:`~universality.match.intervals.block_bootstrap_weights`) feeds one weighted moment
    accumulation per statistic (:class:`~universality.match.intervals.WeightedCodes`).

    MPPC and the Hungarian statistics keep each feature's partner fixed from the full sample (``matched``:
    the Hungarian result; MPPC's best partners from the full-sample correlations - of ``eng`` when given,
    else one blocked top-1 pass) and take the percentile interval; linear
    CKA takes the basic interval (bias of :math:`\\|C\\|_F^2` subtracted, :mod:`universality.match.intervals`).
    """
    T = ca.n_tokens
    block = iv.default_block(T) if block is None else min(int(block), T)
    W = iv.block_bootstrap_weights(T, n_boot, block, seed)
    wc = iv.WeightedCodes(ca, cb)
    if eng is not None:
        rho = eng.correlation(eng.covariance(None))
        best_b, best_a = rho.argmax(1), rho.argmax(0)
    else:
        tk = topk_partners(ca, cb, "pearson", k=1, progress=False)
        best_b, best_a = tk.row_indices[:, 0].numpy(), tk.col_indices[:, 0].numpy()
    live_a = np.flatnonzero(~constant_features(ca).numpy())
    live_b = np.flatnonzero(~constant_features(cb).numpy())
    pi, pj = matched.pairs[:, 0], matched.pairs[:, 1]
    reps: list[np.ndarray | str] = [
        wc.pair_correlations(W, live_a, best_b[live_a]).mean(1) if len(live_a) else "no live latent",
        wc.pair_correlations(W, best_a[live_b], live_b).mean(1) if len(live_b) else "no live latent",
    ]
    if len(pi):
        rho = wc.pair_correlations(W, pi, pj)
        reps += [rho.mean(1), (rho > corr_threshold).sum(1) / ca.n]
    else:
        reps += ["no matched pair", "no matched pair"]
    try:
        reps.append(wc.cka(W))
    except MatchError as exc:
        reps.append(f"none: {exc.problem}")
    tail = f", blocks of {block} tokens"
    out: list[iv.Interval | str] = []
    for k, (r, v) in enumerate(zip(reps, values)):
        if isinstance(r, str):
            out.append(r)
            continue
        ci = iv.interval_from_replicates(r, v, level, "basic" if k == 4 else "percentile")
        fixed = "" if k == 4 else "; partners fixed from the full sample"
        out.append(iv.Interval(ci.low, ci.high, ci.method + tail + fixed, ci.level, ci.n))
    return out


def correlation_rows(ca: FeatureCodes, cb: FeatureCodes, base: Baselines, corr_threshold: float,
                     n_perm: int, n_boot: int = 0, boot_block: int | None = None, seed: int = 0) -> list[Row]:
    """MPPC both ways, Hungarian matching on Pearson correlation (mean and fraction above ``corr_threshold``)
    and linear CKA of the codes; floor = mean over token-shuffled ``b`` (shared null samples,
    :func:`activation_null_stats`), intervals from :func:`activation_intervals` (``n_boot > 0``). MPPC
    leaves dead latents (constant on the tokens) out of its mean; its rows say how many there were."""
    dead_a, dead_b = sm.dead_counts(ca, cb)
    matched = _matched(ca, cb)
    fns: list[Statistic] = [
        lambda x, y: sm.mppc(x, y)[0],
        lambda x, y: sm.mppc(y, x)[0],
        lambda x, y: _matched(x, y).mean_score,
        lambda x, y: _matched(x, y).fraction_above(corr_threshold, x.n),
        sm.linear_cka_codes,
    ]
    values = [fns[0](ca, cb), fns[1](ca, cb), matched.mean_score, matched.fraction_above(corr_threshold, ca.n),
              sm.linear_cka_codes(ca, cb)]
    eng = bl.CodeShuffles(ca, cb) if (n_perm > 0 or n_boot > 0) and ca.n * cb.n <= sm.DENSE_LIMIT else None
    nulls = activation_null_stats(ca, cb, corr_threshold, n_perm, eng)
    cis: list[iv.Interval | str] = (activation_intervals(ca, cb, matched, corr_threshold, values, n_boot,
                                                         boot_block, seed, eng=eng) if n_boot > 0
                                    else ["none: n_boot=0"] * len(fns))
    names = [("mppc", "a->b"), ("mppc", "b->a"), ("mean_matched_correlation", "a<->b"),
             (f"shared_fraction_corr@{corr_threshold:g}", "a->b"), ("linear_cka", "a<->b")]
    rows = []
    for k, ((name, direction), fn, value, ci) in enumerate(zip(names, fns, values, cis)):
        rows.append(score(name, "activations", direction, fn, ca, cb, base, n_perm, value=value,
                          nulls=nulls[:, k] if nulls is not None else None,
                          ci=ci if isinstance(ci, iv.Interval) else None,
                          ci_method=ci if isinstance(ci, str) else ""))
    cka = rows[4]
    if np.isfinite(cka["ci_low"]) and np.isfinite(cka["value"]) and not cka["ci_low"] <= cka["value"] <= cka["ci_high"]:
        cka["note"] = with_note(cka["note"], OUTSIDE_CI_NOTE)
    for row, dead, n, side in ((rows[0], dead_a, ca.n, "a"), (rows[1], dead_b, cb.n, "b")):
        row["note"] = with_note(row["note"], f"{dead} of {n} latents of {side} dead (constant on these tokens), "
                                             "left out of the mean")
    rows[3]["note"] = with_note(rows[3]["note"], PER_LATENT_NOTE)
    return rows


def _paired_rows(x: FeatureCodes, y: FeatureCodes, Dx: Float[Tensor, "n d_x"], Dy: Float[Tensor, "m d_y"],
                 corr_threshold: float) -> tuple[Float[Tensor, "k d_x"], Float[Tensor, "k d_y"]] | None:
    """Decoder rows of the activation-matched pairs with correlation above ``corr_threshold`` (``None``: < 3)."""
    res = _matched(x, y)
    keep = res.scores > corr_threshold
    if keep.sum() < 3:
        return None
    return Dx[res.pairs[keep, 0]], Dy[res.pairs[keep, 1]]


def matched_decoder_rows(d: Dictionaries, ca: FeatureCodes, cb: FeatureCodes, sca: FeatureCodes | None,
                         scb: FeatureCodes | None, corr_threshold: float, n_perm: int) -> list[Row]:
    """SVCCA and RSA on decoder rows of activation-matched pairs (works across widths, Lan et al. 2024);
    floor and p-value: the same rows with the pairing shuffled (Lan et al.'s random-pairing baseline)."""
    Da, Db, sky_a, sky_b = d.Da, d.Db, d.sky_a, d.sky_b
    main = _paired_rows(ca, cb, Da, Db, corr_threshold)
    sky_rows_a = _paired_rows(ca, sca, Da, decoder_directions(sky_a), corr_threshold) if sca is not None else None
    sky_rows_b = _paired_rows(cb, scb, Db, decoder_directions(sky_b), corr_threshold) if scb is not None else None
    base = Baselines(skyline_a=sky_rows_a, skyline_b=sky_rows_b, null=_shuffle_pairs, floor_is_null=True)
    rows = []
    few = sm.too_few_pairs(*main) if main is not None else None
    for name, fn in (("svcca", sm.svcca), ("rsa", sm.rsa)):
        if main is None:
            rows.append(missing_row(name, "decoder|activation-matched", "a<->b",
                                    f"fewer than 3 pairs with correlation > {corr_threshold}"))
        elif few is not None:
            rows.append(missing_row(name, "decoder|activation-matched", "a<->b",
                                    f"{few}; pairs with correlation > {corr_threshold}"))
        else:
            rows.append(score(name, "decoder|activation-matched", "a<->b", fn, *main, base, n_perm,
                              ci_method="none: not bootstrapped (pairs from the full-sample matching)"))
    return rows


def activation_rows(d: Dictionaries, activations: Any, token_ids: Any, *, corr_threshold: float, n_perm: int,
                    nulls: NullSamples, n_boot: int = 0, boot_block: int | None = None,
                    seed: int = 0) -> list[Row]:
    """The activation-view rows: codes on the shared tokens, read against token shuffles of ``b``'s codes
    (floor = null mean, p-value), the skylines' codes and (``n_boot > 0``) block-bootstrap intervals."""
    ca, cb, sca, scb = activation_codes(d, activations, token_ids)
    base = Baselines(skyline_a=(ca, sca) if sca is not None else None,
                     skyline_b=(cb, scb) if scb is not None else None,
                     null=nulls.cached(bl.shuffle_tokens, "shuffle"), floor_is_null=True)
    return (correlation_rows(ca, cb, base, corr_threshold, n_perm, n_boot, boot_block, seed)
            + fraction_rows(ca, cb, sca, scb, corr_threshold, nulls, seed)
            + matched_decoder_rows(d, ca, cb, sca, scb, corr_threshold, n_perm))


def _counts_note(r: dict[str, Any]) -> str:
    c = r["counts"]
    sides = "; ".join(f"{s}: {c[s]['latents']} latents, {c[s]['dead']} dead, {c[s]['duplicates']} duplicates -> "
                      f"{c[s]['features']} features" for s in ("a", "b"))
    return f"{sides} (duplicate: correlation > {r['duplicate_threshold']:g} with a more frequent latent)"


def fraction_rows(ca: FeatureCodes, cb: FeatureCodes, sca: FeatureCodes | None, scb: FeatureCodes | None,
                  corr_threshold: float, nulls: NullSamples, seed: int) -> list[Row]:
    """Feature-level shared fractions (:func:`universality.match.fractions.shared_fraction_readings`): live,
    de-duplicated latents, both directions, with the dead/duplicate counts in the note; with a skyline also
    the seed-stable reading (then the headline) and the calibrated unbalanced-OT reading. Floor: the same
    reading with ``b``'s tokens shuffled (one null sample); skyline: the reading between a dictionary and its
    second seed (the seed-stable and calibrated readings are 1 there by construction). The headline row's
    note says it is the headline and why."""
    t = corr_threshold
    main = fr.shared_fraction_readings(ca, cb, skyline_a=sca, corr_threshold=t, seed=seed)
    null = fr.shared_fraction_readings(ca, nulls.cached(bl.shuffle_tokens, "shuffle")(cb, 1), skyline_a=sca,
                                       corr_threshold=t, seed=seed)
    sky_a = fr.shared_fraction_readings(ca, sca, corr_threshold=t, seed=seed) if sca is not None else None
    sky_b = fr.shared_fraction_readings(cb, scb, corr_threshold=t, seed=seed) if scb is not None else None
    headline = main["headline"]["estimator"]
    counts = _counts_note(main)

    def row(metric: str, direction: str, key: str, side: str, skylines: tuple[float, float]) -> Row:
        value = main["feature_level"][key][side]
        fl = null["feature_level"][key][side]
        sky = [x for x in skylines if np.isfinite(x)]
        r = metric_row(f"{metric}@{t:g}", "activations", direction, value, fl, skylines[0], skylines[1],
                       float(np.mean(sky)) if sky else float("nan"), float("nan"))
        r["note"] = with_note(r["note"], counts)
        if f"feature_level.{key}" == headline and side == "fraction_of_a":
            r["note"] = with_note(r["note"], f"headline shared fraction: {main['headline']['why']}")
        return r

    def sky(r: dict[str, Any] | None, side: str) -> float:
        return r["feature_level"]["activation_hungarian"][side] if r is not None else float("nan")

    rows = [row("shared_fraction_features", "a->b", "activation_hungarian", "fraction_of_a",
                (sky(sky_a, "fraction_of_a"), sky(sky_b, "fraction_of_a"))),
            row("shared_fraction_features", "b->a", "activation_hungarian", "fraction_of_b",
                (sky(sky_a, "fraction_of_a"), sky(sky_b, "fraction_of_a")))]
    if sca is None:
        why = "needs a second seed of a (compare(..., skyline=a_seed2))"
        return rows + [missing_row(f"shared_fraction_seed_stable@{t:g}", "activations", "a->b", why),
                       missing_row(f"shared_fraction_ot@{t:g}", "activations", "a->b",
                                   why + ": unbalanced-OT mass is not a fraction until calibrated")]
    rows.append(row("shared_fraction_seed_stable", "a->b", "seed_stable_hungarian", "fraction_of_a", (1.0, np.nan)))
    ot = row("shared_fraction_ot", "a->b", "calibrated_unbalanced_ot", "fraction_of_a", (1.0, np.nan))
    cal = main["feature_level"]["calibrated_unbalanced_ot"]
    runs = [run for anchor in cal["convergence"].values() for run in anchor]
    retried = sum(bool(run.get("retried")) for run in runs)
    ot["note"] = with_note(ot["note"], f"reg_m {cal['reg_m']:g}, reg {cal['reg']:g}; unbalanced Sinkhorn converged in "
                                       f"all {len(runs)} runs ({retried} after a retry)")
    return rows + [ot]


# ============================================================================================ compare
def _skylines(skyline: Any) -> tuple[Any, Any]:
    """``(sky_a, sky_b)``: a pair ``(a_seed2, b_seed2)``, or one dictionary = ``a``'s second seed only."""
    sky_a, sky_b = as_pair(skyline) if skyline is not None else (None, None)
    if skyline is not None and not isinstance(skyline, (tuple, list)):
        sky_b = None
    return sky_a, sky_b


def compare(
    a: Any,
    b: Any,
    *,
    activations: Any = None,
    token_ids: Any = None,
    skyline: Any = None,
    floor: str = "auto",
    thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
    n_perm: int = N_PERM,
    corr_threshold: float = 0.5,
    seed: int = 0,
    n_boot: int = N_BOOT,
    boot_block: int | None = None,
    ablation: Any = None,
) -> pd.DataFrame:
    """All summary metrics of ``a`` vs ``b`` with their baselines.

    Args:
        a, b: dictionaries (``W_dec``/``W_enc``/``encode``) or direction tensors.
        activations: ``x`` or ``(x_a, x_b)`` on the same tokens (enables MPPC, correlation matching, CKA,
            SVCCA, RSA); ``token_ids`` fingerprint them.
        skyline: a second-seed copy of ``a`` (trained on the same activations with another seed), or a pair
            ``(a_seed2, b_seed2)`` - then both models' skylines are reported (``skyline_a``, ``skyline_b``)
            and the normalisation uses their mean.
        floor: ``"random"`` (random unit directions of ``b``'s shape), ``"covariance"`` (random directions
            with the covariance of ``b``'s activations; needs ``activations``) or ``"auto"`` (covariance when
            activations are given). Activation metrics use the token-shuffled null mean as their floor.
        n_perm: null samples for the p-values (random rotations of ``b`` for weight metrics, token shuffles of
            ``b``'s codes for activation metrics; default :data:`N_PERM`). ``p_method`` says how each p-value
            was obtained: ``"perm(R)"`` is the exact permutation p-value (it cannot go below
            ``p_resolution`` = 1/(R+1)); when the statistic beats every null sample the p-value is the upper
            tail of a normal fitted to the null statistics (``"normal tail from R perms"``), which can reach
            0.001 and below. ``n_perm=0``: no p-values (and the activation floors are NaN).
        seed: seed of the random floor and of the bootstrap weights.
        n_boot: block-bootstrap replicates of the activation metrics' intervals ``ci_low``/``ci_high``
            (default :data:`N_BOOT`; ``0`` switches them off); ``ci_method`` names the interval
            (:func:`activation_intervals`, :mod:`universality.match.intervals`). Weight metrics get none
            (no token sampling; across seeds see :func:`~universality.match.intervals.seed_interval`).
        boot_block: tokens per bootstrap block (default
            :func:`~universality.match.intervals.default_block`: 64, the quickstart context length); pass
            the context length of the activations.
        ablation: an :class:`~universality.eval.ablation.AblationInputs` (each dictionary's model and site,
            evaluation tokens of one tokenizer) adds the ``ablation_agreement`` row (:func:`ablation_rows`):
            the best Hungarian pairs on activation correlation are ablated in their own models and their
            effects on the next-token log-probabilities correlated; floor: random pairs; skyline: the same
            between ``a`` and its second seed (``skyline``). Needs ``activations``.

    Returns:
        one row per metric (and direction, threshold) with the columns :data:`COLUMNS` (the last five:
        ``p_method``, ``p_resolution``, ``ci_low``, ``ci_high``, ``ci_method``); ``normalised`` is
        ``(value - floor) / (skyline - floor)`` or NaN with the reason in ``note``. ``note`` also says when
        the normalised value is above 1 (:data:`ABOVE_SKYLINE_NOTE`), how many dead latents MPPC left out,
        why SVCCA/RSA are NaN (too few pairs, :func:`~universality.match.summary.too_few_pairs`), when the
        decoder metrics compare different bases (:func:`basis_mismatch`), when ``a`` is ``b``
        (:data:`SELF_NOTE`) and when two dictionaries share their initial weights
        (:data:`SHARED_INIT_NOTE`, :func:`initialisation_notes`; also a warning). With activations, the
        feature-level shared fractions (:func:`fraction_rows`) follow the correlation rows; the note of the
        headline shared fraction says so and why.
    """
    if activations is not None:
        check_activations(activations, token_ids)  # fail before any metric is computed
    d = Dictionaries(a, b, decoder_directions(a), decoder_directions(b), *_skylines(skyline))
    nulls = NullSamples()
    xb = as_pair(activations)[1] if activations is not None else None
    rows = weight_rows(d, xb, floor=floor, thresholds=thresholds, seed=seed, n_perm=n_perm, nulls=nulls)
    if activations is not None:
        rows += activation_rows(d, activations, token_ids, corr_threshold=corr_threshold, n_perm=n_perm,
                                nulls=nulls, n_boot=n_boot, boot_block=boot_block, seed=seed)
    if ablation is not None:
        rows += ablation_rows(d, activations, token_ids, ablation, seed=seed)
    if same_dictionary(a, b, d.Da, d.Db):
        for r in rows:
            r["note"] = with_note(r["note"], SELF_NOTE)
    for extra in initialisation_notes(d):
        for r in rows:
            r["note"] = with_note(r["note"], extra)
    return pd.DataFrame(rows, columns=COLUMNS)


def ablation_rows(d: Dictionaries, activations: Any, token_ids: Any, inputs: Any, seed: int = 0) -> list[Row]:
    """The ``ablation_agreement`` row (see :func:`compare`'s ``ablation``)."""
    # import cost: the model-side evaluation loads only when an ablation row is asked for
    from universality.eval.ablation import agreement_rows, best_pairs, check_same_tokens
    from universality.match.api import match

    if activations is None:
        return [missing_row("ablation_agreement", "model", "a<->b", "needs activations (the pairs are matched on them)")]
    check_same_tokens(inputs.adapter_a.tokenizer, inputs.adapter_b.tokenizer)
    xa, xb = as_pair(activations)
    ta, tb = as_pair(token_ids) if token_ids is not None else (None, None)
    la, lb = best_pairs(match(d.a, d.b, method="hungarian", view="activations", activations=(xa, xb),
                              token_ids=None if ta is None else (ta, tb)), inputs.n_pairs)
    sky_a = sky_b = None
    if d.sky_a is not None:
        s0, s1 = best_pairs(match(d.a, d.sky_a, method="hungarian", view="activations", activations=(xa, xa),
                                  token_ids=None if ta is None else (ta, ta)), inputs.n_pairs)
        sky_a, sky_b = inputs.effects("a", d.a, s0), inputs.effects("a", d.sky_a, s1)
    got = agreement_rows(inputs.effects("a", d.a, la), inputs.effects("b", d.b, lb), sky_a, sky_b, seed=seed)
    sky = got["skyline"]
    norm = (got["value"] - got["floor"]) / (sky - got["floor"]) if np.isfinite(sky) and abs(sky - got["floor"]) > 1e-9 else np.nan
    row = missing_row("ablation_agreement", "model", "a<->b",
                      f"{got['n_pairs']} of the {inputs.n_pairs} best pairs change the log-probabilities; floor: random "
                      "pairs of the same latents" + ("" if d.sky_a is not None else
                                                     "; no skyline: pass skyline= (a's second seed)"))
    row.update(value=got["value"], floor=got["floor"], skyline_a=sky, normalised=norm)
    return [row]


def initialisation_notes(d: Dictionaries) -> list[str]:
    """Row notes (and one warning each) when ``a`` and ``b``, or a dictionary and its seed skyline, started
    from the same initial weights (:func:`~universality.sae.identity.shared_initialisation`): their
    similarity is then inflated by the shared start (a skyline so made is too high)."""
    notes = []
    if d.a is not d.b and shared_initialisation(d.a, d.b) is not None:
        warnings.warn(shared_initialisation(d.a, d.b), stacklevel=3)
        notes.append(SHARED_INIT_NOTE)
    for side, x, sky in (("a", d.a, d.sky_a), ("b", d.b, d.sky_b)):
        why = shared_initialisation(x, sky) if sky is not None and sky is not x else None
        if why is not None:
            warnings.warn(f"skyline of {side}: {why}", stacklevel=3)
            notes.append(f"skyline of {side} shares its initialisation with {side}: that skyline is inflated")
    return notes
