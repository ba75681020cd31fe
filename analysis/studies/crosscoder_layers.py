"""The crosscoder arm of layer flow: one acausal cross-layer crosscoder over every site of a model.

A BatchTopK crosscoder reads all of the model's sites (layers and components) on the same tokens, one
decoder block per site (Lindsey et al. 2024, acausal crosscoder; :func:`universality.study.stages.train_crosscoders`
with one store listed once per site). A live latent *spans* a site when its decoder norm there reaches
``SPAN_MIN`` of its largest per-site norm (norms in the trainer's per-source normalised units, so sites of
different scale compare). Read-outs: how many sites each live latent spans (histogram), and the *co-span*
matrix: of the latents spanning site ``a``, the fraction that also span ``b``.

Two arms per forward pair of consecutive sites ``a -> b`` ("does a feature of ``a`` persist at ``b``?"):

- crosscoder: the co-span fraction ``a -> b``; floor: the fraction of all live latents that span ``b``
  (what the co-span would be if spanning ``a`` said nothing about ``b``); skyline: the same read-out of
  the copy anchor (site ``a`` crossed with a copy of itself); seed null: a second crosscoder seed;
- matching: the fraction of live SAE features of ``a`` whose best Pearson partner among ``b``'s SAE
  features reaches ``match.corr_threshold`` (seeds ``A_SEED`` -> ``B_SEED``; the spread swaps them).

The arms agree on a pair when the two fractions differ by at most the larger of the two spreads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor

from analysis import plots
from analysis.studies.common import A_SEED, B_SEED, AnalysisResult, Codebook, norm_row, per_feature_mppc
from universality.crosscoder.analysis import decoder_norm_trajectories, live_latents
from universality.errors import ConfigError
from universality.sae.crosscoder import CrosscoderSAE
from universality.study.pipeline import Cell
from universality.study.stages import train_crosscoders

NAME = "crosscoder_layers"
SEEDS = 2
SPAN_MIN = 0.5
"""A latent spans a site when its decoder norm there is at least this fraction of its largest per-site norm."""


def spans(cc: CrosscoderSAE, x: Tensor) -> Bool[Tensor, "n_live n_sources"]:
    """Which sites each live latent (firing on the raw concatenated activations ``x``) spans."""
    norms = decoder_norm_trajectories(cc)
    live = live_latents(cc, x)
    return (norms >= SPAN_MIN * norms.max(dim=1, keepdim=True).values.clamp_min(1e-12))[live]


def co_span(span: Bool[Tensor, "n n_sources"], a: int, b: int) -> float:
    """Of the latents spanning source ``a``, the fraction that also span ``b`` (NaN when none spans ``a``)."""
    on_a = span[:, a]
    return float(span[on_a, b].float().mean()) if bool(on_a.any()) else float("nan")


def persists(ctx, book: Codebook, cell: Cell, a: str, b: str, seeds: tuple[int, int]) -> float:
    """Fraction of live SAE features of site ``a`` (seed ``seeds[0]``) whose best Pearson partner among site
    ``b``'s features (seed ``seeds[1]``) reaches ``match.corr_threshold``."""
    fa, _ = per_feature_mppc(book.codes(cell, a, seeds[0]), book.codes(cell, b, seeds[1]))
    return float((fa >= ctx.cfg.match.corr_threshold).mean()) if fa.size else float("nan")


