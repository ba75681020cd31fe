"""Pieces shared by the analyses: the result object, codes on the shared spans, and baselines.

Every similarity an analysis reports comes with

- a **floor**: the same statistic against token-shuffled codes (activation view; the features of one
  side no longer see the same text), computed with :func:`universality.match.baselines.shuffle_tokens`;
- a **skyline**: the statistic between seed copies of one SAE trained on the same activations,
  reported as mean, min and max over all seed pairs (an interval over at least 3 seeds when the
  study has them): the *SAE-seed skyline*. Comparisons across models (architectures, data subsets)
  also get the *model-seed skyline* of Wang et al. 2024 (*Towards Universality: Studying Mechanistic
  Similarity Across Language Model Architectures*): the statistic between SAEs on two models
  pre-trained with different seeds (:func:`model_seed_skyline`, when ``study.model_seed_skyline``
  trains the copies), and then one normalised value per skyline (:func:`norm_row`).

Rows carry a ``note`` where a number needs one: a normalised value above 1, dead latents left out
of MPPC, a skyline that was not computed, a ratio left blank; ``value_meaning`` says what ``value``
is where that is not a similarity (a Gromov-Wasserstein distance: lower is closer).
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.studies.cards import CardSection
from universality.data import align_span_tokens
from universality.match import FeatureCodes, encode_codes
from universality.match import intervals as iv
from universality.match.baselines import normalise, shuffle_tokens
from universality.match.compare import ABOVE_SKYLINE_NOTE, with_note
from universality.match.similarity import topk_partners
from universality.match.summary import max_similarity
from universality.study.pipeline import Cell

#: Cross comparisons read side A's seed copy ``A_SEED`` and side B's ``B_SEED``: two SAEs with the same
#: seed start from the same initial weights, which would make them look alike for that reason alone.
#: The seed skyline compares different seeds too, so every figure and its skyline are on equal terms.
A_SEED, B_SEED = 0, 1

#: a feature is *specific* to a set of tokens when at least this share of its activation mass lies there ...
SPECIFIC_MASS = 0.9
#: ... and it fires on at least this many evaluation tokens
MIN_FIRES = 5

#: What ``value`` is in an MPPC row.
MPPC_MEANING = "mean over live features of the best Pearson correlation with the other side (MPPC; higher = closer)"
#: The two skylines, as the report names them.
SAE_SEED = "SAE-seed skyline"
MODEL_SEED = "model-seed skyline"
SKYLINES_TEXT = (f"normalised_sae_seed = (value - floor) / (skyline_sae_seed - floor) uses the {SAE_SEED} (MPPC "
                 f"between two SAE seeds on one model); normalised_model_seed = (value - floor) / (skyline_model_seed - "
                 f"floor) uses the {MODEL_SEED} (MPPC between SAEs on two models pre-trained with different seeds, "
                 "Wang et al. 2024).")

__all__ = ["A_SEED", "B_SEED", "SPECIFIC_MASS", "MIN_FIRES", "CONTEXT_EXCESS", "MPPC_MEANING", "SAE_SEED", "MODEL_SEED",
           "SKYLINES_TEXT", "mass_share", "context_excess", "AnalysisResult", "Codebook", "Interval", "ModelSeedSkyline",
           "aligned_eval_rows", "per_feature_mppc", "weights_digest", "skyline_interval", "shuffled_floor", "dead_note", "seed_copy_codes",
           "model_seed_skyline", "mean_skyline", "skylines_text", "norm_row", "SMALL_N", "count_or_share"]


@dataclass
class AnalysisResult:
    """What one analysis hands to the report: prose, tables, figures, findings and tidy rows."""

    name: str
    title: str
    text: str = ""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    tidy: list[dict[str, Any]] = field(default_factory=list)
    #: sections of the study's card page behind this analysis's figures (linked from its findings)
    cards: list[CardSection] = field(default_factory=list)


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.lo:.3f}, {self.hi:.3f}] (n={self.n})"


class Codebook:
    """Sparse codes of SAEs on the shared evaluation spans, computed once per (cell, site, seed)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self._codes: dict[tuple, FeatureCodes] = {}

    def acts(self, model: str, revision: str, site: str) -> torch.Tensor:
        return self.ctx.eval_acts(model, revision)[site].float()

    def token_ids(self, model: str, revision: str) -> torch.Tensor:
        return self.ctx.eval_acts(model, revision)["token_ids"]

    def codes(self, cell, site: str, seed_index: int = 0, acts_from: tuple[str, str] | None = None) -> FeatureCodes:
        """Codes of SAE ``seed_index`` of ``cell`` at ``site`` on the eval activations of ``acts_from``
        (``(model, revision)``; default: the cell's own model and revision)."""
        src = acts_from or (cell.model, cell.revision)
        key = (cell, site, seed_index, src)
        if key not in self._codes:
            sae = self.ctx.saes(cell)[site][seed_index]
            self._codes[key] = encode_codes(sae, self.acts(*src, site), token_ids=self.token_ids(*src))
        return self._codes[key]


