"""Transformer versus Mamba (or any two architectures) trained on the same data.

Features of every site of model A are matched to features of every site of model B by their
activations on the shared evaluation spans (MPPC, Wang et al. 2024). When the two models use
different tokenizers, rows are aligned by character spans and each unit is read at its last token
on both sides (:meth:`universality.data.Alignment.pairs`), so both sides see the same text units.
The token-shuffled floor and two skylines come with every number, as in Wang et al. 2024: the
SAE-seed skyline (two SAE seeds on one model) and, when ``study.model_seed_skyline`` trains
model-seed copies, the model-seed skyline (SAEs on two models pre-trained with different seeds);
each row gives one normalised value per skyline. Gromov-Wasserstein (POT) between the decoder
geometries of matched sites gives a weight-space view that needs no shared basis (lower is closer).
"""

from __future__ import annotations

import itertools

import pandas as pd
import torch

from analysis import plots
from analysis.studies.ablation import ablation_row
from analysis.studies.cards import pair_section
from analysis.studies.common import (
    A_SEED,
    B_SEED,
    MPPC_MEANING,
    AnalysisResult,
    aligned_eval_rows,
    Codebook,
    dead_note,
    mean_skyline,
    model_seed_skyline,
    mppc_ci,
    norm_row,
    per_feature_mppc,
    seed_copy_codes,
    shuffled_floor,
    skyline_interval,
    skylines_text,
)
from universality.errors import ConfigError
from universality.match import encode_codes, match
from universality.study.pipeline import Cell

NAME = "architecture_comparison"


def _side(ctx, book: Codebook, model: str, rev: str, rows: torch.Tensor, tok: torch.Tensor) -> dict:
    """Codes of every site of ``model`` on ``rows`` (one per SAE seed), with both skylines per site."""
    out = {"codes": {}, "sae_seed": {}, "model_seed": {}, "copy": {}}
    for site in [s.name for s in ctx.sites_of(model)]:
        saes = ctx.saes(Cell(model, rev, "D"))[site]
        x = book.acts(model, rev, site)[rows]
        out["codes"][site] = [encode_codes(s, x, token_ids=tok) for s in saes]
        out["sae_seed"][site] = skyline_interval(out["codes"][site])[0]
        out["copy"][site] = seed_copy_codes(ctx, model, "D", site, rows=rows, token_ids=tok)
        out["model_seed"][site] = model_seed_skyline(ctx, model, out["codes"][site][A_SEED], out["copy"][site])
    return out


def _gw_row(ctx, ma: str, ra_: str, sa: str, mb: str, rb_: str, sb: str, comp: str) -> dict:
    """Gromov-Wasserstein between the decoders of ``ma:sa`` and ``mb:sb``, with the same distance between
    two SAE seeds of ``ma`` (SAE-seed skyline) and between ``ma`` and its model-seed copy."""
    sae_a = ctx.saes(Cell(ma, ra_, "D"))[sa]
    gw = match(sae_a[A_SEED], ctx.saes(Cell(mb, rb_, "D"))[sb][B_SEED], method="gw", n_max=ctx.cfg.match.gw_max)
    gw_sae = match(sae_a[A_SEED], sae_a[B_SEED], method="gw", n_max=ctx.cfg.match.gw_max)
    copy = ctx.seed_copy(ma)
    note = f"skyline_sae_seed = GW between two SAE seeds of {ma}"
    gw_model = float("nan")
    if copy is not None:
        crev = ctx.revisions(copy)[-1]
        gw_model = float(match(sae_a[A_SEED], ctx.saes(Cell(copy, crev, "D"))[sa][B_SEED], method="gw",
                               n_max=ctx.cfg.match.gw_max).value)
        note += f"; skyline_model_seed = GW between {ma} and its model-seed copy {copy}"
    else:
        note += "; model-seed skyline not computed"
    note += "; no normalised value (a distance has no floor here)"
    return {"analysis": NAME, "comparison": comp, "metric": "gw_distance", "value": float(gw.value),
            "skyline_sae_seed": float(gw_sae.value), "skyline_model_seed": gw_model,
            "value_meaning": gw.value_meaning, "note": note,
            "model_a": ma, "site_a": sa, "model_b": mb, "site_b": sb}


