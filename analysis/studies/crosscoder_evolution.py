"""The crosscoder arm of feature evolution: one crosscoder over the whole checkpoint series.

For the series model of :mod:`analysis.studies.feature_evolution`, a BatchTopK crosscoder is trained over the
deepest site at every checkpoint (source ``i`` = checkpoint ``i``, aligned harvest rows: the same tokens read
by each checkpoint; :func:`universality.study.stages.train_crosscoders`). Each latent has one decoder row per
checkpoint; its norm trajectory over the series is :func:`~universality.crosscoder.analysis.decoder_norm_trajectories`
and its *birth* the first checkpoint whose norm reaches :data:`BIRTH_FRACTION` of the final one
(:func:`~universality.crosscoder.analysis.birth_indices`). Latents that never fire on the evaluation text are left out.

- **Births per checkpoint**, beside the matching arm: the lineage births of feature_evolution (SAEs per
  checkpoint linked by activation correlation, :func:`analysis.studies.feature_evolution.site_lineage`). Both
  arms are compared as distributions of the births after the first checkpoint over the later checkpoints;
  the distance is the total variation (TV) between the two distributions.
- **Planted positive** (when the corpus injects a passage after step S): the live latents that respond to the
  passage's context (:func:`~analysis.studies.common.context_excess` >= :data:`~analysis.studies.common.CONTEXT_EXCESS`,
  at least :data:`~analysis.studies.common.MIN_FIRES` fires; when none reaches it, the :data:`PASSAGE_TOP` with
  the largest excess, said so) should be born after S. Floor: the share of all live latents born after S.
- **Seed null**: a second crosscoder seed; each number's ``seed_null_spread`` is the absolute difference
  between the two seeds (for the birth distributions: their TV). The lineage's seed null swaps the alternation
  of SAE seeds along the series.
- **Copy anchor**: the final checkpoint listed once per checkpoint (a source crossed with copies of itself):
  every latent's norms are equal along the series, so every latent is born at the first checkpoint (the floor
  of the "born later" shares).

The two arms agree when the TV between their birth distributions is at most the larger of the two seed spreads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analysis import plots
from analysis.studies.common import B_SEED, A_SEED, CONTEXT_EXCESS, MIN_FIRES, AnalysisResult, Codebook, context_excess, norm_row
from analysis.studies.feature_evolution import lineage_event_table, series_model, site_lineage, step_of
from universality.crosscoder.analysis import birth_indices, decoder_norm_trajectories, live_latents
from universality.errors import ConfigError
from universality.study.pipeline import Cell
from universality.study.stages import train_crosscoders

NAME = "crosscoder_evolution"
SEEDS = 2
#: a latent is born at the first checkpoint whose decoder norm reaches this share of its final norm
BIRTH_FRACTION = 0.5
#: passage latents by rank when no latent reaches the context-excess threshold
PASSAGE_TOP = 5


def birth_counts(births: Int[Tensor, " m"], n_sources: int) -> np.ndarray:
    """``(n_sources,)`` number of latents born at each checkpoint index."""
    return np.bincount(births.numpy().astype(np.int64), minlength=n_sources)[:n_sources]


def later_distribution(counts: np.ndarray) -> np.ndarray:
    """Counts at checkpoints 1.. as a distribution (sums to 1; NaN when nothing is born after the first)."""
    later = np.asarray(counts[1:], dtype=float)
    return later / later.sum() if later.sum() > 0 else np.full_like(later, np.nan)


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two distributions over the same checkpoints (NaN if either is undefined)."""
    if np.isnan(p).any() or np.isnan(q).any():
        return float("nan")
    return float(0.5 * np.abs(p - q).sum())


