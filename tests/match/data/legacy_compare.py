"""FROZEN REFERENCE - do not edit: ``universality/match/compare.py`` before it was split by concern
(see ``tests/match/test_refactor_equivalence.py``).

Original docstring: ``compare``: every summary metric of two dictionaries, each with its floor, skylines, normalised value
and (for the headline statistics) a permutation p-value, as one ``pandas.DataFrame``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from universality.errors import MatchError
from universality.match import baselines as bl
from universality.match import summary as sm
from universality.match.api import check_activations
from universality.match.views import FeatureCodes, decoder_directions, encode_codes, encoder_directions


def _pair(x: Any) -> tuple[Any, Any]:
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return x[0], x[1]
    return x, x


__all__ = ["compare", "COLUMNS"]

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


def _has_encoder(d: Any) -> bool:
    return hasattr(d, "W_enc") or isinstance(d, Tensor)


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
        ``(value - floor) / (skyline - floor)`` or NaN with the reason in ``note``.
    """
    if activations is not None:
        check_activations(activations, token_ids)  # fail before any metric is computed
    sky_a, sky_b = _pair(skyline) if skyline is not None else (None, None)
    if skyline is not None and not (isinstance(skyline, (tuple, list))):
        sky_b = None
    rows: list[dict[str, Any]] = []
    null_cache: dict[tuple[int, int, str], Any] = {}

    def cached(fn: Callable[[Any, int], Any], name: str) -> Callable[[Any, int], Any]:
        """Each null sample (a rotation or token shuffle of b for a seed) is drawn once and shared by metrics."""
        def draw(x: Any, seed_: int) -> Any:
            key = (id(x), seed_, name)
            if key not in null_cache:
                null_cache[key] = fn(x, seed_)
            return null_cache[key]
        return draw

    def add(metric: str, view: str, direction: str, fn: Callable[[Any, Any], float], x_a: Any, x_b: Any,
            fl_b: Any, sa: tuple[Any, Any] | None, sb: tuple[Any, Any] | None,
            null: Callable[[Any, int], Any] | None = None, floor_is_null: bool = False) -> None:
        value = fn(x_a, x_b)
        p = float("nan")
        null_mean = float("nan")
        if null is not None and n_perm > 0:
            pt = bl.permutation_test(fn, x_a, x_b, null, n_perm)
            p, null_mean = pt["p_value"], pt["null_mean"]
        fl = null_mean if floor_is_null else (fn(x_a, fl_b) if fl_b is not None else float("nan"))
        ska = fn(*sa) if sa is not None else float("nan")
        skb = fn(*sb) if sb is not None else float("nan")
        sky = np.nanmean([ska, skb]) if np.isfinite([ska, skb]).any() else float("nan")
        norm, note = bl.normalise(value, fl, sky)
        rows.append({"metric": metric, "view": view, "direction": direction, "value": value, "floor": fl,
                     "skyline_a": ska, "skyline_b": skb, "normalised": norm, "p_value": p, "note": note,
                     "source": _SOURCES.get(metric.split("@")[0], "")})

    # ---- weight views (need the same width) ----
    Da, Db = decoder_directions(a), decoder_directions(b)
    same_width = Da.shape[1] == Db.shape[1]
    xa, xb = _pair(activations) if activations is not None else (None, None)
    if same_width:
        use_cov = floor == "covariance" or (floor == "auto" and xb is not None)
        if floor == "covariance" and xb is None:
            raise MatchError("floor='covariance' needs activations", "pass activations=..., or floor='random'")
        fl_dec = (bl.covariance_matched_dictionary(Db.shape[0], torch.as_tensor(xb), seed) if use_cov
                  else bl.random_unit_dictionary(Db.shape[0], Db.shape[1], seed))
        rot = cached(lambda D, s: D @ bl.random_rotation(D.shape[1], s).T, "rotation")
        sa = (Da, decoder_directions(sky_a)) if sky_a is not None else None
        sb = (Db, decoder_directions(sky_b)) if sky_b is not None else None
        mmc = lambda x, y: sm.mean_matched_score(sm.one_to_one(x, y, "cosine"))  # noqa: E731
        add("mean_matched_cosine", "decoder", "a<->b", mmc, Da, Db, fl_dec, sa, sb, rot)
        add("mmcs", "decoder", "a->b", lambda x, y: sm.mmcs(x, y)[0], Da, Db, fl_dec, sa, sb, rot)
        add("mmcs", "decoder", "b->a", lambda x, y: sm.mmcs(y, x)[0], Da, Db, fl_dec, sa, sb, rot)
        if _has_encoder(a) and _has_encoder(b):
            Ea, Eb = encoder_directions(a), encoder_directions(b)
            fl_enc = fl_dec  # a random dictionary has no separate encoder: tied floor
            for t in thresholds:
                def shf(x: Any, y: Any, t: float = t) -> float:
                    return sm.shared_fraction(x[0], x[1], y[0], y[1], (t,))[t]

                sa2 = ((Ea, Da), (encoder_directions(sky_a), decoder_directions(sky_a))) if sky_a is not None else None
                sb2 = ((Eb, Db), (encoder_directions(sky_b), decoder_directions(sky_b))) if sky_b is not None else None
                add(f"shared_fraction@{t:g}", "encoder+decoder", "a->b", shf, (Ea, Da), (Eb, Db),
                    (fl_enc, fl_dec), sa2, sb2)
    else:
        rows.append({"metric": "mean_matched_cosine", "view": "decoder", "direction": "a<->b", "value": np.nan,
                     "floor": np.nan, "skyline_a": np.nan, "skyline_b": np.nan, "normalised": np.nan,
                     "p_value": np.nan, "source": _SOURCES["mean_matched_cosine"],
                     "note": f"widths differ ({Da.shape[1]} vs {Db.shape[1]}): weight metrics need a shared space; "
                             "see the activation metrics"})

    # ---- activation view ----
    if activations is not None:
        ta, tb = _pair(token_ids)
        ca = a if isinstance(a, FeatureCodes) else encode_codes(a, xa, ta)
        cb = b if isinstance(b, FeatureCodes) else encode_codes(b, xb, tb)
        sca = encode_codes(sky_a, xa, ta) if sky_a is not None else None
        scb = encode_codes(sky_b, xb, tb) if sky_b is not None else None
        sa = (ca, sca) if sca is not None else None
        sb = (cb, scb) if scb is not None else None
        shuf = cached(bl.shuffle_tokens, "shuffle")
        add("mppc", "activations", "a->b", lambda x, y: sm.mppc(x, y)[0], ca, cb, None, sa, sb, shuf, True)
        add("mppc", "activations", "b->a", lambda x, y: sm.mppc(y, x)[0], ca, cb, None, sa, sb, shuf, True)
        matched = lambda x, y: sm.one_to_one(x, y, "pearson")  # noqa: E731
        add("mean_matched_correlation", "activations", "a<->b", lambda x, y: matched(x, y).mean_score, ca, cb,
            None, sa, sb, shuf, True)
        add(f"shared_fraction_corr@{corr_threshold:g}", "activations", "a->b",
            lambda x, y: matched(x, y).fraction_above(corr_threshold, x.n), ca, cb, None, sa, sb, shuf, True)
        add("linear_cka", "activations", "a<->b", sm.linear_cka_codes, ca, cb, None, sa, sb, shuf, True)
        # SVCCA / RSA on decoder rows of activation-matched pairs (works across widths, Lan et al. 2024);
        # floor and p-value: the same rows with the pairing shuffled (Lan et al.'s random-pairing baseline)
        def paired_rows(x: FeatureCodes, y: FeatureCodes, Dx: Tensor, Dy: Tensor) -> tuple[Tensor, Tensor] | None:
            res = matched(x, y)
            keep = res.scores > corr_threshold
            if keep.sum() < 3:
                return None
            return Dx[res.pairs[keep, 0]], Dy[res.pairs[keep, 1]]

        main = paired_rows(ca, cb, Da, Db)
        sky_rows_a = paired_rows(ca, sca, Da, decoder_directions(sky_a)) if sca is not None else None
        sky_rows_b = paired_rows(cb, scb, Db, decoder_directions(sky_b)) if scb is not None else None
        for name, fn in (("svcca", sm.svcca), ("rsa", sm.rsa)):
            if main is None:
                rows.append({"metric": name, "view": "decoder|activation-matched", "direction": "a<->b",
                             "value": np.nan, "floor": np.nan, "skyline_a": np.nan, "skyline_b": np.nan,
                             "normalised": np.nan, "p_value": np.nan, "source": _SOURCES[name],
                             "note": f"fewer than 3 pairs with correlation > {corr_threshold}"})
                continue
            X, Y = main
            shuf_pairs = lambda Yr, s: Yr[torch.randperm(len(Yr), generator=torch.Generator().manual_seed(s))]  # noqa: E731
            add(name, "decoder|activation-matched", "a<->b", fn, X, Y, None,
                sky_rows_a, sky_rows_b, shuf_pairs, True)
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df
