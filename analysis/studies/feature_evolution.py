"""Feature evolution over training: dictionaries per checkpoint of one model, matched to the final one.

For every checkpoint ``r`` of the series, an SAE (seed 0) is trained on the model's activations at
``r``; its features are compared with the final checkpoint's SAE by MPPC on the shared evaluation
spans (the same text, read by each checkpoint). The seed skyline is MPPC between seed copies of the
final SAE; the floor is MPPC against token-shuffled codes. Lineage (births, deaths, splits, merges
and persistence) follows features from checkpoint to checkpoint with activation correlation.
"""

from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.studies.ablation import ablation_row
from analysis.studies.cards import findings_about, lineage_section
from analysis.studies.common import A_SEED, B_SEED, CONTEXT_EXCESS, MIN_FIRES, AnalysisResult, context_excess, Codebook, dead_note, mppc_ci, norm_row, per_feature_mppc, shuffled_floor, skyline_interval
from universality.errors import ConfigError
from universality.eval.transfer import random_like, transfer_metrics
from universality.match import lineage
from universality.study.pipeline import Cell

NAME = "feature_evolution"


def series_model(ctx) -> str:
    for spec in ctx.cfg.models:
        if spec.checkpoints == "all" or isinstance(spec.checkpoints, tuple):
            return spec.name
    raise ConfigError("feature_evolution needs a model with checkpoints: all (or a list)",
                      "set checkpoints: all on one model of the study")


def step_of(revision: str) -> int:
    return int(revision[4:]) if revision.startswith("step") and revision[4:].isdigit() else -1


EVENTS = ("birth", "continue", "death", "merge", "split")

#: evaluation spans the transfer (splice) tests read: each pair costs a few forward passes per dictionary
TRANSFER_SPANS = 8


def transfer_to_final(ctx, model: str, revs: list[str], site: str) -> pd.DataFrame:
    """Each checkpoint's SAE applied to the final model, and the final SAE applied to each checkpoint's
    model (:func:`universality.eval.transfer.transfer_metrics`: explained variance, CE loss recovered
    and KL, each against the native SAE of the model it is applied to (skyline) and a random dictionary
    (floor)), on the first :data:`TRANSFER_SPANS` evaluation spans."""
    tokens = ctx.eval_tokens(model)
    ids, mask = tokens.input_ids[:TRANSFER_SPANS], tokens.attention_mask[:TRANSFER_SPANS]
    final = revs[-1]
    saes = {r: ctx.saes(Cell(model, r, "D"))[site][A_SEED] for r in revs}
    floors = {r: random_like(saes[r], f"transfer floor {model}@{r} {site}") for r in revs}
    rows, cache = [], {}  # the final model's reference passes and its native and floor scores are shared
    for r in revs[:-1]:
        for src, dst, direction in ((r, final, "checkpoint SAE -> final model"), (final, r, "final SAE -> checkpoint model")):
            for row in transfer_metrics(ctx.adapter_at(model, dst), saes[src], saes[dst], site, ids, mask,
                                        floor=floors[dst], cache=cache):
                rows.append({"site": site, "revision": r, "step": step_of(r), "direction": direction,
                             "dictionary_from": src, "applied_to": dst, **row})
    return pd.DataFrame(rows)


def lineage_event_table(counts: pd.DataFrame, site: str, revs: list[str]) -> pd.DataFrame:
    """The lineage events of one site, one row per transition ``a->b`` of consecutive checkpoints ``revs``
    (:meth:`universality.match.lineage.Lineage.counts`), ordered by training step (``step100`` after
    ``step16``; the series order where a revision has no step number): columns ``site``, ``step``
    (the transition), ``from_step``, ``to_step`` (numeric steps, -1 where unknown) and one count per event."""
    transitions = [f"{a}->{b}" for a, b in zip(revs, revs[1:])]
    table = counts.reindex(transitions, fill_value=0)
    table = table.reindex(columns=[e for e in EVENTS if e in table.columns] + [c for c in table.columns if c not in EVENTS],
                          fill_value=0).astype("int64")
    table.columns.name = None
    table.index.name = "step"
    out = table.reset_index()
    out.insert(0, "site", site)
    out.insert(2, "from_step", [step_of(a) for a in revs[:-1]])
    out.insert(3, "to_step", [step_of(b) for b in revs[1:]])
    order = sorted(range(len(out)), key=lambda i: (out["from_step"][i] < 0, out["from_step"][i], i))
    return out.iloc[order].reset_index(drop=True)


