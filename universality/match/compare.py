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
- *p-values* (:func:`p_value`): :math:`p = (1 + \\#\\{r : s_r \\ge s\\}) / (1 + R)` over ``n_perm`` null samples;
- *summary assembly* (:func:`score`, :func:`metric_row`, :func:`missing_row`): value, floor, skylines,
  :math:`(\\text{value} - \\text{floor}) / (\\text{skyline} - \\text{floor})` and its note, the source;
- *guards* (:func:`with_note`, :func:`basis_mismatch`, :func:`same_dictionary`): notes that keep a number from
  misleading - a normalised value above 1, dead latents left out of MPPC, too few pairs for SVCCA/RSA,
  decoder metrics across different bases, a dictionary compared with itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from universality.errors import MatchError
from universality.match import baselines as bl
from universality.match import summary as sm
from universality.match.api import as_pair, check_activations
from universality.match.result import SELF_MATCH_NOTE
from universality.match.views import FeatureCodes, decoder_directions, encode_codes, encoder_directions

__all__ = [
    "compare",
    "COLUMNS",
    "Dictionaries",
    "Baselines",
    "NullSamples",
    "p_value",
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
    "with_note",
    "basis_mismatch",
    "same_dictionary",
    "SELF_NOTE",
    "ABOVE_SKYLINE_NOTE",
]

COLUMNS = ["metric", "view", "direction", "value", "floor", "skyline_a", "skyline_b", "normalised", "p_value",
           "note", "source"]

_SOURCES = {
    "mean_matched_cosine": "Hungarian one-to-one assignment, mean cosine of pairs",
    "mmcs": "Sharkey, Braun & Millidge 2022",
    "shared_fraction": "Paulo & Belrose 2025 (encoder and decoder assignments agree, both cosines > t)",
    "mppc": "Wang et al. 2024 (mean max Pearson correlation)",
    "mean_matched_correlation": "Hungarian one-to-one on activation correlation, mean of pairs",
    "shared_fraction_corr": "fraction of a's latents whose Hungarian partner on activation correlation exceeds t",
    "linear_cka": "Kornblith et al. 2019 (linear CKA of codes)",
    "svcca": "Lan et al. 2024 / Raghu et al. 2017 (decoder rows of activation-matched pairs)",
    "rsa": "Lan et al. 2024 / Kriegeskorte et al. 2008 (Spearman of within-space cosines)",
}

Row = dict[str, Any]
SELF_NOTE = SELF_MATCH_NOTE
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
def p_value(fn: Statistic, x_a: Any, x_b: Any, null: Null | None, n_perm: int) -> tuple[float, float]:
    """``(p, null_mean)``: the permutation p-value :math:`(1 + \\#\\{r : s_r \\ge s\\}) / (1 + R)` of
    ``fn(x_a, x_b)`` against ``fn(x_a, null(x_b, r))`` for ``R = n_perm`` samples (Phipson & Smyth 2010),
    and the mean of those null statistics; ``(NaN, NaN)`` without a null or permutations."""
    if null is None or n_perm <= 0:
        return float("nan"), float("nan")
    pt = bl.permutation_test(fn, x_a, x_b, null, n_perm)
    return pt["p_value"], pt["null_mean"]


# ============================================================================================ summary assembly
def metric_row(metric: str, view: str, direction: str, value: float, floor: float, skyline_a: float,
               skyline_b: float, skyline: float, p: float) -> Row:
    """One table row: the values, ``(value - floor) / (skyline - floor)`` (or NaN and why), the source."""
    norm, note = bl.normalise(value, floor, skyline)
    if np.isfinite(norm) and norm > 1:
        note = with_note(note, f"{ABOVE_SKYLINE_NOTE} (normalised {norm:.3g} > 1)")
    return {"metric": metric, "view": view, "direction": direction, "value": value, "floor": floor,
            "skyline_a": skyline_a, "skyline_b": skyline_b, "normalised": norm, "p_value": p, "note": note,
            "source": _SOURCES.get(metric.split("@")[0], "")}


def with_note(note: str, extra: str) -> str:
    """``note`` and ``extra`` joined by ``"; "`` (either may be empty)."""
    return "; ".join(x for x in (note, extra) if x)