def run(ctx, figures_dir) -> AnalysisResult:
    on_d = [m for m in ctx.cfg.models if m.data == "D"]
    families = {m.name: ctx.adapter(m.name).family for m in on_d}
    pairs = [(x, y) for x, y in itertools.combinations([m.name for m in on_d], 2) if families[x] != families[y]]
    if not pairs:
        raise ConfigError("architecture_comparison needs two models of different families trained on D",
                          "add e.g. a zoo mamba model next to a gpt_neox one")
    book = Codebook(ctx)
    trained_here = all(ctx.cfg.model(m).zoo is not None for pair in pairs for m in pair)
    res = AnalysisResult(NAME, ("Architectures compared on the same data: " if trained_here else "Architectures compared: ")
                         + ", ".join(f"{a} vs {b}" for a, b in pairs))
    rows, dist, same_tokens = [], [], {}
    for ma, mb in pairs:
        ra_, rb_ = ctx.revisions(ma)[-1], ctx.revisions(mb)[-1]
        ia, ib, tok = aligned_eval_rows(ctx, book, (ma, ra_), (mb, rb_))
        ta, tb = book.token_ids(ma, ra_), book.token_ids(mb, rb_)
        same_tokens[(ma, mb)] = bool(ta.shape == tb.shape and torch.equal(ta, tb))
        side_a, side_b = _side(ctx, book, ma, ra_, ia, tok), _side(ctx, book, mb, rb_, ib, tok)
        ca_all, cb_all = side_a["codes"], side_b["codes"]
        heat = []
        for sa, sb in itertools.product(ca_all, cb_all):
            ca, cb = ca_all[sa][A_SEED], cb_all[sb][B_SEED]
            fa, fb = per_feature_mppc(ca, cb)
            floor, _ = shuffled_floor(ca, cb, seed=ctx.cfg.seed)
            sky_sae = (side_a["sae_seed"][sa].mean + side_b["sae_seed"][sb].mean) / 2
            sky_model = mean_skyline(side_a["model_seed"][sa], side_b["model_seed"][sb])
            comp = f"{ma}:{sa} vs {mb}:{sb}"
            rows.append(norm_row(NAME, comp, "mppc", float(fa.mean()), floor, sky_sae, sky_model,
                                 note=dead_note(ca, cb, ma, mb), direction=one_way(ma, mb),
                                 model_a=ma, site_a=sa, model_b=mb, site_b=sb, reverse=float(fb.mean()),
                                 sae_seed_a=side_a["sae_seed"][sa].mean, sae_seed_b=side_b["sae_seed"][sb].mean,
                                 model_seed_a=_or_nan(side_a["model_seed"][sa].value),
                                 model_seed_b=_or_nan(side_b["model_seed"][sb].value), value_meaning=MPPC_MEANING,
                                 **mppc_ci(ca, cb, "a->b", seed=ctx.cfg.seed)))
            heat.append({"a": sa, "b": sb, "mppc": (float(fa.mean()) + float(fb.mean())) / 2})
            if sa == list(ca_all)[-1] and sb == list(cb_all)[-1]:
                dist += _distributions(ctx, ma, mb, fa, ca, cb, ca_all[sa], side_a["copy"][sa])
            rows.append(_gw_row(ctx, ma, ra_, sa, mb, rb_, sb, comp))
        mat = pd.DataFrame(heat).pivot(index="a", columns="b", values="mppc").loc[list(ca_all), list(cb_all)]
        res.figures.append((f"Site-by-site MPPC between {ma} (rows) and {mb} (columns)",
                            plots.heatmap(mat, figures_dir / f"arch_{ma}_{mb}.png", f"{ma} x {mb} (MPPC, mean of both directions)",
                                          cbar_label="MPPC", vmin=0, vmax=1)))
        corr = correspondence(mat, ma, mb)
        res.tables[f"correspondence_{ma}_{mb}"] = corr
        res.findings.append(f"{ma} -> {mb}: " + "; ".join(
            f"{r.site_a} corresponds best to {r.best_site_b} (MPPC {r.mppc:.3f}, mean of both directions)"
            for r in corr.itertuples()))
        if same_tokens[(ma, mb)]:  # next-token effects compare position by position: one tokenizer
            last = corr.iloc[-1]  # the deepest site of ma and its corresponding site: one forward pass per latent
            ablation = [ablation_row(ctx, NAME, (ma, ra_, last.site_a), (mb, rb_, last.best_site_b))]
            res.tables[f"ablation_agreement_{ma}_{mb}"] = pd.DataFrame(ablation)
            rows += ablation
            res.findings.append(f"{ma} -> {mb}: matched features ablated in their own models change the next-token "
                                "log-probabilities alike: " + "; ".join(
                                    f"{a['site_a']} vs {a['site_b']} agreement {a['value']:.3f} (random pairs "
                                    f"{a['floor']:.3f}, SAE seeds of {ma} {a['skyline']:.3f}; {a['n_pairs']} pairs)"
                                    for a in ablation))
        if ctx.cfg.cards and same_tokens[(ma, mb)]:  # pair cards need both models on the same tokens
            for r in corr.itertuples():
                sec = pair_section(ctx, f"{ma}:{r.site_a} vs {mb}:{r.best_site_b}", (Cell(ma, ra_, "D"), A_SEED, ma),
                                   (Cell(mb, rb_, "D"), B_SEED, mb), r.site_a, site_b=r.best_site_b,
                                   findings=(len(res.findings) - 1,))
                if sec is not None:
                    res.cards.append(sec)
    table = pd.DataFrame(rows)
    res.tables["cross_architecture"] = table
    res.tidy += rows
    res.findings.append(_top_finding(table[table["metric"] == "mppc"]))
    res.figures.append(("Per-feature best correlation across architectures (last sites), with floor and skyline",
                        plots.similarity_distributions(pd.DataFrame(dist), figures_dir / "arch_distributions.png",
                                                       "Per-feature MPPC across architectures")))
    res.text = (provenance_text(ctx.cfg, pairs, same_tokens) + " Every site's SAE features of one "
                "model are matched to every site's of the other by their activations on the same evaluation text. "
                + DIRECTIONS_TEXT + " The floor is MPPC against token-shuffled codes. The skylines of a row are the means over its two "
                "models (sae_seed_a/b, model_seed_a/b give each model's own). " + skylines_text(ctx) + " "
                "Gromov-Wasserstein distances compare the geometry of the two decoders without a shared basis "
                "(value_meaning: lower is closer; its skyline columns are the same distance between SAE seeds and "
                "between model seeds).")
    return res


