"""Transformer versus Mamba (or any two architectures) trained on the same data.

Features of every site of model A are matched to features of every site of model B by their
activations on the shared evaluation spans (MPPC, Wang et al. 2024). When the two models use
different tokenizers, rows are aligned by character spans and each unit is read at its last token
on both sides (:meth:`universality.data.Alignment.pairs`), so both sides see the same text units.
Each model's seed skyline and the token-shuffled floor come with every number. Gromov-Wasserstein
(POT) between the decoder geometries of matched sites gives a weight-space view that needs no
shared basis.
"""

from __future__ import annotations

import itertools

import pandas as pd
import torch

from analysis import plots
from analysis.studies.common import A_SEED, B_SEED, AnalysisResult, Codebook, norm_row, per_feature_mppc, shuffled_floor, skyline_interval
from universality.data import align_span_tokens
from universality.errors import ConfigError
from universality.match import encode_codes, match
from universality.study.pipeline import Cell

NAME = "architecture_comparison"


def _rows_for(ctx, book: Codebook, a: tuple[str, str], b: tuple[str, str]):
    """Index of the eval rows of ``a`` and ``b`` that read the same text, and shared token ids."""
    ta, tb = book.token_ids(*a), book.token_ids(*b)
    if ta.shape == tb.shape and torch.equal(ta, tb):
        idx = torch.arange(ta.shape[0])
        return idx, idx, ta

    al = align_span_tokens(ctx.eval_tokens(a[0]), ctx.eval_tokens(b[0]))
    ia, ib = al.pairs()
    keep = (ia >= 0) & (ib >= 0)
    return ia[keep], ib[keep], torch.arange(int(keep.sum()))