def passage_latents(z: Float[Tensor, "T d_sae"], injected: Bool[Tensor, " T"], token_ids: Int[Tensor, " T"],
                    live: Bool[Tensor, " d_sae"]) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(latents, excess, by_threshold)``: live latents that respond to the passage's context (context
    excess >= :data:`CONTEXT_EXCESS`, >= :data:`MIN_FIRES` fires), or - ``by_threshold`` False - the
    :data:`PASSAGE_TOP` live latents with the largest positive excess when none reaches it."""
    excess = context_excess(z, injected, token_ids)
    fires = (z > 0).sum(0).numpy()
    ok = live.numpy() & (fires >= MIN_FIRES)
    chosen = np.flatnonzero(ok & (excess >= CONTEXT_EXCESS))
    if len(chosen):
        return chosen, excess, True
    cand = np.flatnonzero(ok & (excess > 0))
    return cand[np.argsort(-excess[cand], kind="stable")][:PASSAGE_TOP], excess, False


def lineage_births(ctx, book: Codebook, model: str, site: str, revs: list[str], seeds: tuple[int, int]) -> np.ndarray:
    """``(len(revs),)`` lineage births at each checkpoint (NaN at the first: nothing is born before it)."""
    table = lineage_event_table(site_lineage(ctx, book, model, site, revs, seeds).counts(), site, revs)
    out = np.full(len(revs), np.nan)
    births = dict(zip(table["step"], table["birth"] if "birth" in table.columns else [0] * len(table)))
    for i, (a, b) in enumerate(zip(revs, revs[1:])):
        out[i + 1] = births.get(f"{a}->{b}", 0)
    return out


def _summary(cc, x: Float[Tensor, "T d_in"], n_src: int, after: int | None, steps: list[int],
             flags: dict | None, token_ids: Tensor | None) -> dict:
    """Live latents, their trajectories and births, birth counts, and the passage latents (when injected)."""
    live = live_latents(cc, x)
    norms = decoder_norm_trajectories(cc)
    births = birth_indices(norms, BIRTH_FRACTION)
    out = {"live": live, "norms": norms, "births": births, "counts": birth_counts(births[live], n_src),
           "n_live": int(live.sum())}
    if after is not None and flags is not None:
        born_step = np.asarray(steps)[births.numpy()]
        with torch.no_grad():
            z = cc.encode(x)
        lat, excess, by_thr = passage_latents(z, flags["injected"], token_ids, live)
        out.update(passage=lat, excess=excess, by_threshold=by_thr, born_step=born_step,
                   passage_after=float((born_step[lat] > after).mean()) if len(lat) else float("nan"),
                   base_after=float((born_step[live.numpy()] > after).mean()) if out["n_live"] else float("nan"))
    return out


def run(ctx, figures_dir) -> AnalysisResult:
    model = series_model(ctx)
    revs = ctx.revisions(model)
    if len(revs) < 2:
        raise ConfigError(f"crosscoder_evolution needs at least two checkpoints of {model}, got {revs}",
                          "set checkpoints: all on the series model")
    if len(ctx.cfg.sae.seeds) < SEEDS:
        raise ConfigError(f"crosscoder_evolution needs {SEEDS} SAE seeds", "set sae.seeds to at least two seeds")
    site = ctx.sites_of(model)[-1].name
    book = Codebook(ctx)
    seeds = list(ctx.cfg.sae.seeds[:SEEDS])
    n, steps = len(revs), [step_of(r) for r in revs]
    res = AnalysisResult(NAME, f"Crosscoder over the checkpoints of {model} ({site})")
    stores = [ctx.store(Cell(model, r, "D")) for r in revs]
    ccs = train_crosscoders(ctx.cfg, ctx.cache, stores, [site] * n, [model] * n, seeds, label=f"crosscoder {model} over {n} checkpoints")
    anchor = train_crosscoders(ctx.cfg, ctx.cache, [stores[-1]] * n, [site] * n, [model] * n, seeds[:1],
                               label=f"crosscoder {model}@{revs[-1]} x {n - 1} copies")[0]
    x = torch.cat([book.acts(model, r, site) for r in revs], dim=1)
    x_anchor = torch.cat([book.acts(model, revs[-1], site)] * n, dim=1)
    after = ctx.injection["after_step"] if ctx.injection is not None else None
    flags = ctx.eval_span_flags(model) if after is not None else None
    tok = book.token_ids(model, revs[-1])
    s0, s1 = (_summary(cc, x, n, after, steps, flags, tok) for cc in ccs)
    anc = _summary(anchor, x_anchor, n, after, steps, flags, tok)
    lin = lineage_births(ctx, book, model, site, revs, (A_SEED, B_SEED))
    lin_null = lineage_births(ctx, book, model, site, revs, (B_SEED, A_SEED))

    # births per checkpoint, both arms
    p0, p1 = later_distribution(s0["counts"]), later_distribution(s1["counts"])
    l0, l1 = later_distribution(np.nan_to_num(lin)), later_distribution(np.nan_to_num(lin_null))
    cc_spread, lin_spread, dist = tv_distance(p0, p1), tv_distance(l0, l1), tv_distance(p0, l0)
    tol = float(np.nanmax([cc_spread, lin_spread])) if np.isfinite([cc_spread, lin_spread]).any() else float("nan")
    comparable = bool(np.isfinite(dist))  # both arms date at least one birth after the first checkpoint
    agree = bool(comparable and np.isfinite(tol) and dist <= tol)
    two = pd.DataFrame({
        "site": site, "revision": revs, "step": steps,
        "crosscoder_births": s0["counts"], "crosscoder_share_of_later": np.r_[np.nan, p0],
        "crosscoder_births_seed2": s1["counts"], "crosscoder_share_of_later_seed2": np.r_[np.nan, p1],
        "anchor_births": anc["counts"],
        "lineage_births": lin, "lineage_share_of_later": np.r_[np.nan, l0],
        "lineage_births_seed_null": lin_null, "lineage_share_of_later_seed_null": np.r_[np.nan, l1]})
    two["tv_crosscoder_vs_lineage"], two["tolerance"], two["comparable"], two["agree"] = dist, tol, comparable, agree
    res.tables["two_arm_births"] = two

    later = {k: 1.0 - s["counts"][0] / s["n_live"] if s["n_live"] else float("nan") for k, s in (("s0", s0), ("s1", s1), ("anchor", anc))}
    comp = f"{model}:{site} over {n} checkpoints"
    common = dict(model=model, site=site, n_live=s0["n_live"], n_live_seed2=s1["n_live"], anchor_n_live=anc["n_live"],
                  birth_fraction=BIRTH_FRACTION)
    rows = [norm_row(NAME, comp, "share of live latents born after the first checkpoint", later["s0"], later["anchor"], None,
                     note=f"floor: the final checkpoint crossed with {n - 1} copies of itself (every latent born at the first); no skyline",
                     value_seed2=later["s1"], seed_null_spread=abs(later["s0"] - later["s1"]), **common),
            norm_row(NAME, comp, "birth distribution distance (crosscoder vs lineage)", dist, float("nan"), None,
                     note="total variation between the two arms' distributions of births after the first checkpoint; "
                          "tolerance = the larger seed spread", crosscoder_seed_spread=cc_spread,
                     lineage_seed_spread=lin_spread, tolerance=tol, comparable=comparable, agree=agree, **common)]
    res.findings.append(
        f"{comp}: {s0['n_live']} live crosscoder latents; born (decoder norm reaching {BIRTH_FRACTION} of its final "
        f"value) per checkpoint: " + ", ".join(f"{r} {c}" for r, c in zip(revs, s0["counts"]))
        + f" (second seed: {', '.join(str(c) for c in s1['counts'])}); {later['s0']:.3f} are born after the first "
        f"checkpoint (second seed {later['s1']:.3f}; floor, the copy anchor: {later['anchor']:.3f}).")
    res.findings.append(
        f"{comp}: lineage births of the matching arm per transition: "
        + ", ".join(f"{r} {int(v)}" for r, v in zip(revs[1:], lin[1:])) + "; "
        + (f"the two arms' distributions of later births differ by TV {dist:.3f} (crosscoder seed spread {cc_spread:.3f}, "
           f"lineage seed spread {lin_spread:.3f}): the two arms " + ("agree" if agree else "disagree")
           + f" (tolerance {tol:.3f})." if comparable else
           "the two arms cannot be compared: "
           + ("the crosscoder" if not np.isfinite(p0).all() else "the lineage")
           + " dates no birth after the first checkpoint."))

    traj = _trajectory_table(s0, revs, steps)
    if after is not None:
        born = pd.DataFrame({"latent": s0["passage"], "context_excess": s0["excess"][s0["passage"]],
                             "born_at": [revs[int(s0["births"][j])] for j in s0["passage"]],
                             "born_step": s0["born_step"][s0["passage"]]})
        born["born_after_injection"] = born["born_step"] > after
        res.tables["passage_latents"] = born
        how = (f"context excess >= {CONTEXT_EXCESS}" if s0["by_threshold"]
               else f"none reaches context excess {CONTEXT_EXCESS}; the {len(born)} with the largest excess")
        holds = bool(len(born)) and bool(born["born_after_injection"].all())
        rows.append(norm_row(NAME, comp, "share of passage latents born after the injection step", s0["passage_after"],
                             s0["base_after"], 1.0, note=f"passage latents: {how}; floor: share of all live latents born "
                             f"after step {after}; skyline: all of them", value_seed2=s1["passage_after"],
                             seed_null_spread=abs(s0["passage_after"] - s1["passage_after"]),
                             anchor_value=anc["passage_after"], n_passage=len(born), n_passage_seed2=len(s1["passage"]),
                             after_step=after, all_born_after=holds, **common))
        res.findings.append(
            f"{comp}: {len(born)} crosscoder latents respond to the passage introduced after step {after} ({how}); "
            + (f"born at steps {', '.join(str(int(s)) for s in born['born_step'])}: "
               f"{int(born['born_after_injection'].sum())} of {len(born)} born after step {after} - "
               + ("holds" if holds else "does not hold for all") if len(born) else "none to date")
            + f" (share {s0['passage_after']:.3f}, second seed {s1['passage_after']:.3f}; floor: {s0['base_after']:.3f} "
            f"of all live latents are born after step {after}; copy anchor {anc['passage_after']:.3f}).")
    else:
        res.findings.append(f"{comp}: the corpus injects no passage (corpus.inject_after_step), so there is no planted birth to date.")
    res.tables["crosscoder_evolution"] = pd.DataFrame(rows)
    res.tidy += rows
    res.tables["decoder_norm_trajectories"] = traj
    long = traj.melt(id_vars=["latent", "passage", "birth_index", "birth_step"], value_vars=revs, var_name="revision",
                     value_name="norm_over_final")
    long["step"] = long["revision"].map(dict(zip(revs, range(n) if min(steps) < 0 else steps)))
    res.figures.append((f"Decoder-norm trajectories of live crosscoder latents over the checkpoints of {model} ({site}): "
                        f"median and quantile bands, passage latents highlighted; the dotted line is the birth threshold",
                        plots.norm_trajectories(long, figures_dir / "crosscoder_evolution_trajectories.png",
                                                f"Crosscoder decoder norms over training ({site})", x="step",
                                                y="norm_over_final", latent="latent", highlight="passage",
                                                threshold=BIRTH_FRACTION, logx=min(steps) >= 0,
                                                xlabel="training step" if min(steps) >= 0 else "checkpoint (series order)",
                                                ylabel="decoder norm / final decoder norm")))
    res.text = (f"A BatchTopK crosscoder reads {site} of {model} at every checkpoint ({', '.join(revs)}) on the same "
                "harvested tokens; each latent has one decoder row per checkpoint. A latent is born at the first "
                f"checkpoint where its decoder norm reaches {BIRTH_FRACTION} of its final norm (live latents only). "
                "Births per checkpoint are set beside the lineage births of the matching arm (SAEs per checkpoint "
                "linked by activation correlation); the arms agree when the total variation between their "
                "distributions of later births is at most the larger seed spread (crosscoder: a second seed; lineage: "
                "the SAE seeds' alternation swapped). Copy anchor: the final checkpoint crossed with copies of itself, "
                "where every latent is born at the first checkpoint (the floor of the born-later shares). Passage "
                "latents respond to the injected passage's context beyond token identity (context excess).")
    return res


def _trajectory_table(s: dict, revs: list[str], steps: list[int]) -> pd.DataFrame:
    """One row per live latent: its decoder norm at each checkpoint over its final norm, birth and passage flag."""
    live = s["live"].numpy()
    norms = s["norms"][live]
    rel = (norms / norms[:, -1:].clamp_min(1e-12)).numpy()
    idx = np.flatnonzero(live)
    table = pd.DataFrame(rel, columns=revs)
    table.insert(0, "latent", idx)
    table.insert(1, "passage", np.isin(idx, s.get("passage", np.array([], dtype=int))))
    table.insert(2, "birth_index", s["births"][live].numpy())
    table.insert(3, "birth_step", np.asarray(steps)[table["birth_index"].to_numpy()])
    return table
