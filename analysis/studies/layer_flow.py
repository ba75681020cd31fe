"""Features across layers and components of one model (residual, attention, MLP, mixer).

Every pair of sites is compared by activation correlation on the shared evaluation spans (MPPC,
Wang et al. 2024), and residual-stream sites of equal width additionally by decoder cosine (MMCS,
Sharkey et al. 2022), since the residual stream keeps one basis across layers. Each site's seed
skyline and the token-shuffled floor are reported; lineage follows features through the residual
layers in order.

Every forward pair of sites (source before target) also gets a sparse linear *code map* from the
source's codes to the target's (:mod:`universality.eval.codemap`; feature flow as in Laptev et al. 2025),
scored by explained variance of the target codes on a held-out block of evaluation tokens, next to the
matching-only map (each target latent predicted from its correlation-matched source latent alone). Floor:
the map from token-shuffled source codes; skyline: the map between the target site's two SAE seeds.
"""

from __future__ import annotations

import dataclasses
import itertools

import pandas as pd

from analysis import plots
from analysis.studies.common import A_SEED, B_SEED, AnalysisResult, Codebook, dead_note, mppc_ci, norm_row, per_feature_mppc, shuffled_floor, skyline_interval
from universality.eval.codemap import CodeMapConfig, agreement, correlation_pairs, fit_code_map, matching_map_ev, shuffled_floor_ev
from universality.match import lineage
from universality.match.summary import mmcs
from universality.match.views import decoder_directions
from universality.study.pipeline import Cell

NAME = "layer_flow"

#: The code maps' fit: L1 on standardised weights, Adam steps (full batch on small evaluation sets), the last
#: quarter of the evaluation tokens held out. A few tenths of a second per map on the tiny studies.
CODE_MAP = CodeMapConfig(l1=0.05, steps=200, lr=0.05, batch_size=1024, holdout=0.25)
CODE_MAP_MEANING = ("held-out explained variance of the target site's codes (standardised, live latents) from a sparse "
                    "linear map of the source site's codes; higher = more of the target explained")
MATCHING_MEANING = ("held-out explained variance of the target site's codes when each target latent is predicted from "
                    "its correlation-matched (Hungarian, training tokens) source latent only")


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
    maps = _code_maps(ctx, sites, site_of, codes)
    rows += maps["rows"]
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
    if len(maps["table"]):
        res.tables["code_maps"] = maps["table"]
        comp = maps["table"][~maps["table"]["source_residual"] & maps["table"]["target_residual"]]
        if len(comp):
            top = comp.sort_values("code_map_ev", ascending=False).iloc[0]
            res.findings.append(
                f"Strongest component -> residual code map: {top['site_a']} -> {top['site_b']}, held-out EV "
                f"{top['code_map_ev']:.3f} (floor {top['floor_ev']:.3f}, skyline {top['skyline_ev']:.3f}); matching "
                f"one latent to one gives {top['matching_ev']:.3f}, and {top['agreement']:.0%} of matched target latents "
                f"have their matched partner as strongest source in the map (density {top['density']:.3f}).")
    res.text = ("Each site's SAE is compared with every other site's on the same tokens. Residual-stream sites also "
                "get a decoder-cosine comparison (same basis across layers). Skyline: mean seed-to-seed MPPC of the "
                "two sites; floor: token-shuffled codes. Code maps: a sparse linear map (L1 on the weights) from each "
                "earlier site's codes to each later site's, fit on the first three quarters of the evaluation tokens "
                "and scored by explained variance on the last quarter, against matching each target latent to one "
                "source latent; skyline: the same map between the target site's two SAE seeds.")
    return res


def _code_maps(ctx, sites, site_of, codes) -> dict:
    """Tidy rows and a table of code maps for every forward pair of sites (see the module docstring)."""
    cfg = dataclasses.replace(CODE_MAP, seed=ctx.cfg.seed)
    sky, sky_match = {}, {}
    for sb in sites:
        own, other = codes[sb][A_SEED], codes[sb][B_SEED]
        sky[sb] = fit_code_map(own, other, cfg).ev
        sky_match[sb] = matching_map_ev(own, other, correlation_pairs(own, other, cfg.holdout), cfg.holdout)
    rows, table = [], []
    for sa, sb in itertools.permutations(sites, 2):
        if not site_of[sa] < site_of[sb]:
            continue
        src, tgt = codes[sa][A_SEED], codes[sb][B_SEED]
        fit = fit_code_map(src, tgt, cfg)
        floor = shuffled_floor_ev(src, tgt, cfg)
        pairs = correlation_pairs(src, tgt, cfg.holdout)
        match_ev = matching_map_ev(src, tgt, pairs, cfg.holdout)
        note = (f"dead on the training tokens: {fit.dead_sources} of {src.n} source and {fit.dead_targets} of {tgt.n} "
                "target latents (no weight / not averaged)") if fit.dead_sources or fit.dead_targets else ""
        for metric, value, meaning in (("code map EV", fit.ev, CODE_MAP_MEANING), ("matching-only EV", match_ev, MATCHING_MEANING)):
            rows.append(norm_row(NAME, f"{sa} -> {sb}", metric, value, floor, sky[sb], note=note, site_a=sa, site_b=sb,
                                 value_meaning=meaning))
        table.append({"site_a": sa, "site_b": sb, "source_residual": site_of[sa].is_residual,
                      "target_residual": site_of[sb].is_residual, "code_map_ev": fit.ev, "floor_ev": floor,
                      "skyline_ev": sky[sb], "matching_ev": match_ev, "matching_skyline_ev": sky_match[sb],
                      "agreement": agreement(fit, pairs), "density": fit.density, "dead_sources": fit.dead_sources,
                      "dead_targets": fit.dead_targets, "n_train": fit.n_train, "n_test": fit.n_test})
    return {"rows": rows, "table": pd.DataFrame(table)}
