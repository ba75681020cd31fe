"""Pieces shared by the analyses: the result object, codes on the shared spans, and baselines.

Every similarity an analysis reports comes with

- a **floor**: the same statistic against token-shuffled codes (activation view; the features of one
  side no longer see the same text), computed with :func:`universality.match.baselines.shuffle_tokens`;
- a **skyline**: the statistic between seed copies of one SAE trained on the same activations,
  reported as mean, min and max over all seed pairs (an interval over at least 3 seeds when the
  study has them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from universality.match import FeatureCodes, encode_codes
from universality.match.baselines import normalise, shuffle_tokens
from universality.match.summary import max_similarity

#: Cross comparisons read side A's seed copy ``A_SEED`` and side B's ``B_SEED``: two SAEs with the same
#: seed start from the same initial weights, which would make them look alike for that reason alone.
#: The seed skyline compares different seeds too, so every figure and its skyline are on equal terms.
A_SEED, B_SEED = 0, 1

#: a feature is *specific* to a set of tokens when at least this share of its activation mass lies there ...
SPECIFIC_MASS = 0.9
#: ... and it fires on at least this many evaluation tokens
MIN_FIRES = 5

__all__ = ["A_SEED", "B_SEED", "SPECIFIC_MASS", "MIN_FIRES", "CONTEXT_EXCESS", "mass_share", "context_excess", "AnalysisResult", "Codebook", "Interval", "per_feature_mppc", "skyline_interval", "shuffled_floor", "norm_row"]


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


def norm_row(analysis: str, comparison: str, metric: str, value: float, floor: float,
             skyline: Interval | float | None, **extra: Any) -> dict[str, Any]:
    """A tidy row: raw value, floor, skyline and ``(x - floor) / (skyline - floor)`` (or why not)."""
    sky = skyline.mean if isinstance(skyline, Interval) else skyline
    normalised, note = normalise(value, floor, sky if sky is not None else float("nan"))
    row = {"analysis": analysis, "comparison": comparison, "metric": metric, "value": value, "floor": floor,
           "skyline": sky, "normalised": normalised, "note": note}
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