def lineage_events_long(events: pd.DataFrame) -> pd.DataFrame:
    """The lineage event tables (:func:`lineage_event_table`, any number of sites) in long form for the
    figure: ``step`` (the transition), ``to_step``, ``event``, ``count``, the counts summed over sites per
    transition and event; when a transition has no step number, ``to_step`` is its position in the series."""
    ids = ["site", "step", "from_step", "to_step"]
    counts = [c for c in events.columns if c not in ids]
    long = events.melt(id_vars=ids, value_vars=counts, var_name="event", value_name="count")
    if (long["to_step"] < 0).any():  # no step numbers: plot against the position in the series
        position = {t: i + 1 for i, t in enumerate(dict.fromkeys(events["step"]))}
        long["to_step"] = long["step"].map(position)
    long = long.groupby(["step", "to_step", "event"], as_index=False, sort=False)["count"].sum()
    return long.sort_values(["to_step", "event"], kind="stable").reset_index(drop=True)


def site_lineage(ctx, book: Codebook, model: str, site: str, revs: list[str], seeds: tuple[int, int] = (A_SEED, B_SEED)):
    """The lineage of ``site`` over checkpoints ``revs`` (activation view, ``match.corr_threshold``); the SAE
    seed copies alternate along the series (``seeds[0]`` at the first checkpoint), so no link joins two SAEs
    of the same seed. ``seeds`` swapped gives the lineage's seed null."""
    return lineage([ctx.saes(Cell(model, r, "D"))[site][seeds[i % 2]] for i, r in enumerate(revs)],
                   threshold=ctx.cfg.match.corr_threshold, view="activations", labels=revs,
                   activations=[book.acts(model, r, site) for r in revs],
                   token_ids=book.token_ids(model, revs[-1]))