def run(ctx, figures_dir) -> AnalysisResult:
    on_d = [m for m in ctx.cfg.models if m.data == "D"]
    families = {m.name: ctx.adapter(m.name).family for m in on_d}
    pairs = [(x, y) for x, y in itertools.combinations([m.name for m in on_d], 2) if families[x] != families[y]]
    if not pairs:
        raise ConfigError("architecture_comparison needs two models of different families trained on D",
                          "add e.g. a zoo mamba model next to a gpt_neox one")
    book = Codebook(ctx)
    res = AnalysisResult(NAME, "Architectures compared on the same data: " + ", ".join(f"{a} vs {b}" for a, b in pairs))
    rows, dist = [], []
    for ma, mb in pairs:
        ra_, rb_ = ctx.revisions(ma)[-1], ctx.revisions(mb)[-1]
        ia, ib, tok = _rows_for(ctx, book, (ma, ra_), (mb, rb_))
        ca_all, cb_all, sky_a, sky_b = {}, {}, {}, {}
        for site in [s.name for s in ctx.sites_of(ma)]:
            saes = ctx.saes(Cell(ma, ra_, "D"))[site]
            x = book.acts(ma, ra_, site)[ia]
            ca_all[site] = [encode_codes(s, x, token_ids=tok) for s in saes]
            sky_a[site] = skyline_interval(ca_all[site])[0]
        for site in [s.name for s in ctx.sites_of(mb)]:
            saes = ctx.saes(Cell(mb, rb_, "D"))[site]
            x = book.acts(mb, rb_, site)[ib]
            cb_all[site] = [encode_codes(s, x, token_ids=tok) for s in saes]
            sky_b[site] = skyline_interval(cb_all[site])[0]
        heat = []
        for sa, sb in itertools.product(ca_all, cb_all):
            fa, fb = per_feature_mppc(ca_all[sa][A_SEED], cb_all[sb][B_SEED])
            floor, _ = shuffled_floor(ca_all[sa][A_SEED], cb_all[sb][B_SEED], seed=ctx.cfg.seed)
            sky_mean = (sky_a[sa].mean + sky_b[sb].mean) / 2
            comp = f"{ma}:{sa} vs {mb}:{sb}"
            rows.append(norm_row(NAME, comp, "mppc", float(fa.mean()), floor, sky_mean, direction=f"{ma}->{mb}",
                                 model_a=ma, site_a=sa, model_b=mb, site_b=sb, reverse=float(fb.mean()),
                                 skyline_a=sky_a[sa].mean, skyline_b=sky_b[sb].mean))
            heat.append({"a": sa, "b": sb, "mppc": (float(fa.mean()) + float(fb.mean())) / 2})
            if sa == list(ca_all)[-1] and sb == list(cb_all)[-1]:
                dist += [{"comparison": f"{ma} -> {mb}", "kind": "observed", "score": v} for v in fa]
                dist += [{"comparison": f"{ma} -> {mb}", "kind": "floor", "score": v}
                         for v in shuffled_floor(ca_all[sa][A_SEED], cb_all[sb][B_SEED], seed=ctx.cfg.seed)[1]]
                dist += [{"comparison": f"{ma} -> {mb}", "kind": "skyline", "score": v}
                         for v in skyline_interval(ca_all[sa])[1]]
            gw = match(ctx.saes(Cell(ma, ra_, "D"))[sa][A_SEED], ctx.saes(Cell(mb, rb_, "D"))[sb][B_SEED], method="gw",
                       n_max=ctx.cfg.match.gw_max)
            gw_sky = match(ctx.saes(Cell(ma, ra_, "D"))[sa][A_SEED], ctx.saes(Cell(ma, ra_, "D"))[sa][B_SEED], method="gw",
                           n_max=ctx.cfg.match.gw_max)
            rows.append({"analysis": NAME, "comparison": comp, "metric": "gw_distance", "value": float(gw.value),
                         "skyline": float(gw_sky.value), "note": "lower is closer; skyline = seed copies of A",
                         "model_a": ma, "site_a": sa, "model_b": mb, "site_b": sb})
        mat = pd.DataFrame(heat).pivot(index="a", columns="b", values="mppc").loc[list(ca_all), list(cb_all)]
        res.figures.append((f"Site-by-site MPPC between {ma} (rows) and {mb} (columns)",
                            plots.heatmap(mat, figures_dir / f"arch_{ma}_{mb}.png", f"{ma} x {mb} (MPPC, mean of both directions)",
                                          cbar_label="MPPC", vmin=0, vmax=1)))
        best = mat.idxmax(axis=1)
        corr = pd.DataFrame({"site_a": best.index, "best_site_b": best.values,
                             "mppc": [mat.loc[s, best[s]] for s in best.index]})
        res.tables[f"correspondence_{ma}_{mb}"] = corr
        res.findings.append(f"{ma} -> {mb}: " + "; ".join(
            f"{r.site_a} corresponds best to {r.best_site_b} (MPPC {r.mppc:.3f})" for r in corr.itertuples()))
    table = pd.DataFrame(rows)
    res.tables["cross_architecture"] = table
    res.tidy += rows
    mp = table[table["metric"] == "mppc"]
    top = mp.loc[mp["value"].idxmax()]
    res.findings.append(
        f"Best cross-architecture pair {top['comparison']}: MPPC {top['value']:.3f} against floor {top['floor']:.3f}; "
        f"skylines {top['skyline_a']:.3f} ({top['model_a']}) and {top['skyline_b']:.3f} ({top['model_b']}); "
        + (f"normalised {top['normalised']:.2f}." if pd.notna(top["normalised"]) else f"not normalised: {top['note']}."))
    res.figures.append(("Per-feature best correlation across architectures (last sites), with floor and skyline",
                        plots.similarity_distributions(pd.DataFrame(dist), figures_dir / "arch_distributions.png",
                                                       "Per-feature MPPC across architectures")))
    res.text = ("Both models are trained on the same data with the same tokenizer; every site's SAE features of one "
                "model are matched to every site's of the other by their activations on the same evaluation text. "
                "Skylines are each model's own seed-to-seed MPPC; the floor is MPPC against token-shuffled codes. "
                "Gromov-Wasserstein distances compare the geometry of the two decoders without a shared basis "
                "(lower is closer; the skyline row is between seed copies).")
    return res