def aligned_eval_rows(ctx, book: Codebook, a: tuple[str, str], b: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows of a, rows of b, token ids)``: the eval rows of models ``a`` and ``b`` (``(model, revision)``) that
    read the same text. One tokenizer: every row, paired by position, with the shared token ids. Two tokenizers:
    the last token of each unit of text both cover with whole tokens (:func:`universality.data.align_span_tokens`),
    with the unit index as the token id (one fingerprint for both sides)."""
    ta, tb = book.token_ids(*a), book.token_ids(*b)
    if ta.shape == tb.shape and torch.equal(ta, tb):
        idx = torch.arange(ta.shape[0])
        return idx, idx, ta
    al = align_span_tokens(ctx.eval_tokens(a[0]), ctx.eval_tokens(b[0]))
    ia, ib = al.pairs()
    keep = (ia >= 0) & (ib >= 0)
    return ia[keep], ib[keep], torch.arange(int(keep.sum()))


def weights_digest(*saes: Any) -> str:
    """A short SHA-256 of the dictionaries' weights: part of the cache key of a stage computed from them."""
    h = hashlib.sha256()
    for sae in saes:
        for t in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def per_feature_mppc(ca: FeatureCodes, cb: FeatureCodes, live_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature maximum Pearson correlation, both directions (MPPC, Wang et al. 2024), over the
    features that fire at least once on the evaluation tokens (a feature that never fires there has
    no correlation to speak of; counting it as 0 would make every mean depend on the dead fraction).

    ``live_only=False`` keeps one entry per feature, NaN for the features that never fire."""
    ra, rb = max_similarity(ca, cb, "pearson")
    ra, rb = ra.double().cpu().numpy(), rb.double().cpu().numpy()
    live_a, live_b = (ca.nnz > 0).cpu().numpy(), (cb.nnz > 0).cpu().numpy()
    if live_only:
        return ra[live_a], rb[live_b]
    return np.where(live_a, ra, np.nan), np.where(live_b, rb, np.nan)


N_BOOT = 100
"""Block-bootstrap replicates of the studies' MPPC intervals (the ``ci_low``/``ci_high`` columns)."""


def mppc_ci(ca: FeatureCodes, cb: FeatureCodes, direction: str = "a->b", n_boot: int = N_BOOT,
            seed: int = 0) -> dict[str, Any]:
    """``{"ci_low", "ci_high", "ci_method"}``: the 95% circular block-bootstrap interval over evaluation
    tokens of :func:`per_feature_mppc`'s mean (``direction`` ``"a->b"``, ``"b->a"`` or ``"both"``, the mean of
    the two), each live feature's partner fixed from the full sample (re-maximising on resamples is biased
    upward; :mod:`universality.match.intervals`), percentile interval, blocks of
    :func:`~universality.match.intervals.default_block` tokens."""
    T = ca.n_tokens
    W = iv.block_bootstrap_weights(T, n_boot, None, seed)
    tk = iv.WeightedCodes(ca, cb)
    top = topk_partners(ca, cb, "pearson", k=1, progress=False)
    ra, rb = top.row_values[:, 0], top.col_values[:, 0]
    best = (top.row_indices[:, 0].numpy(), top.col_indices[:, 0].numpy())
    live_a = np.flatnonzero((ca.nnz > 0).cpu().numpy())
    live_b = np.flatnonzero((cb.nnz > 0).cpu().numpy())
    reps, value = [], []
    if direction in ("a->b", "both") and len(live_a):
        reps.append(tk.pair_correlations(W, live_a, best[0][live_a]).mean(1))
        value.append(float(ra.double()[live_a].mean()))
    if direction in ("b->a", "both") and len(live_b):
        reps.append(tk.pair_correlations(W, best[1][live_b], live_b).mean(1))
        value.append(float(rb.double()[live_b].mean()))
    if not reps:
        return {"ci_low": float("nan"), "ci_high": float("nan"), "ci_method": "none: no live feature"}
    ci = iv.interval_from_replicates(np.mean(reps, axis=0), float(np.mean(value)), 0.95, "percentile")
    return {"ci_low": ci.low, "ci_high": ci.high,
            "ci_method": f"{ci.method}, blocks of {iv.default_block(T)} tokens; partners fixed from the full sample"}


def skyline_interval(codes: list[FeatureCodes]) -> tuple[Interval, np.ndarray]:
    """MPPC between every pair of seed copies (both directions): interval of the means, and the
    per-feature scores of the first pair (for distribution plots)."""
    means, first = [], None
    for i in range(len(codes)):
        for j in range(i + 1, len(codes)):
            ra, rb = per_feature_mppc(codes[i], codes[j])
            means += [float(ra.mean()), float(rb.mean())]
            first = ra if first is None else first
    arr = np.asarray(means)
    return Interval(float(arr.mean()), float(arr.min()), float(arr.max()), len(codes)), first


def shuffled_floor(ca: FeatureCodes, cb: FeatureCodes, seed: int = 0) -> tuple[float, np.ndarray]:
    """MPPC of ``a`` against token-shuffled ``b``: the chance level of the activation view."""
    ra, _ = per_feature_mppc(ca, shuffle_tokens(cb, seed=seed))
    return float(ra.mean()), ra


@dataclass(frozen=True)
class ModelSeedSkyline:
    """The model-seed skyline of a comparison: ``value`` (``None`` when not computed) and ``why_not``."""

    value: float | None
    why_not: str = ""


def _not_computed(ctx, model: str) -> str:
    if ctx.cfg.model(model).zoo is None:
        return f"{MODEL_SEED} not computed ({model} is not a zoo model, so no seed copy is trained)"
    return (f"{MODEL_SEED} not computed (study.model_seed_skyline is off; set study.model_seed_skyline=true "
            "to train a seed copy of each zoo model)")


def seed_copy_codes(ctx, model: str, data: str, site: str, rows: torch.Tensor | None = None,
                    token_ids: torch.Tensor | None = None) -> FeatureCodes | None:
    """Codes of SAE seed :data:`B_SEED` (trained on ``data`` activations) of the model-seed copy of
    ``model`` at ``site``, on its eval activations (``rows`` of them, with ``token_ids``, when given),
    or ``None`` when the study has no copy of ``model``."""
    copy = ctx.seed_copy(model)
    if copy is None:
        return None
    rev = ctx.revisions(copy)[-1]
    acts = ctx.eval_acts(copy, rev)
    x, tok = acts[site].float(), acts["token_ids"]
    if rows is not None:
        x, tok = x[rows], tok[rows]
    sae = ctx.saes(Cell(copy, rev, data))[site][B_SEED]
    return encode_codes(sae, x, token_ids=tok if token_ids is None else token_ids)


def model_seed_skyline(ctx, model: str, codes: FeatureCodes, copy_codes: FeatureCodes | None) -> ModelSeedSkyline:
    """MPPC (mean of both directions, live features) between ``codes`` (an SAE on ``model``) and
    ``copy_codes`` (an SAE of another seed on its model-seed copy, :func:`seed_copy_codes`): the
    skyline Wang et al. 2024 read cross-architecture MPPC against."""
    if copy_codes is None:
        return ModelSeedSkyline(None, _not_computed(ctx, model))
    ra, rb = per_feature_mppc(codes, copy_codes)
    return ModelSeedSkyline((float(ra.mean()) + float(rb.mean())) / 2)


def mean_skyline(a: ModelSeedSkyline, b: ModelSeedSkyline) -> ModelSeedSkyline:
    """The mean of two models' model-seed skylines (like the SAE-seed skylines of a cross comparison)."""
    if a.value is None or b.value is None:
        return ModelSeedSkyline(None, a.why_not or b.why_not)
    return ModelSeedSkyline((a.value + b.value) / 2)


def skylines_text(ctx) -> str:
    """The report's sentence on which skyline each normalised value uses (and how to get the missing one)."""
    if ctx.cfg.model_seed_skyline:
        return SKYLINES_TEXT
    if not any(m.zoo is not None for m in ctx.cfg.models):
        return (SKYLINES_TEXT + f" The {MODEL_SEED} was not computed here (normalised_model_seed is blank): "
                "no model is a zoo model, so no model-seed copy can be trained.")
    return (SKYLINES_TEXT + f" The {MODEL_SEED} was not computed here (normalised_model_seed is blank): set "
            "study.model_seed_skyline=true to train a model-seed copy of each zoo model.")


#: below this many items a finding quotes counts ("1 of 1"), not a percentage ("100%")
SMALL_N = 10


def count_or_share(k: int, n: int) -> str:
    """``k`` out of ``n`` for a finding: ``"k of n"`` when ``n`` is below :data:`SMALL_N` (a percentage of
    a handful of items reads as more than it is), else the percentage; ``"n/a"`` when ``n`` is 0."""
    if n <= 0:
        return "n/a"
    if n < SMALL_N:
        return f"{k} of {n}"
    return f"{k / n:.0%}"


def dead_note(ca: FeatureCodes, cb: FeatureCodes, a: str = "A", b: str = "B") -> str:
    """How many features of each side never fire on the tokens, so MPPC leaves them out ('' when none)."""
    da, db = int((ca.nnz == 0).sum()), int((cb.nnz == 0).sum())
    if not (da or db):
        return ""
    return f"dead latents left out of MPPC: {da} of {ca.n} ({a}), {db} of {cb.n} ({b})"


def _normalised(value: float, floor: float, sky: float | None, name: str) -> tuple[float, str]:
    """``(x - floor) / (sky - floor)`` and its note, naming skyline ``name``; a ratio above 1 is noted."""
    norm, note = normalise(value, floor, sky if sky is not None else float("nan"))
    if note:
        note = f"{name}: {note}"
    if np.isfinite(norm) and norm > 1:
        note = with_note(note, f"above the {name} (normalised {norm:.3f} > 1)")
    return norm, note


def norm_row(analysis: str, comparison: str, metric: str, value: float, floor: float,
             skyline: Interval | float | None, model_skyline: ModelSeedSkyline | None = None, note: str = "",
             **extra: Any) -> dict[str, Any]:
    """A tidy row: raw value, floor, skyline(s) and ``(x - floor) / (skyline - floor)`` (or why not).

    Without ``model_skyline`` (comparisons within one model): columns ``skyline`` and
    ``normalised`` against the seed skyline. With it (comparisons across models): ``skyline_sae_seed``
    / ``normalised_sae_seed`` and ``skyline_model_seed`` / ``normalised_model_seed``, one normalised
    value per skyline (NaN with a note when that skyline is missing). ``note`` (e.g.
    :func:`dead_note`) is joined to the notes on the ratios, among them a normalised value above 1.
    """
    sky = skyline.mean if isinstance(skyline, Interval) else skyline
    row = {"analysis": analysis, "comparison": comparison, "metric": metric, "value": value, "floor": floor}
    if model_skyline is None:
        normalised, why = normalise(value, floor, sky if sky is not None else float("nan"))
        if np.isfinite(normalised) and normalised > 1:
            why = with_note(why, f"{ABOVE_SKYLINE_NOTE} (normalised {normalised:.3f} > 1)")
        row.update(skyline=sky, normalised=normalised, note=with_note(why, note))
    else:
        n_sae, why_sae = _normalised(value, floor, sky, SAE_SEED)
        if model_skyline.value is None:
            n_model, why_model = float("nan"), model_skyline.why_not
        else:
            n_model, why_model = _normalised(value, floor, model_skyline.value, MODEL_SEED)
        row.update(skyline_sae_seed=sky, normalised_sae_seed=n_sae,
                   skyline_model_seed=float("nan") if model_skyline.value is None else model_skyline.value,
                   normalised_model_seed=n_model, note=with_note(with_note(why_sae, why_model), note))
    if isinstance(skyline, Interval):
        row.update(skyline_lo=skyline.lo, skyline_hi=skyline.hi, n_seeds=skyline.n)
    row.update(extra)
    return row


def context_excess(z: torch.Tensor, rows: torch.Tensor, token_ids: torch.Tensor) -> np.ndarray:
    """Share of each feature's activation mass on the ``rows`` tokens beyond what token identity predicts.

    .. math::
        e_f = \\frac{\\sum_{t \\in R} z_{tf} - \\sum_{t \\in R} \\bar z_{v(t) f}}{\\sum_t z_{tf}}, \\qquad
        \\bar z_{vf} = \\operatorname{mean}_{s \\notin R,\\, v(s) = v} z_{sf}

    where :math:`v(t)` is token ``t``'s id: the expected mass on ``R`` if the feature responded to
    token identity alone, estimated on the same token ids outside ``R`` (positions whose id never
    occurs outside ``R`` are taken as fully explained by identity). A feature that fires on a word
    wherever it occurs gets about 0; one that fires on words only inside the passage ``R`` gets
    close to its mass share there. Negative values (firing less on ``R``) are kept.
    ``z``: ``(T, n)`` codes; ``rows``: ``(T,)`` bool; ``token_ids``: ``(T,)``.
    """
    mass = z.clamp_min(0).double()
    total = mass.sum(0)
    ids = token_ids.long()
    vocab = int(ids.max()) + 1 if ids.numel() else 1
    outside = ~rows
    sums = torch.zeros(vocab, mass.shape[1], dtype=torch.float64).index_add_(0, ids[outside], mass[outside])
    counts = torch.zeros(vocab, dtype=torch.float64).index_add_(0, ids[outside], torch.ones(int(outside.sum()), dtype=torch.float64))
    seen = counts > 0
    mean = sums / counts.clamp_min(1).unsqueeze(1)
    inside_ids = ids[rows]
    expected_rows = torch.where(seen[inside_ids].unsqueeze(1), mean[inside_ids], mass[rows])
    excess = mass[rows].sum(0) - expected_rows.sum(0)
    return torch.where(total > 0, excess / total.clamp_min(1e-12), torch.zeros_like(total)).numpy()


#: a feature responds to the injected passage's *context* when this share of its mass there is beyond token identity
CONTEXT_EXCESS = 0.5


def mass_share(z: torch.Tensor, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Share of each feature's activation mass on the ``rows`` tokens, and its firing count.

    ``z``: ``(T, n)`` codes; ``rows``: ``(T,)`` bool. A feature is specific to those tokens when the
    share is at least :data:`SPECIFIC_MASS` and it fires at least :data:`MIN_FIRES` times.
    """
    mass = z.clamp_min(0).double()
    total = mass.sum(0)
    share = torch.where(total > 0, mass[rows].sum(0) / total.clamp_min(1e-12), torch.zeros_like(total))
    return share.numpy(), (z > 0).sum(0).numpy()