def run(ctx, figures_dir) -> AnalysisResult:
    model = series_model(ctx)
    revs = ctx.revisions(model)
    final = revs[-1]
    book = Codebook(ctx)
    res = AnalysisResult(NAME, f"Feature evolution over training ({model})")
    rows, dist, heat_rows, ablation_rows = [], [], [], []
    for site in [s.name for s in ctx.sites_of(model)]:
        final_cell = Cell(model, final, "D")
        seeds = range(len(ctx.cfg.sae.seeds))
        final_codes = [book.codes(final_cell, site, s) for s in seeds]
        sky, sky_feat = skyline_interval(final_codes)
        floor, floor_feat = shuffled_floor(final_codes[0], final_codes[1], seed=ctx.cfg.seed)
        dist += [{"comparison": "final vs final (seeds)", "kind": "skyline", "score": v} for v in sky_feat]
        dist += [{"comparison": "final vs final (seeds)", "kind": "floor", "score": v} for v in floor_feat]
        codes_by_rev = {}
        for rev in revs:
            cell = Cell(model, rev, "D")
            codes_by_rev[rev] = book.codes(cell, site, A_SEED)
            if rev == final:  # the final SAE against its own seed copies is the skyline row
                continue
            ra, rb = per_feature_mppc(codes_by_rev[rev], final_codes[B_SEED])
            rows.append(norm_row(NAME, f"{rev} -> {final}", "mppc", float(ra.mean()), floor, sky, site=site,
                                 note=dead_note(codes_by_rev[rev], final_codes[B_SEED], rev, final),
                                 revision=rev, step=step_of(rev), direction="checkpoint->final",
                                 reverse=float(rb.mean()),
                                 **mppc_ci(codes_by_rev[rev], final_codes[B_SEED], "a->b", seed=ctx.cfg.seed)))
            dist += [{"comparison": rev, "kind": "observed", "score": v} for v in ra]
        for ra_rev in revs:  # seed A_SEED of the row checkpoint against seed B_SEED of the column one
            for rb_rev in revs:
                a, b = per_feature_mppc(codes_by_rev[ra_rev], book.codes(Cell(model, rb_rev, "D"), site, B_SEED))
                heat_rows.append({"site": site, "a": ra_rev, "b": rb_rev, "mppc": float(a.mean())})
        lin = site_lineage(ctx, book, model, site, revs)
        res.tables[f"lineage_events_{site}"] = lineage_event_table(lin.counts(), site, revs)
        chains = lin.chains
        if len(chains):
            persist = chains["persistence"].describe()[["count", "mean", "50%", "max"]].to_dict()
            res.findings.append(
                f"{site}: {int(persist['count'])} feature chains across {len(revs)} checkpoints; "
                f"median persistence {persist['50%']:.0f}, longest {persist['max']:.0f} checkpoints.")
        births = lin.events[lin.events["event"] == "birth"] if len(lin.events) else lin.events
        if len(births):
            per_step = births.groupby("step").size()
            res.findings.append(f"{site}: most features are born at {per_step.idxmax()} ({int(per_step.max())} births).")
        res.tables[f"lineage_chains_{site}"] = chains
        born = None
        if ctx.injection is not None:
            per_rev, born = _passage_features(ctx, model, site, chains)
            res.tables[f"injected_passage_by_checkpoint_{site}"] = per_rev
            res.tables[f"injected_passage_features_{site}"] = born
            after = ctx.injection["after_step"]
            counts_txt = ", ".join(f"{r.revision} {r.n_context}" for r in per_rev.itertuples())
            res.findings.append(
                f"{site}: features that fire on the passage introduced after step {after} beyond what its words "
                f"explain elsewhere (context excess >= {CONTEXT_EXCESS}), per checkpoint: {counts_txt}.")
            if len(born):
                late = int(born["born_after_injection"].sum())
                res.findings.append(
                    f"{site}: {late} of the final SAE's {len(born)} such features are born after step {after} "
                    f"(at {', '.join(sorted(set(born['born_at']), key=step_of))}).")
            else:
                res.findings.append(f"{site}: the final SAE has no feature for the passage introduced after step {after}.")
        if ctx.cfg.cards:
            saes = [ctx.saes(Cell(model, r, "D"))[site][(A_SEED, B_SEED)[i % 2]] for i, r in enumerate(revs)]
            sec = lineage_section(ctx, f"{model}:{site} lineage over {len(revs)} checkpoints", model, site, revs, saes,
                                  chains, born, findings=findings_about(res.findings, f"{site}:"),
                                  after_step=ctx.injection["after_step"] if ctx.injection is not None else None)
            if sec is not None:
                res.cards.append(sec)
        agreement = [ablation_row(ctx, NAME, (model, r, site), (model, revs[-1], site), revision=r, step=step_of(r))
                     for r in revs[:-1]]
        if agreement:
            agree = pd.DataFrame(agreement)
            res.tables[f"ablation_agreement_{site}"] = agree
            ablation_rows += agreement
            res.findings.append(f"{site}: matched features of each checkpoint and the final one, ablated in their own "
                                "model, change the next-token log-probabilities alike: " + "; ".join(
                                    f"{a['revision']} {a['value']:.3f} (random pairs {a['floor']:.3f}, SAE seeds "
                                    f"{a['skyline']:.3f})" for a in agreement) + ".")
        transfer = transfer_to_final(ctx, model, revs, site)
        res.tables[f"transfer_{site}"] = transfer
        if len(transfer):
            ce = transfer[transfer["metric"] == "ce_loss_recovered_zero"]
            first = ce[ce["revision"] == revs[0]].set_index("direction")
            res.findings.append(
                f"{site}: spliced into the final model, the SAE of {revs[0]} recovers "
                f"{first.loc['checkpoint SAE -> final model', 'transferred']:.3f} of the CE loss (zero ablation; the final "
                f"model's own SAE {first.loc['checkpoint SAE -> final model', 'native']:.3f}, a random dictionary "
                f"{first.loc['checkpoint SAE -> final model', 'floor']:.3f}); the final SAE in the {revs[0]} model recovers "
                f"{first.loc['final SAE -> checkpoint model', 'transferred']:.3f} (native "
                f"{first.loc['final SAE -> checkpoint model', 'native']:.3f}).")
            ev = transfer[transfer["metric"].isin(["explained_variance", "ce_loss_recovered_zero"])].copy()
            ev["curve"] = ev["direction"] + ", " + ev["metric"].str.replace("_", " ")
            res.figures.append((f"Transfer to and from the final checkpoint, {site}: normalised = (transferred - random "
                                "dictionary) / (native - random dictionary)",
                                plots.series(ev, figures_dir / f"transfer_{site}.png", f"Dictionary transfer across checkpoints ({site})",
                                             x="step", y="normalised", hue="curve", logx=True,
                                             ylabel="normalised (1 = native SAE, 0 = random)",
                                             xlabel="training step of the other checkpoint")))
    table = pd.DataFrame(rows)
    res.tables["similarity_to_final"] = table
    res.tidy += rows + ablation_rows
    for site, grp in table.groupby("site"):
        first = grp.iloc[0]
        last_nonfinal = grp.iloc[-1]
        res.findings.append(
            f"{site}: MPPC of the first checkpoint ({first['revision']}) to the final SAE is {first['value']:.3f}, "
            f"of {last_nonfinal['revision']} {last_nonfinal['value']:.3f}; floor {first['floor']:.3f}, seed skyline "
            f"{first['skyline']:.3f} [{first['skyline_lo']:.3f}, {first['skyline_hi']:.3f}] over {first['n_seeds']} seeds.")
        band = {"floor (shuffled tokens)": (first["floor"], first["floor"]),
                "seed skyline (min-max)": (first["skyline_lo"], first["skyline_hi"])}
        res.figures.append((f"MPPC of each checkpoint's SAE to the final SAE, {site}",
                            plots.series(grp, figures_dir / f"evolution_{site}.png", f"Similarity to the final checkpoint ({site})",
                                         x="step", y="value", logx=True, bands=band, ylabel="MPPC (checkpoint -> final)")))
    if ablation_rows:
        agree = pd.DataFrame(ablation_rows)
        agree["curve"] = "matched pairs, " + agree["site_a"]
        floors = agree.assign(curve="random pairs (floor), " + agree["site_a"], value=agree["floor"])
        skies = agree.assign(curve="SAE seeds (skyline), " + agree["site_a"], value=agree["skyline"])
        res.figures.append(("Ablation agreement of matched features, each checkpoint vs the final one",
                            plots.series(pd.concat([agree, floors, skies], ignore_index=True),
                                         figures_dir / "evolution_ablation_agreement.png",
                                         "Ablation agreement with the final checkpoint", x="step", y="value", hue="curve",
                                         logx=True, ylabel="correlation of ablation effects",
                                         xlabel="training step of the checkpoint")))
    heat = pd.DataFrame(heat_rows)
    for site, grp in heat.groupby("site"):
        mat = grp.pivot(index="a", columns="b", values="mppc").loc[revs, revs]
        res.figures.append((f"Checkpoint-by-checkpoint MPPC, {site} (row -> column)",
                            plots.heatmap(mat, figures_dir / f"evolution_heatmap_{site}.png", f"Checkpoint x checkpoint MPPC ({site})",
                                          cbar_label="MPPC", vmin=0, vmax=1)))
    res.figures.append(("Per-feature best correlation with the final SAE, by checkpoint, with floor and skyline",
                        plots.similarity_distributions(pd.DataFrame(dist), figures_dir / "evolution_distributions.png",
                                                       "Per-feature MPPC to the final SAE", xlabel="checkpoint")))
    events = [t for k, t in res.tables.items() if k.startswith("lineage_events_")]
    if events:
        ev = lineage_events_long(pd.concat(events, ignore_index=True))
        res.figures.append(("Lineage events between consecutive checkpoints (summed over sites; x: the later "
                            "checkpoint's training step)",
                            plots.series(ev, figures_dir / "lineage_events.png", "Lineage events",
                                         x="to_step", y="count", hue="event", logx=True, ylabel="features",
                                         xlabel="training step (later checkpoint of each transition)")))
    res.text = (f"Each checkpoint of {model} ({', '.join(revs)}) gets its own SAE, trained on that checkpoint's "
                "activations; features are compared with the final checkpoint's SAE by their activations on the "
                "same evaluation text (MPPC, Wang et al. 2024). Floor: token-shuffled codes. Skyline: seed copies "
                "of the final SAE. Lineage links features of consecutive checkpoints whose correlation exceeds "
                f"{ctx.cfg.match.corr_threshold}. Transfer (splice) tests apply each checkpoint's SAE to the final "
                "model and the final SAE to each checkpoint's model, on the first "
                f"{TRANSFER_SPANS} evaluation spans: explained variance, CE loss recovered and KL with the "
                "reconstruction spliced in, against the native SAE (skyline) and a random dictionary (floor). "
                "Ablation agreement: the best matched pairs between each checkpoint's SAE and the final SAE, each "
                "latent ablated in its own checkpoint, correlate their effects on the next-token log-probabilities "
                "(floor: random pairs; skyline: two SAE seeds of the checkpoint).")
    return res