def one_way(ma: str, mb: str) -> str:
    """The ``direction`` of a one-way MPPC row: features of ``ma`` matched to their best partner in ``mb``
    (``value``; the ``reverse`` column is the other way)."""
    return f"{ma}->{mb}"


def both_ways(ma: str, mb: str) -> str:
    """The ``direction`` of an MPPC that is the mean of the two one-way values."""
    return f"mean of {ma}->{mb} and {mb}->{ma}"


DIRECTIONS_TEXT = ("MPPC directions: in the cross-architecture table value is one way (direction a->b: each live "
                   "feature of a with its best partner in b) and reverse the other way; the heatmap and the "
                   "correspondence table use the mean of both directions (their direction column says so).")


def correspondence(mat: pd.DataFrame, ma: str, mb: str) -> pd.DataFrame:
    """For every site of ``ma`` (rows of ``mat``, site-by-site MPPC, mean of both directions) the site of
    ``mb`` it matches best: columns ``site_a``, ``best_site_b``, ``mppc`` and ``direction`` (which
    MPPC: the mean of ``ma->mb`` and ``mb->ma``, as in the heatmap)."""
    best = mat.idxmax(axis=1)
    return pd.DataFrame({"site_a": list(best.index), "best_site_b": list(best.values),
                         "mppc": [float(mat.loc[s, best[s]]) for s in best.index],
                         "direction": [both_ways(ma, mb)] * len(best)})


