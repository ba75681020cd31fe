"""Feature manifolds: groups of latents that form one multi-dimensional feature, and their matches.

For each model (last revision) and site, the latents of SAE seed A are grouped by decoder cosine and
co-firing (:func:`universality.match.manifolds.group_features`) on the shared evaluation spans, and each
of the :data:`N_GROUPS` largest groups is tested for irreducibility (Engels et al. 2024: neither
separable into independent parts nor a mixture of 1-D parts). Groups are then matched one-to-one by the
mean canonical correlation of their codes on the same tokens (any basis): between the two SAE seeds of
one model (the skyline: the same model's features found twice), between a middle and the last
checkpoint of a series, and between models that read the same tokens. Each matched pair's floor is
the same similarity against random groups of the partner's size (:func:`random_group_floor`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from analysis import plots
from analysis.studies.cards import dictionary_section
from analysis.studies.common import A_SEED, B_SEED, AnalysisResult, Codebook, norm_row
from universality.errors import DataError
from universality.match.manifolds import (GroupingConfig, code_similarity_fn, group_features, irreducibility,
                                          live_latents, match_groups, project_group)
from universality.study.pipeline import Cell

NAME = "feature_manifolds"
#: largest groups tested and matched per dictionary; random groups per matched pair's floor
N_GROUPS, N_DRAWS = 8, 20
GROUPING = GroupingConfig()


def _codes(ctx, book: Codebook, cell: Cell, site: str, seed: int) -> torch.Tensor:
    sae = ctx.saes(cell)[site][seed]
    with torch.no_grad():
        return sae.encode(book.acts(cell.model, cell.revision, site).to(sae.W_dec.dtype)).detach().float().cpu()


def _groups(sae, z: torch.Tensor) -> list[tuple[int, ...]]:
    try:
        return group_features(sae.W_dec.detach().float().cpu(), z, GROUPING)[:N_GROUPS]
    except DataError:  # too few live latents on this text: nothing to group
        return []


def _match_row(label: str, site: str, za: torch.Tensor, ga, zb: torch.Tensor, gb, seed: int):
    if not ga or not gb:
        return None, None
    pool = live_latents(zb, GROUPING.min_count)
    m = match_groups(ga, gb, code_similarity_fn(za, zb), pool, N_DRAWS, seed)
    t = m.table().assign(comparison=label, site=site)
    return t, (float(t["similarity"].mean()), float(t["floor_mean"].mean()), float(t["floor_p95"].mean()),
               float(t["above_floor"].mean()), len(t))


def run(ctx, figures_dir) -> AnalysisResult:
    book = Codebook(ctx)
    res = AnalysisResult(NAME, "Feature manifolds: multi-dimensional groups of latents and their matches")
    group_rows, match_tables, rows = [], [], []
    codes, groups, finals = {}, {}, {}
    for spec in ctx.cfg.models:
        revs = ctx.revisions(spec.name)
        finals[spec.name] = revs[-1]
        for site in [s.name for s in ctx.sites_of(spec.name)]:
            cell = Cell(spec.name, revs[-1], spec.data)
            for seed in (A_SEED, B_SEED):
                z = _codes(ctx, book, cell, site, seed)
                codes[(spec.name, site, seed)] = z
                groups[(spec.name, site, seed)] = _groups(ctx.saes(cell)[site][seed], z)
            sae = ctx.saes(cell)[site][A_SEED]
            for g in groups[(spec.name, site, A_SEED)]:
                irr = irreducibility(sae.W_dec.detach().float().cpu(), codes[(spec.name, site, A_SEED)], g)
                group_rows.append({"model": spec.name, "revision": revs[-1], "site": site, "group": " ".join(map(str, g)),
                                   "size": len(g), "separability": irr.separability, "mixture": irr.mixture,
                                   "irreducibility": irr.score, "n_points": irr.n_points})
    groups_table = pd.DataFrame(group_rows)
    res.tables["groups"] = groups_table
    seed = ctx.cfg.seed
    skylines = {}
    for (model, site, s), ga in list(groups.items()):
        if s != A_SEED:
            continue
        t, got = _match_row(f"{model}: SAE seeds", site, codes[(model, site, A_SEED)], ga, codes[(model, site, B_SEED)],
                            groups[(model, site, B_SEED)], seed)
        if t is not None:
            match_tables.append(t)
            skylines[(model, site)] = got[0]
            rows.append(norm_row(NAME, f"{model}: SAE seed {A_SEED} vs {B_SEED}", "group match", got[0], got[1], got[0],
                                 site_a=site, site_b=site, models=model, n_pairs=got[4], above_floor_p95=got[3],
                                 note="skyline row: the same model's groups found by two SAE seeds"))
    # across models that read the same tokens (the shared evaluation spans, one tokenizer)
    skipped: list[str] = []
    names = [m.name for m in ctx.cfg.models]
    for i, ma in enumerate(names):
        for mb in names[i + 1:]:
            if not torch.equal(book.token_ids(ma, finals[ma]), book.token_ids(mb, finals[mb])):
                skipped.append(f"{ma} vs {mb}")
                continue
            for site in [s.name for s in ctx.sites_of(ma)]:
                if (mb, site, A_SEED) not in groups:
                    continue
                t, got = _match_row(f"{ma} vs {mb}", site, codes[(ma, site, A_SEED)], groups[(ma, site, A_SEED)],
                                    codes[(mb, site, B_SEED)], groups[(mb, site, B_SEED)], seed)
                if t is None:
                    continue
                match_tables.append(t)
                sky = np.nanmean([skylines.get((ma, site), np.nan), skylines.get((mb, site), np.nan)])
                rows.append(norm_row(NAME, f"{ma} vs {mb}", "group match", got[0], got[1], float(sky), site_a=site,
                                     site_b=site, models=f"{ma},{mb}", n_pairs=got[4], above_floor_p95=got[3],
                                     note="mean canonical correlation of matched groups' codes; floor: random groups of "
                                          "the partner's size; skyline: the two models' SAE-seed group matches"))
    # a middle checkpoint of a series against the last
    for spec in ctx.cfg.models:
        revs = ctx.revisions(spec.name)
        if len(revs) < 2:
            continue
        for site in [s.name for s in ctx.sites_of(spec.name)]:
            mid = revs[len(revs) // 2]
            cell = Cell(spec.name, mid, spec.data)
            z = _codes(ctx, book, cell, site, A_SEED)
            g = _groups(ctx.saes(cell)[site][A_SEED], z)
            t, got = _match_row(f"{spec.name}: {mid} vs {revs[-1]}", site, z, g, codes[(spec.name, site, B_SEED)],
                                groups[(spec.name, site, B_SEED)], seed)
            if t is None:
                continue
            match_tables.append(t)
            rows.append(norm_row(NAME, f"{spec.name}: {mid} vs {revs[-1]}", "group match", got[0], got[1],
                                 skylines.get((spec.name, site), np.nan), site_a=site, site_b=site, models=spec.name,
                                 n_pairs=got[4],
                                 above_floor_p95=got[3], note="a middle checkpoint's groups against the final model's"))
    if match_tables:
        res.tables["group_matches"] = pd.concat(match_tables, ignore_index=True).assign(
            group_a=lambda d: d["group_a"].map(lambda g: " ".join(map(str, g))),
            group_b=lambda d: d["group_b"].map(lambda g: " ".join(map(str, g))))
    table = pd.DataFrame(rows)
    res.tables["group_match_summary"] = table
    res.tidy += rows
    tags: list[set[tuple[str, str]]] = [set() for _ in res.findings]  # (model, site) behind each finding
    if len(groups_table):
        best = groups_table.sort_values("irreducibility", ascending=False, na_position="last").iloc[0]
        res.findings.append(
            f"{len(groups_table)} groups of two or more latents (at most {N_GROUPS} per dictionary); the most irreducible is "
            f"{best['model']}:{best['site']} latents [{best['group']}] (irreducibility {best['irreducibility']:.2f}: "
            f"separability {best['separability']:.2f}, mixture {best['mixture']:.2f}; median over groups "
            f"{groups_table['irreducibility'].median():.2f}).")
        tags.append({(best["model"], best["site"])})
        cell = Cell(best["model"], best["revision"], ctx.cfg.model(best["model"]).data)
        sae = ctx.saes(cell)[best["site"]][A_SEED]
        members = [int(v) for v in best["group"].split()]
        proj = project_group(sae.W_dec.detach().float().cpu(), codes[(best["model"], best["site"], A_SEED)], members)
        res.figures.append((f"The most irreducible group ({best['model']}:{best['site']}) in its plane",
                            plots.group_projection(proj.frame(), figures_dir / "manifold_top_group.png",
                                                   f"{best['model']}:{best['site']} latents {best['group']}")))
    for r in table.itertuples():
        tags.append({(m, r.site_a) for m in r.models.split(",")})
        res.findings.append(f"Groups {r.comparison} at {r.site_a}: matched similarity {r.value:.3f} against random "
                            f"groups {r.floor:.3f} (seed skyline {r.skyline:.3f}; {r.above_floor_p95:.0%} of {r.n_pairs} "
                            "pairs above the floor's 95th percentile).")
    if ctx.cfg.cards:
        res.cards += _sections(ctx, groups_table, tags)
    res.text = ((f"Not matched (other tokens on the evaluation text; code similarity needs the same tokens): "
                 f"{', '.join(skipped)}. " if skipped else "") + "Latents are grouped by decoder cosine and co-firing; each group is tested for irreducibility "
                "(Engels et al. 2024): separability (min over rotations of the normalised mutual information of its "
                "two plane coordinates) and mixture (share of points near two lines); score = min(separability, "
                "1 - mixture). Groups are matched one-to-one by the mean canonical correlation of their codes on "
                "the same tokens; floor: random groups of the partner's size; skyline: the same model's two SAE seeds.")
    return res


#: irreducible groups shown as cards per dictionary
CARD_GROUPS = 4


def _sections(ctx, groups_table: pd.DataFrame, tags: list[set[tuple[str, str]]]) -> list:
    """One card section per (model, site): its :data:`CARD_GROUPS` most irreducible groups, each a group of
    cards; it backs the findings tagged with that dictionary."""
    out = []
    if not len(groups_table):
        return out
    for (model, site), part in groups_table.groupby(["model", "site"], sort=False):
        top = part.sort_values("irreducibility", ascending=False, na_position="last").head(CARD_GROUPS)
        named = {f"group {r.group} (irreducibility {r.irreducibility:.2f})": [int(v) for v in r.group.split()]
                 for r in top.itertuples()}
        findings = tuple(i for i, t in enumerate(tags) if (model, site) in t)
        rev = top["revision"].iloc[0]
        sec = dictionary_section(ctx, f"{model}:{site} feature groups (manifolds)", Cell(model, rev, ctx.cfg.model(model).data),
                                 A_SEED, site, named, findings)
        if sec is not None:
            out.append(sec)
    return out