def _passage_features(ctx, model: str, site: str, chains: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features of each checkpoint's SAE that respond to the injected passage's context, and the
    final SAE's such features with the checkpoint their lineage chain starts at.

    The SAE of checkpoint ``i`` is the lineage's copy (seeds alternate along the series); a feature
    counts when its :func:`~analysis.studies.common.context_excess` on the passage's
    evaluation tokens is at least :data:`CONTEXT_EXCESS` and it fires at least :data:`MIN_FIRES` times.
    """
    import torch

    flags = ctx.eval_span_flags(model)
    revs = ctx.revisions(model)
    after = ctx.injection["after_step"]
    per_rev, final_feats = [], []
    for i, rev in enumerate(revs):
        sae = ctx.saes(Cell(model, rev, "D"))[site][(A_SEED, B_SEED)[i % 2]]
        acts = ctx.eval_acts(model, rev)
        with torch.no_grad():
            z = sae.encode(acts[site].float())
        excess = context_excess(z, flags["injected"], acts["token_ids"])
        fires = (z > 0).sum(0).numpy()
        feats = [int(f) for f in ((excess >= CONTEXT_EXCESS) & (fires >= MIN_FIRES)).nonzero()[0]]
        per_rev.append({"site": site, "revision": rev, "step": step_of(rev), "after_injection": step_of(rev) > after,
                        "n_context": len(feats), "max_excess": float(excess.max()) if excess.size else 0.0})
        if rev == revs[-1]:
            final_feats = [(f, float(excess[f]), int(fires[f])) for f in feats]
    start_of = {int(row.features[-1]): row.start for row in chains.itertuples() if row.end == revs[-1]}
    born = pd.DataFrame([{"site": site, "feature": f, "born_at": start_of.get(f, revs[-1]), "context_excess": e, "fires": n}
                         for f, e, n in final_feats], columns=["site", "feature", "born_at", "context_excess", "fires"])
    born["born_after_injection"] = born["born_at"].map(lambda r: step_of(r) > after).astype(bool)
    return pd.DataFrame(per_rev), born
