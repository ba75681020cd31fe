"""Features across layers and components of one model (residual, attention, MLP, mixer).

Every pair of sites is compared by activation correlation on the shared evaluation spans (MPPC,
Wang et al. 2024), and residual-stream sites of equal width additionally by decoder cosine (MMCS,
Sharkey et al. 2022), since the residual stream keeps one basis across layers. Each site's seed
skyline and the token-shuffled floor are reported; lineage follows features through the residual
layers in order.
"""

from __future__ import annotations

import itertools

import pandas as pd

from analysis import plots
from analysis.studies.common import A_SEED, B_SEED, AnalysisResult, Codebook, dead_note, mppc_ci, norm_row, per_feature_mppc, shuffled_floor, skyline_interval
from universality.match import lineage
from universality.match.summary import mmcs
from universality.match.views import decoder_directions
from universality.study.pipeline import Cell

NAME = "layer_flow"


def run(ctx, figures_dir) -> AnalysisResult:
    model = ctx.cfg.models[0].name
    rev = ctx.revisions(model)[-1]
    cell = Cell(model, rev, "D")
    typed = sorted(ctx.sites_of(model))  # forward order
    sites = [s.name for s in typed]
    site_of = dict(zip(sites, typed))
    book = Codebook(ctx)
    res = AnalysisResult(NAME, f"Layer and component flow in {model}")
    codes = {s: [book.codes(cell, s, i) for i in range(len(ctx.cfg.sae.seeds))] for s in sites}
    sky = {s: skyline_interval(codes[s])[0] for s in sites}
    rows, heat = [], []
    for sa, sb in itertools.product(sites, sites):
        fa, fb = per_feature_mppc(codes[sa][A_SEED], codes[sb][B_SEED])
        heat.append({"a": sa, "b": sb, "mppc": float(fa.mean())})
        if site_of[sa] < site_of[sb]:
            floor, _ = shuffled_floor(codes[sa][A_SEED], codes[sb][B_SEED], seed=ctx.cfg.seed)
            rows.append(norm_row(NAME, f"{sa} vs {sb}", "mppc", (float(fa.mean()) + float(fb.mean())) / 2, floor,
                                 (sky[sa].mean + sky[sb].mean) / 2, site_a=sa, site_b=sb,
                                 note=dead_note(codes[sa][A_SEED], codes[sb][B_SEED], sa, sb),
                                 **mppc_ci(codes[sa][A_SEED], codes[sb][B_SEED], "both", seed=ctx.cfg.seed)))
            A = ctx.saes(cell)[sa][A_SEED]
            B = ctx.saes(cell)[sb][B_SEED]
            if site_of[sa].is_residual and site_of[sb].is_residual and A.W_dec.shape[1] == B.W_dec.shape[1]:
                ab, ba = mmcs(decoder_directions(A), decoder_directions(B))
                own = mmcs(decoder_directions(A), decoder_directions(ctx.saes(cell)[sa][B_SEED]))
                rows.append(norm_row(NAME, f"{sa} vs {sb}", "decoder mmcs", (ab + ba) / 2, float("nan"),
                                     sum(own) / 2, site_a=sa, site_b=sb))
    mat = pd.DataFrame(heat).pivot(index="a", columns="b", values="mppc").loc[sites, sites]
    res.figures.append(("Site-by-site MPPC (row -> column)",
                        plots.heatmap(mat, figures_dir / "layer_flow_heatmap.png", f"{model}: sites x sites (MPPC)",
                                      cbar_label="MPPC", vmin=0, vmax=1)))
    resid = [s.name for s in typed if s.hook == "hook_resid_post"]
    if len(resid) >= 2:
        lin = lineage([ctx.saes(cell)[s][(A_SEED, B_SEED)[i % 2]] for i, s in enumerate(resid)], threshold=ctx.cfg.match.corr_threshold, view="activations",
                      labels=resid, activations=[book.acts(model, rev, s) for s in resid],
                      token_ids=book.token_ids(model, rev))
        res.tables["residual_lineage_events"] = lin.counts().reset_index()
        if len(lin.chains):
            res.findings.append(f"Residual stream: {len(lin.chains)} feature chains through {len(resid)} layers, "
                                f"mean persistence {lin.chains['persistence'].mean():.2f} layers.")
    table = pd.DataFrame(rows)
    res.tables["site_pairs"] = table
    res.tidy += rows
    mp = table[table["metric"] == "mppc"].sort_values("value", ascending=False)
    if len(mp):
        top = mp.iloc[0]
        res.findings.append(f"Most similar pair of sites: {top['comparison']} (MPPC {top['value']:.3f}, floor "
                            f"{top['floor']:.3f}, skyline {top['skyline']:.3f}).")
    res.text = ("Each site's SAE is compared with every other site's on the same tokens. Residual-stream sites also "
                "get a decoder-cosine comparison (same basis across layers). Skyline: mean seed-to-seed MPPC of the "
                "two sites; floor: token-shuffled codes.")
    return res