def missing_row(metric: str, view: str, direction: str, note: str) -> Row:
    """A row for a metric that cannot be computed: all values NaN, the reason in ``note``."""
    return {"metric": metric, "view": view, "direction": direction, "value": np.nan, "floor": np.nan,
            "skyline_a": np.nan, "skyline_b": np.nan, "normalised": np.nan, "p_value": np.nan, "note": note,
            "source": _SOURCES[metric.split("@")[0]]}


def score(metric: str, view: str, direction: str, fn: Statistic, x_a: Any, x_b: Any, base: Baselines,
          n_perm: int) -> Row:
    """Compute ``fn(x_a, x_b)`` with its p-value, floor and skylines (``base``) and assemble its row."""
    value = fn(x_a, x_b)
    p, null_mean = p_value(fn, x_a, x_b, base.null, n_perm)
    if base.floor_is_null:
        fl = null_mean
    else:
        fl = fn(x_a, base.floor_b) if base.floor_b is not None else float("nan")
    ska, skb, sky = skyline_values(fn, base.skyline_a, base.skyline_b)
    return metric_row(metric, view, direction, value, fl, ska, skb, sky, p)


# ============================================================================================ weight metrics
def _has_encoder(d: Any) -> bool:
    return hasattr(d, "W_enc") or isinstance(d, Tensor)


def decoder_rows(Da: Float[Tensor, "n d"], Db: Float[Tensor, "m d"], base: Baselines, n_perm: int) -> list[Row]:
    """Mean matched cosine (Hungarian) and MMCS in both directions on unit decoder directions."""

    def mmc(x: Float[Tensor, "n d"], y: Float[Tensor, "m d"]) -> float:
        return sm.mean_matched_score(sm.one_to_one(x, y, "cosine"))

    return [
        score("mean_matched_cosine", "decoder", "a<->b", mmc, Da, Db, base, n_perm),
        score("mmcs", "decoder", "a->b", lambda x, y: sm.mmcs(x, y)[0], Da, Db, base, n_perm),
        score("mmcs", "decoder", "b->a", lambda x, y: sm.mmcs(y, x)[0], Da, Db, base, n_perm),
    ]


def shared_fraction_rows(d: Dictionaries, floor_dec: Float[Tensor, "m d"], thresholds: Sequence[float]) -> list[Row]:
    """Paulo & Belrose's shared fraction at each threshold on (encoder, decoder) directions; the floor is the
    random dictionary as both encoder and decoder (it has no separate encoder), no p-value."""
    Da, Db, sky_a, sky_b = d.Da, d.Db, d.sky_a, d.sky_b
    Ea, Eb = encoder_directions(d.a), encoder_directions(d.b)
    sa = ((Ea, Da), (encoder_directions(sky_a), decoder_directions(sky_a))) if sky_a is not None else None
    sb = ((Eb, Db), (encoder_directions(sky_b), decoder_directions(sky_b))) if sky_b is not None else None
    base = Baselines(floor_b=(floor_dec, floor_dec), skyline_a=sa, skyline_b=sb)
    rows = []
    for t in thresholds:
        def shf(x: Pair, y: Pair, t: float = t) -> float:
            return sm.shared_fraction(x[0], x[1], y[0], y[1], (t,))[t]

        rows.append(score(f"shared_fraction@{t:g}", "encoder+decoder", "a->b", shf, (Ea, Da), (Eb, Db), base, 0))
    return rows


def weight_rows(d: Dictionaries, xb: Float[Tensor, "T d_b"] | None, *, floor: str, thresholds: Sequence[float],
                seed: int, n_perm: int, nulls: NullSamples) -> list[Row]:
    """The weight-view rows: against the floor dictionary, the skylines and (for p-values) random rotations of
    ``b``; one explanatory NaN row when the widths differ (cosines need a shared space)."""
    Da, Db, sky_a, sky_b = d.Da, d.Db, d.sky_a, d.sky_b
    if Da.shape[1] != Db.shape[1]:
        return [missing_row("mean_matched_cosine", "decoder", "a<->b",
                            f"widths differ ({Da.shape[1]} vs {Db.shape[1]}): weight metrics need a shared space; "
                            "see the activation metrics")]
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


