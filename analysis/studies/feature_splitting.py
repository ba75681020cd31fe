"""Feature splitting across dictionary widths, and recovery of D's features by narrower dictionaries on D'.

Dictionaries of every width in ``study.sae.expansions`` (small to large; consecutive widths read different
SAE seed copies, so no step compares two dictionaries of one seed) are compared step by step on the shared
evaluation tokens (:func:`universality.match.splitting.width_lineage`): each latent of the smaller dictionary
*stays* (one child), *splits* (several children whose summed codes reconstruct it), *vanishes* or is
*unresolved*, and latents of the wider one without a parent are *new*. A split parent's children are scored
by how much of their decoder direction lies in the plane of the family (the parent's and the siblings'
decoders), against unrelated wide latents in the same subspaces (the control). Floor of the split share:
the same lineage between two seed copies of the smallest width (splits that seed noise alone produces).

Recovery (issue 16 item 5): dictionaries of each width trained on D' are matched to the D dictionary at the
study's own expansion (:func:`universality.match.splitting.width_recovery`): the share of its live latents
with a partner correlating at least ``RECOVERY_THRESHOLD``; floor: token-shuffled codes; skyline: the D
dictionary's other seed copy at the same expansion.
"""

from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.studies.common import A_SEED, B_SEED, AnalysisResult, Codebook, count_or_share, norm_row
from universality.errors import ConfigError
from universality.match.splitting import width_lineage, width_recovery
from universality.study.pipeline import Cell

NAME = "feature_splitting"

#: least activation correlation of a child with its parent, and least R^2 of the parent's code from its
#: children's codes (non-negative least squares) for a stay or a split
THRESHOLD, R2 = 0.3, 0.6
#: correlation at which a reference (D) latent counts as recovered by a dictionary trained on D'
RECOVERY_THRESHOLD = 0.5


def _split_share(counts: pd.Series) -> float:
    live = int(counts[["stays", "splits", "vanishes", "unresolved"]].sum())
    return counts["splits"] / live if live else float("nan")