def provenance_text(cfg, pairs: list[tuple[str, str]], same_tokens: dict[tuple[str, str], bool]) -> str:
    """What is known about how the compared models were trained: "trained by the study on the same data
    with the same tokenizer" only for zoo models (trained here, on the study's data, with the study's
    tokenizer) that read the evaluation text as the same tokens; otherwise what is known of each model
    (a hub or local model was not trained by the study: its training data is not known here) and
    whether the two tokenizers differ (rows then aligned by character spans)."""
    out = []
    for ma, mb in pairs:
        sa, sb = cfg.model(ma), cfg.model(mb)
        zoo = sa.zoo is not None and sb.zoo is not None
        if zoo and sa.data == sb.data and same_tokens.get((ma, mb), False):
            out.append(f"{ma} and {mb} are both trained by this study on the same data ({sa.data}) with the same "
                       "tokenizer.")
            continue
        about = []
        for spec in (sa, sb):
            if spec.zoo is not None:
                about.append(f"{spec.name} is trained by this study ({spec.zoo}) on {spec.data} with the study's tokenizer")
            else:
                about.append(f"{spec.name} is a pretrained model ({spec.path}) not trained by this study, so its "
                             "training data and tokenizer are its own (not known here)")
        tokens = ("the two read the evaluation text as the same tokens" if same_tokens.get((ma, mb), False) else
                  "the two tokenize the evaluation text differently, so rows are aligned by character spans and each "
                  "text unit is read at its last token on both sides")
        out.append("; ".join(about) + "; " + tokens + ".")
    return " ".join(out)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _distributions(ctx, ma: str, mb: str, fa, ca, cb, seeds_a: list, copy_a) -> list[dict]:
    """Per-feature scores of the last site pair: observed, floor and the skylines (first seed pair, and
    ``ma`` against its model-seed copy when there is one)."""
    label = f"{ma} -> {mb}"
    out = [{"comparison": label, "kind": "observed", "score": v} for v in fa]
    out += [{"comparison": label, "kind": "floor", "score": v} for v in shuffled_floor(ca, cb, seed=ctx.cfg.seed)[1]]
    out += [{"comparison": label, "kind": "skyline", "score": v} for v in skyline_interval(seeds_a)[1]]
    if copy_a is not None:
        out += [{"comparison": f"{ma} -> model-seed copy", "kind": "skyline", "score": v}
                for v in per_feature_mppc(seeds_a[A_SEED], copy_a)[0]]
    return out


def _top_finding(mp: pd.DataFrame) -> str:
    """The best cross-architecture pair, with floor, both skylines and both normalised values."""
    top = mp.loc[mp["value"].idxmax()]

    def ratio(col: str) -> str:
        return f"{top[col]:.2f}" if pd.notna(top[col]) else "n/a"

    model_sky = (f"model-seed skyline {top['skyline_model_seed']:.3f}" if pd.notna(top["skyline_model_seed"])
                 else "model-seed skyline not computed")
    return (f"Best cross-architecture pair {top['comparison']}: MPPC {top['value']:.3f} against floor {top['floor']:.3f}; "
            f"SAE-seed skyline {top['skyline_sae_seed']:.3f} (normalised {ratio('normalised_sae_seed')}), "
            f"{model_sky} (normalised {ratio('normalised_model_seed')})"
            + (f"; note: {top['note']}." if top["note"] else "."))