def correlation_rows(ca: FeatureCodes, cb: FeatureCodes, base: Baselines, corr_threshold: float,
                     n_perm: int) -> list[Row]:
    """MPPC both ways, Hungarian matching on Pearson correlation (mean and fraction above ``corr_threshold``)
    and linear CKA of the codes; floor = mean over token-shuffled ``b``. MPPC leaves dead latents (constant
    on the tokens) out of its mean; its rows say how many there were."""
    dead_a, dead_b = sm.dead_counts(ca, cb)
    mppc_ab = score("mppc", "activations", "a->b", lambda x, y: sm.mppc(x, y)[0], ca, cb, base, n_perm)
    mppc_ba = score("mppc", "activations", "b->a", lambda x, y: sm.mppc(y, x)[0], ca, cb, base, n_perm)
    for row, dead, n, side in ((mppc_ab, dead_a, ca.n, "a"), (mppc_ba, dead_b, cb.n, "b")):
        row["note"] = with_note(row["note"], f"{dead} of {n} latents of {side} dead (constant on these tokens), "
                                             "left out of the mean")
    return [
        mppc_ab,
        mppc_ba,
        score("mean_matched_correlation", "activations", "a<->b", lambda x, y: _matched(x, y).mean_score, ca, cb,
              base, n_perm),
        score(f"shared_fraction_corr@{corr_threshold:g}", "activations", "a->b",
              lambda x, y: _matched(x, y).fraction_above(corr_threshold, x.n), ca, cb, base, n_perm),
        score("linear_cka", "activations", "a<->b", sm.linear_cka_codes, ca, cb, base, n_perm),
    ]


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
            rows.append(score(name, "decoder|activation-matched", "a<->b", fn, *main, base, n_perm))
    return rows


def activation_rows(d: Dictionaries, activations: Any, token_ids: Any, *, corr_threshold: float, n_perm: int,
                    nulls: NullSamples) -> list[Row]:
    """The activation-view rows: codes on the shared tokens, read against token shuffles of ``b``'s codes
    (floor = null mean, p-value) and the skylines' codes."""
    ca, cb, sca, scb = activation_codes(d, activations, token_ids)
    base = Baselines(skyline_a=(ca, sca) if sca is not None else None,
                     skyline_b=(cb, scb) if scb is not None else None,
                     null=nulls.cached(bl.shuffle_tokens, "shuffle"), floor_is_null=True)
    return (correlation_rows(ca, cb, base, corr_threshold, n_perm)
            + matched_decoder_rows(d, ca, cb, sca, scb, corr_threshold, n_perm))


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
    n_perm: int = 10,
    corr_threshold: float = 0.5,
    seed: int = 0,
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
        n_perm: permutations for the p-values (random rotations of ``b`` for weight metrics, token shuffles of
            ``b``'s codes for activation metrics).

    Returns:
        one row per metric (and direction, threshold) with the columns :data:`COLUMNS`; ``normalised`` is
        ``(value - floor) / (skyline - floor)`` or NaN with the reason in ``note``. ``note`` also says when
        the normalised value is above 1 (:data:`ABOVE_SKYLINE_NOTE`), how many dead latents MPPC left out,
        why SVCCA/RSA are NaN (too few pairs, :func:`~universality.match.summary.too_few_pairs`), when the
        decoder metrics compare different bases (:func:`basis_mismatch`) and when ``a`` is ``b``
        (:data:`SELF_NOTE`).
    """
    if activations is not None:
        check_activations(activations, token_ids)  # fail before any metric is computed
    d = Dictionaries(a, b, decoder_directions(a), decoder_directions(b), *_skylines(skyline))
    nulls = NullSamples()
    xb = as_pair(activations)[1] if activations is not None else None
    rows = weight_rows(d, xb, floor=floor, thresholds=thresholds, seed=seed, n_perm=n_perm, nulls=nulls)
    if activations is not None:
        rows += activation_rows(d, activations, token_ids, corr_threshold=corr_threshold, n_perm=n_perm,
                                nulls=nulls)
    if same_dictionary(a, b, d.Da, d.Db):
        for r in rows:
            r["note"] = with_note(r["note"], SELF_NOTE)
    return pd.DataFrame(rows, columns=COLUMNS)
