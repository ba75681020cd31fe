"""Causal links between the dictionaries of one model's sites (Cunningham et al. 2023, section 5).

For each residual-stream source site (every one but the last), the :data:`N_SOURCES` most frequent
latents of its dictionary (SAE seed A) are ablated one by one (in blocks, :mod:`universality.eval.links`)
on :data:`LINK_SPANS` evaluation spans, and the share of each later site's latents' activation that
depends on them is measured. Floor: the same latents ablated along random directions of the same
norms (same codes, so the same push at the same positions, in a direction that means nothing). Weight-only flow (Laptev et al. 2025): how often
the highest decoder cosine names the strongest causal partner, against chance. Attribution: features of
the last residual site that have no partner at the first (MPPC below the match threshold) are split into
what the first residual site carries and what each attention/MLP/mixer output in between writes.

The link graphs are cached like the other stages (``cache/links-<hash>``: shares as safetensors).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import plots
from analysis.studies.common import A_SEED, AnalysisResult, Codebook, norm_row, per_feature_mppc, weights_digest
from universality.eval.links import LinkConfig, LinkGraph, causal_links, edge_table, component_attribution, decoder_flow, flow_agreement, random_directions
from universality.io import load_tensors, save_tensors, write_json
from universality.study.pipeline import Cell

NAME = "causal_links"
#: source latents per source site (most frequent on the evaluation text), evaluation spans per pass,
#: new features attributed at the last residual site
N_SOURCES, LINK_SPANS, N_NEW = 24, 8, 12
LINKS = LinkConfig(batch_features=None, min_share=0.05, top_k=8)


def _cached_links(ctx, model: str, rev: str, source: str, src_sae, targets: dict, latents: list[int], ids, mask,
                  what: str) -> LinkGraph:
    key = {"stage": "links", **ctx._model_key(model, rev), "spans": ctx.eval_spans.hash, "n_spans": LINK_SPANS,
           "source": source, "targets": sorted(targets), "latents": latents, "what": what,
           "weights": weights_digest(src_sae, *targets.values()), "config": [LINKS.min_share, LINKS.top_k]}

    def build(tmp) -> None:
        g = causal_links(ctx.adapter_at(model, rev), (source, src_sae), targets, ids, mask, latents=latents, cfg=LINKS,
                         progress=True)
        save_tensors(tmp / "shares.safetensors", {k: v.contiguous() for k, v in g.shares.items()})
        write_json(tmp / "links.json", {"source_site": source, "latents": latents, "what": what})

    rec = ctx.cache.run("links", key, build, label=f"{model}@{rev} {source} ({what})")
    shares = {k: v for k, v in load_tensors(rec.path / "shares.safetensors").items()}
    return LinkGraph(source, tuple(latents), shares, edge_table(source, latents, shares, LINKS), LINKS)


def run(ctx, figures_dir) -> AnalysisResult:
    spec = ctx.cfg.models[0]
    model = spec.name
    rev = ctx.revisions(model)[-1]
    cell = Cell(model, rev, spec.data)
    typed = sorted(ctx.sites_of(model))
    saes = {s.name: ctx.saes(cell)[s.name][A_SEED] for s in typed}
    tokens = ctx.eval_tokens(model)
    ids, mask = tokens.input_ids[:LINK_SPANS], tokens.attention_mask[:LINK_SPANS]
    book = Codebook(ctx)
    res = AnalysisResult(NAME, f"Causal links between the sites of {model}")
    resid = [s for s in typed if s.is_residual]
    rows, edges, heat_done = [], [], False
    for src in resid[:-1]:
        later = [t for t in typed if src < t]
        if not later:
            continue
        freq = _frequency(book, cell, src.name)
        latents = [int(i) for i in np.argsort(-freq, kind="stable")[:N_SOURCES] if freq[i] > 0]
        if not latents:
            continue
        targets = {t.name: saes[t.name] for t in later}
        graph = _cached_links(ctx, model, rev, src.name, saes[src.name], targets, latents, ids, mask, "trained")
        rnd = random_directions(saes[src.name], f"links:{model}:{rev}:{src.name}")
        floor_graph = _cached_links(ctx, model, rev, src.name, rnd, targets, latents, ids, mask, "random floor")
        edges.append(graph.edges)
        for t in later:
            strongest = graph.shares[t.name].abs().amax(1)
            floor = floor_graph.shares[t.name].abs().amax(1)
            n_edges = int((graph.edges["target_site"] == t.name).sum())
            rows.append(norm_row(NAME, f"{src.name} -> {t.name}", "strongest link share", float(strongest.mean()),
                                 float(floor.mean()), 1.0, site_a=src.name, site_b=t.name, n_sources=len(latents),
                                 n_edges=n_edges,
                                 note=(f"mean over {len(latents)} source latents of the largest share of a target latent's "
                                       "activation that depends on the source; floor: the same latents ablated along random directions of the same norms; "
                                       "skyline: a target that fires only through its source (1)")))
            if saes[src.name].W_dec.shape[1] == saes[t.name].W_dec.shape[1]:
                agree = flow_agreement(graph, t.name, decoder_flow(saes[src.name], saes[t.name]))
                rows.append(norm_row(NAME, f"{src.name} -> {t.name}", "weight flow agreement", agree["value"],
                                     agree["floor"], 1.0, site_a=src.name, site_b=t.name, n_sources=agree["n_sources"],
                                     note=("share of linked source latents whose highest decoder cosine at the target "
                                           "is also their strongest causal target (Laptev et al. 2025); floor: chance, "
                                           "one over the target's live latents")))
            if not heat_done and t.is_residual:
                res.figures.append((f"Link shares {src.name} -> {t.name} (strongest targets)",
                                    plots.heatmap(_heat(graph, t.name), figures_dir / "causal_links_heatmap.png",
                                                  f"{model}: ablate {src.name} latents, share of {t.name} latents",
                                                  cbar_label="share", vmin=-1, vmax=1, annotate=False)))
                heat_done = True
    table = pd.DataFrame(rows)
    res.tables["link_strength"] = table
    res.tidy += rows
    if edges:
        res.tables["link_edges"] = pd.concat(edges, ignore_index=True)
    if len(table):
        strong = table[table["metric"] == "strongest link share"].sort_values("value", ascending=False).iloc[0]
        res.findings.append(f"Strongest causal links: {strong['comparison']} (mean strongest share {strong['value']:.3f} "
                            f"over {int(strong['n_sources'])} source latents; random-direction floor "
                            f"{strong['floor']:.3f}; {int(strong['n_edges'])} edges of share >= {LINKS.min_share:g}).")
        flow = table[table["metric"] == "weight flow agreement"]
        if len(flow):
            res.findings.append("Weight-only flow (decoder cosine) names the causal partner for "
                                + "; ".join(f"{r.comparison}: {r.value:.2f} (chance {r.floor:.3f}, {int(r.n_sources)} sources)"
                                            for r in flow.itertuples()) + ".")
    if len(resid) >= 2:
        attribution = _new_feature_attribution(ctx, book, cell, resid[0].name, resid[-1].name, saes, ids, mask)
        if attribution is not None:
            res.tables["new_feature_attribution"] = attribution
            means = attribution.groupby("part")["abs_share"].mean()
            rest = attribution.loc[attribution["part"] == "rest", "contribution"].abs().max()
            parts = ", ".join(f"{p} {v:.2f}" for p, v in means.items() if p != "rest")
            res.findings.append(f"Features of {resid[-1].name} with no partner at {resid[0].name} (MPPC < "
                                f"{ctx.cfg.match.corr_threshold:g}, {attribution['latent'].nunique()} attributed): share of the size of their "
                                f"pre-activation written by each part: {parts} (largest unexplained remainder {rest:.1e}).")
    res.text = (f"Each residual source site's {N_SOURCES} most frequent latents are ablated on {LINK_SPANS} evaluation "
                "spans; a link's strength is the share of a later latent's activation that depends on the source "
                "latent (1: fires only through it). Floor: the same latents ablated along random directions (same codes, same norms). "
                "Decoder cosines predict links in one basis (weight-only flow); attribution splits new features' "
                "pre-activations into the earlier residual and each component output in between.")
    return res


def _frequency(book: Codebook, cell, site: str) -> np.ndarray:
    codes = book.codes(cell, site, A_SEED)
    return (codes.nnz.double() / max(codes.n_tokens, 1)).cpu().numpy()


def _heat(graph: LinkGraph, site: str) -> pd.DataFrame:
    m = graph.shares[site]
    cols = sorted({int(i) for i in m.abs().argmax(1).tolist()})[:24]
    return pd.DataFrame(m[:, cols].numpy(), index=[f"src {f}" for f in graph.latents], columns=[f"tgt {c}" for c in cols])


def _new_feature_attribution(ctx, book, cell, first: str, last: str, saes, ids, mask) -> pd.DataFrame | None:
    ca, cb = book.codes(cell, first, A_SEED), book.codes(cell, last, A_SEED)
    _, best_b = per_feature_mppc(ca, cb, live_only=False)
    freq = _frequency(book, cell, last)
    new = [int(i) for i in np.argsort(-freq, kind="stable") if freq[i] > 0 and np.nan_to_num(best_b[i]) < ctx.cfg.match.corr_threshold][:N_NEW]
    if not new:
        return None
    table = component_attribution(ctx.adapter_at(cell.model, cell.revision), (last, saes[last]), first, new, ids, mask)
    best = dict(zip(range(len(best_b)), best_b))
    table["best_mppc_at_first"] = [float(best[g]) for g in table["latent"]]
    return table