def run(ctx, figures_dir) -> AnalysisResult:
    widths = ctx.cfg.sae.expansions
    if len(widths) < 2:
        raise ConfigError(f"feature_splitting needs at least two widths in study.sae.expansions, got {list(widths)}",
                          "set e.g. study.sae.expansions=[2,4,8,16]")
    model = ctx.cfg.models[0].name
    rev = ctx.revisions(model)[-1]
    cell, sub = Cell(model, rev, "D"), Cell(model, rev, "D_prime")
    book = Codebook(ctx)
    res = AnalysisResult(NAME, f"Feature splitting across widths in {model}")
    rows, counts_tables, parents_tables, recovery_tables = [], [], [], []
    for s in ctx.sites_of(model):
        site = s.name
        acts, tok = book.acts(model, rev, site), book.token_ids(model, rev)
        saes = {f"{e}x": ctx.saes_at(cell, e)[site][(A_SEED, B_SEED)[k % 2]] for k, e in enumerate(widths)}
        lin = width_lineage(saes, acts, tok, THRESHOLD, r2=R2, seed=ctx.cfg.seed)
        w0 = ctx.saes_at(cell, widths[0])[site]
        ctrl = width_lineage({f"{widths[0]}x s{A_SEED}": w0[A_SEED], f"{widths[0]}x s{B_SEED}": w0[B_SEED]}, acts, tok,
                             THRESHOLD, r2=R2, seed=ctx.cfg.seed)
        counts, ctrl_counts = lin.counts(), ctrl.counts()
        floor_split = _split_share(ctrl_counts.iloc[0])
        table = pd.concat([counts, ctrl_counts.rename(index=lambda x: f"{x} (seed control)")]).reset_index()
        table.insert(0, "site", site)
        counts_tables.append(table)
        split = lin.parents[lin.parents["status"] == "splits"]
        parents_tables.append(split[["step", "parent", "n_children", "children", "r2", "best_child_r2", "within_span",
                                     "control"]].assign(site=site))
        for step, c in counts.iterrows():
            rows.append(norm_row(NAME, f"{site} {step}", "split share", _split_share(c), floor_split, None,
                                 site=site, note="floor: the split share between two seed copies of the smallest width"))
            fam = split[split["step"] == step]
            if len(fam):
                rows.append(norm_row(NAME, f"{site} {step}", "within-span", float(fam["within_span"].mean()),
                                     float(fam["control"].mean()), 1.0, site=site,
                                     note="floor: unrelated wide latents projected on the same family planes"))
        tidy_counts = (counts[["stays", "splits", "vanishes", "new"]].reset_index()
                       .melt(id_vars="step", var_name="event", value_name="count"))
        res.figures.append((f"Stay / split / vanish / new per width step at {site}",
                            plots.width_splitting(tidy_counts, lin.children_per_split(),
                                                  figures_dir / f"feature_splitting_{site}.png",
                                                  f"{model} {site}: width lineage")))
        total = counts.sum()
        live = int(total[["stays", "splits", "vanishes", "unresolved"]].sum())
        res.findings.append(
            f"{site}: over {len(counts)} width steps ({' -> '.join(lin.labels)}), {count_or_share(int(total['splits']), live)} "
            f"of the live parents split, {count_or_share(int(total['stays']), live)} stay and "
            f"{count_or_share(int(total['vanishes']), live)} vanish (two seeds of one width: split share {floor_split:.3f}); "
            + (f"children lie in their family's plane: within-span {split['within_span'].mean():.3f} against "
               f"{split['control'].mean():.3f} for unrelated latents." if len(split) else "no parent splits."))
        rec = _recovery(ctx, cell, sub, site, widths, acts, tok)
        recovery_tables.append(rec.assign(site=site))
        sky = float(rec["skyline"].iloc[0])
        for _, r in rec.iterrows():
            rows.append(norm_row(NAME, f"{site} SAE_D vs SAE_D' {r['width']}", "recovered share", r["recovered"],
                                 r["floor_recovered"], sky, site=site,
                                 note=f"share of SAE_D's live latents ({ctx.cfg.sae.expansion}x) with a partner at "
                                      f"correlation >= {RECOVERY_THRESHOLD}; skyline: SAE_D's other seed copy"))
        res.figures.append((f"Recovery of SAE_D's latents by SAE_D' of each width at {site}",
                            plots.series(rec.assign(expansion=[float(w) for w in widths]), figures_dir /
                                         f"feature_splitting_recovery_{site}.png",
                                         f"{model} {site}: SAE_D latents found by SAE_D'", "expansion", "recovered",
                                         bands={"floor": (float(rec["floor_recovered"].min()), float(rec["floor_recovered"].max())),
                                                "skyline": (sky, sky)},
                                         ylabel=f"share recovered (corr >= {RECOVERY_THRESHOLD})", xlabel="SAE_D' expansion")))
        best = rec.iloc[int(rec["recovered"].values.argmax())]
        res.findings.append(f"{site}: SAE_D' recovers {rec['recovered'].iloc[0]:.3f} of SAE_D's live latents at "
                            f"{rec['width'].iloc[0]} and {best['recovered']:.3f} at {best['width']} (floor "
                            f"{rec['floor_recovered'].max():.3f}, seed skyline {sky:.3f}).")
    res.tables["lineage_counts"] = pd.concat(counts_tables, ignore_index=True)
    res.tables["split_parents"] = pd.concat(parents_tables, ignore_index=True)
    res.tables["recovery"] = pd.concat(recovery_tables, ignore_index=True)
    res.tidy += rows
    res.text = ("Dictionaries of each width in study.sae.expansions are compared step by step on the evaluation "
                f"tokens: a wider latent is a child of its best-correlated narrower latent when they correlate at least "
                f"{THRESHOLD}; a parent stays (one child) or splits (several) when a non-negative sum of its children's "
                f"codes reconstructs its own with R^2 >= {R2}, vanishes without children, and is unresolved otherwise. "
                "Within-span: the share of each child's unit decoder inside the span of its parent's and siblings' "
                "decoders, against unrelated latents in the same spans. Recovery: SAE_D' of each width against SAE_D "
                f"at {ctx.cfg.sae.expansion}x (correlation >= {RECOVERY_THRESHOLD}); floor: token-shuffled codes; "
                "skyline: SAE_D's other seed copy.")
    return res


def _recovery(ctx, cell: Cell, sub: Cell, site: str, widths, acts, tok) -> pd.DataFrame:
    """:func:`width_recovery` of SAE_D (seed A) by SAE_D' of each width (seed B), with the seed skyline."""
    reference = ctx.saes(cell)[site][A_SEED]
    rec = width_recovery(reference, {f"{e}x": ctx.saes_at(sub, e)[site][B_SEED] for e in widths}, acts, tok,
                         RECOVERY_THRESHOLD, seed=ctx.cfg.seed)
    sky = width_recovery(reference, [ctx.saes(cell)[site][B_SEED]], acts, tok, RECOVERY_THRESHOLD, seed=ctx.cfg.seed)
    return rec.assign(skyline=float(sky["recovered"].iloc[0]))