def run(ctx, figures_dir) -> AnalysisResult:
    model = ctx.cfg.models[0].name
    rev = ctx.revisions(model)[-1]
    cell = Cell(model, rev, ctx.cfg.models[0].data)
    sites = [s.name for s in sorted(ctx.sites_of(model))]  # forward order
    if len(sites) < 2:
        raise ConfigError(f"crosscoder_layers needs at least two sites of {model}, got {sites}",
                          "list two or more sites (layers or components) in study.sites")
    if len(ctx.cfg.sae.seeds) < SEEDS:
        raise ConfigError(f"crosscoder_layers needs {SEEDS} SAE seeds", "set sae.seeds to at least two seeds")
    book = Codebook(ctx)
    store = ctx.store(cell)
    seeds = list(ctx.cfg.sae.seeds[:SEEDS])
    ccs = train_crosscoders(ctx.cfg, ctx.cache, [store] * len(sites), sites, [model] * len(sites), seeds, label=f"cross-layer crosscoder {model}")
    x = torch.cat([book.acts(model, rev, s) for s in sites], dim=1)
    sp = [spans(cc, x) for cc in ccs]
    x0 = book.acts(model, rev, sites[0])
    anchor = train_crosscoders(ctx.cfg, ctx.cache, [store, store], [sites[0], sites[0]], [model, model], seeds[:1],
                               label=f"crosscoder {model}:{sites[0]} x copy")[0]
    anchor_span = spans(anchor, torch.cat([x0, x0], dim=1))
    anchor_value = co_span(anchor_span, 0, 1)

    res = AnalysisResult(NAME, f"Cross-layer crosscoder over {len(sites)} sites of {model}")
    rows, two = [], []
    for i in range(len(sites) - 1):
        a, b = sites[i], sites[i + 1]
        comp = f"{a} -> {b}"
        v = [co_span(s, i, i + 1) for s in sp]
        floor = float(sp[0][:, i + 1].float().mean()) if len(sp[0]) else float("nan")
        spread = abs(v[0] - v[1])
        rows.append(norm_row(NAME, comp, "crosscoder co-span", v[0], floor, anchor_value,
                             note="latents spanning a that also span b; floor: share of all live latents spanning b; "
                                  "skyline: the copy anchor", value_seed2=v[1], seed_null_spread=spread,
                             site_a=a, site_b=b, n_live=int(len(sp[0]))))
        m_ab = persists(ctx, book, cell, a, b, (A_SEED, B_SEED))
        m_ba = persists(ctx, book, cell, a, b, (B_SEED, A_SEED))
        m_spread = abs(m_ab - m_ba)
        rows.append(norm_row(NAME, comp, "matching persistence", m_ab, float("nan"), None,
                             note=f"live SAE features of a with a partner in b at Pearson >= {ctx.cfg.match.corr_threshold}",
                             value_seed2=m_ba, seed_null_spread=m_spread, site_a=a, site_b=b))
        tol = max(spread, m_spread)
        agree = bool(abs(v[0] - m_ab) <= tol)
        two += [{"pair": comp, "arm": "crosscoder", "fraction": v[0], "seed_null_spread": spread, "floor": floor,
                 "skyline": anchor_value, "agree": agree},
                {"pair": comp, "arm": "matching", "fraction": m_ab, "seed_null_spread": m_spread, "floor": float("nan"),
                 "skyline": float("nan"), "agree": agree}]
        res.findings.append(
            f"{comp}: of the crosscoder latents spanning {a}, {v[0]:.3f} also span {b} (seed null spread {spread:.3f}; "
            f"floor {floor:.3f}, copy anchor {anchor_value:.3f}); matching finds a partner in {b} for {m_ab:.3f} of {a}'s "
            f"live SAE features (seed spread {m_spread:.3f}): the two arms " + ("agree" if agree else "disagree")
            + f" (difference {abs(v[0] - m_ab):.3f}, tolerance {tol:.3f}).")

    counts = sp[0].sum(dim=1).numpy() if len(sp[0]) else np.zeros(0, dtype=int)
    hist = pd.DataFrame({"sites_spanned": np.arange(1, len(sites) + 1)})
    hist["latents"] = [int((counts == n).sum()) for n in hist["sites_spanned"]]
    hist["fraction"] = hist["latents"] / max(1, len(counts))
    res.tables["span_counts"] = hist
    res.tables["two_arm"] = pd.DataFrame(two)
    res.tables[NAME] = pd.DataFrame(rows)
    res.tidy += rows
    if len(counts):
        single = float((counts == 1).mean())
        res.findings.insert(0, f"{len(counts)} live latents of the cross-layer crosscoder: {single:.3f} span one site, "
                               f"{float((counts == len(sites)).mean()):.3f} span all {len(sites)} (span: decoder norm at "
                               f">= {SPAN_MIN} of the latent's largest).")
        matrix = pd.DataFrame([[co_span(sp[0], i, j) for j in range(len(sites))] for i in range(len(sites))],
                              index=sites, columns=sites)
        res.tables["co_span"] = matrix.reset_index(names="site")
        res.figures.append(("Co-span of cross-layer crosscoder latents (row: spanning this site; value: share also spanning the column)",
                            plots.heatmap(matrix, figures_dir / "crosscoder_layers_co_span.png",
                                          f"Cross-layer crosscoder co-span, {model}", cbar_label="share of row's latents",
                                          vmin=0.0, vmax=1.0)))
    res.text = ("One BatchTopK crosscoder reads every site of the model on the same tokens (acausal cross-layer "
                "crosscoder); a live latent spans a site when its decoder norm there is at least "
                f"{SPAN_MIN} of its largest. The crosscoder arm's fraction for a pair of consecutive sites is the share "
                "of latents spanning the first that also span the second (floor: the share of all live latents spanning "
                "the second; skyline: a site crossed with a copy of itself; seed null: a second crosscoder seed). The "
                "matching arm counts live SAE features of the first site with a Pearson partner at "
                f"{ctx.cfg.match.corr_threshold} in the second. The arms agree when the fractions differ by at most the "
                "larger spread.")
    return res
