"""The crosscoder arm of subset generalisation: the model trained on D against the model trained on D'.

A BatchTopK crosscoder reads the same site (the deepest one of the model on D) of both models on their aligned
harvest rows of D (the same tokens; :func:`universality.study.stages.train_crosscoders`). Live latents (firing
on the evaluation text) are classified by relative decoder norm
(:func:`universality.crosscoder.analysis.classify_latents`): shared, exclusive to the D model, exclusive to the
D' model.

**Enrichment.** Latents exclusive to the D model should be about text only the D model was trained on: on the
evaluation tokens from D \\ D' ("outside", the injected passage left out) against the tokens from D'. For a
set of latents, the firing rate on each part is the share of (token, latent) pairs that fire; the
*D \\ D' firing share* ``rate_out / (rate_out + rate_in)`` is 0.5 when the set fires alike on both parts and
1 when it fires only on D \\ D'. Reported for the D-exclusive and the shared latents (and the ratio
``rate_out / rate_in``, and the same with mean activations), with

- floor: the firing share of random sets of live latents of the same size (mean over :data:`N_DRAWS` draws);
- seed null: a second crosscoder seed (``seed_null_spread``: the absolute difference);
- copy anchor: the D model crossed with a copy of itself (its exclusive fraction: the floor of the exclusive
  rows, nearly 0; its live latents' firing share: the share of an ordinary dictionary).

**Two arms.** The crosscoder's share of the D model's latents missing from the D' model (D-exclusive among the
live latents not exclusive to D') beside the matching arm's: the share of live SAE_D features of the D model
whose best Pearson partner among SAE_D features of the D' model (both SAEs trained on D activations, read on
the evaluation text) correlates below ``match.corr_threshold`` (subset_generalization's "missing" rule, across
the two models). The arms agree when the two shares differ by at most the larger seed spread (crosscoder:
second seed; matching: the SAE seeds swapped).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from analysis import plots
from analysis.studies.common import A_SEED, B_SEED, AnalysisResult, Codebook, norm_row, per_feature_mppc
from analysis.studies.subset_generalization import subset_models
from universality.crosscoder.analysis import classify_latents, live_latents, relative_decoder_norms
from universality.errors import ConfigError, DataError
from universality.study.pipeline import Cell
from universality.study.stages import train_crosscoders

NAME = "crosscoder_subset"
SEEDS = 2
#: random latent sets drawn for the enrichment floor
N_DRAWS = 200


def firing_share(z: Float[Tensor, "T d_sae"], latents: np.ndarray, out: Bool[Tensor, " T"],
                 inside: Bool[Tensor, " T"]) -> dict[str, float]:
    """Firing rates and mean activations of ``latents`` on the ``out`` and ``inside`` tokens: ``share`` =
    ``rate_out / (rate_out + rate_in)`` (NaN when the set never fires there), ``ratio`` = ``rate_out / rate_in``,
    ``act_share`` the same share with mean activations."""
    if len(latents) == 0:
        return {"share": float("nan"), "ratio": float("nan"), "rate_out": float("nan"), "rate_in": float("nan"),
                "act_share": float("nan")}
    zs = z[:, torch.as_tensor(latents, dtype=torch.long)]
    fire = (zs > 0).float()
    r_out, r_in = float(fire[out].mean()), float(fire[inside].mean())
    a_out, a_in = float(zs[out].clamp_min(0).mean()), float(zs[inside].clamp_min(0).mean())
    return {"share": r_out / (r_out + r_in) if r_out + r_in > 0 else float("nan"),
            "ratio": r_out / r_in if r_in > 0 else float("nan"), "rate_out": r_out, "rate_in": r_in,
            "act_share": a_out / (a_out + a_in) if a_out + a_in > 0 else float("nan")}


def random_share(z: Float[Tensor, "T d_sae"], live: np.ndarray, size: int, out: Bool[Tensor, " T"],
                 inside: Bool[Tensor, " T"], seed: int) -> float:
    """Mean firing share of :data:`N_DRAWS` random sets of ``size`` live latents (the enrichment floor)."""
    if size == 0 or len(live) < size:
        return float("nan")
    rng = np.random.default_rng(seed)
    vals = [firing_share(z, rng.choice(live, size, replace=False), out, inside)["share"] for _ in range(N_DRAWS)]
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")


def classify(cc, x: Float[Tensor, "T d_in"], out: Bool[Tensor, " T"], inside: Bool[Tensor, " T"], seed: int) -> dict:
    """Live latents by class, the share of the D model's latents missing from the D' model, and each group's
    firing share with its floor (random sets of live latents of the group's size)."""
    live = live_latents(cc, x)
    labels, owner = classify_latents(relative_decoder_norms(cc))
    lab, own, lv = np.array(labels), owner.numpy(), live.numpy()
    groups = {"exclusive_D": np.flatnonzero(lv & (lab == "exclusive") & (own == 0)),
              "exclusive_Dprime": np.flatnonzero(lv & (lab == "exclusive") & (own == 1)),
              "shared": np.flatnonzero(lv & (lab == "shared")), "live": np.flatnonzero(lv)}
    with torch.no_grad():
        z = cc.encode(x)
    n_live = len(groups["live"])
    d_side = n_live - len(groups["exclusive_Dprime"])
    res = {"n_live": n_live, "groups": groups, "z": z,
           "missing": len(groups["exclusive_D"]) / d_side if d_side else float("nan"),
           "exclusive_fraction": (len(groups["exclusive_D"]) + len(groups["exclusive_Dprime"])) / n_live if n_live else float("nan")}
    res.update({g: firing_share(z, idx, out, inside) for g, idx in groups.items()})
    res["floors"] = {g: random_share(z, groups["live"], len(idx), out, inside, seed) for g, idx in groups.items()}
    res["floor"] = res["floors"]["exclusive_D"]
    return res


def matching_missing(ctx, book: Codebook, full: tuple[str, str], sub: tuple[str, str], site: str,
                     seeds: tuple[int, int]) -> float:
    """Share of live SAE_D features of the D model (seed ``seeds[0]``) whose best Pearson partner among SAE_D
    features of the D' model (seed ``seeds[1]``) correlates below ``match.corr_threshold``."""
    ca = book.codes(Cell(full[0], full[1], "D"), site, seeds[0])
    cb = book.codes(Cell(sub[0], sub[1], "D"), site, seeds[1])
    a_to_b, _ = per_feature_mppc(ca, cb)
    return float((a_to_b < ctx.cfg.match.corr_threshold).mean()) if a_to_b.size else float("nan")


def seed_noise_missing(ctx, book: Codebook, full: tuple[str, str], site: str) -> float:
    """The same missing share between two seeds of SAE_D on the D model (the matching arm's noise level)."""
    cell = Cell(full[0], full[1], "D")
    a_to_b, _ = per_feature_mppc(book.codes(cell, site, A_SEED), book.codes(cell, site, B_SEED))
    return float((a_to_b < ctx.cfg.match.corr_threshold).mean()) if a_to_b.size else float("nan")


def run(ctx, figures_dir) -> AnalysisResult:
    m_full, m_sub = subset_models(ctx)
    if len(ctx.cfg.sae.seeds) < SEEDS:
        raise ConfigError(f"crosscoder_subset needs {SEEDS} SAE seeds", "set sae.seeds to at least two seeds")
    rf, rp = ctx.revisions(m_full)[-1], ctx.revisions(m_sub)[-1]
    site = ctx.sites_of(m_full)[-1].name
    if site not in {s.name for s in ctx.sites_of(m_sub)}:
        raise ConfigError(f"crosscoder_subset reads {site} of both models, but {m_sub} has no such site",
                          "give both models the same sites")
    book = Codebook(ctx)
    tf, tp = book.token_ids(m_full, rf), book.token_ids(m_sub, rp)
    if not (tf.shape == tp.shape and torch.equal(tf, tp)):
        raise DataError(f"{m_full} and {m_sub} tokenize the evaluation text differently", "use one tokenizer for both")
    flags = ctx.eval_span_flags(m_full)
    out = ~flags["in_subset"] & ~flags["injected"]
    inside = flags["in_subset"] & ~flags["injected"]
    if not bool(out.any()) or not bool(inside.any()):
        raise ConfigError("the evaluation spans do not cover both D' and D \\ D'",
                          "raise harvest.eval_spans or use a subset that keeps part of the corpus")
    seeds = list(ctx.cfg.sae.seeds[:SEEDS])
    st_f, st_p = ctx.store(Cell(m_full, rf, "D")), ctx.store(Cell(m_sub, rp, "D"))
    ccs = train_crosscoders(ctx.cfg, ctx.cache, [st_f, st_p], [site, site], [m_full, m_sub], seeds, label=f"crosscoder {m_full} x {m_sub}")
    anchor = train_crosscoders(ctx.cfg, ctx.cache, [st_f, st_f], [site, site], [m_full, m_full], seeds[:1], label=f"crosscoder {m_full} x copy")[0]
    xf, xp = book.acts(m_full, rf, site), book.acts(m_sub, rp, site)
    c0, c1 = (classify(cc, torch.cat([xf, xp], dim=1), out, inside, ctx.cfg.seed) for cc in ccs)
    anc = classify(anchor, torch.cat([xf, xf], dim=1), out, inside, ctx.cfg.seed)
    comp = f"{m_full}:{site} x {m_sub}:{site}"
    res = AnalysisResult(NAME, f"Crosscoder arm of subset generalisation: {m_full} (D) x {m_sub} (D')")
    common = dict(model_d=m_full, model_dprime=m_sub, site=site, n_live=c0["n_live"], n_live_seed2=c1["n_live"],
                  anchor_n_live=anc["n_live"], token_share_outside=float(out.float().mean()))
    rows = []
    for group, label in (("exclusive_D", f"latents exclusive to {m_full}"), ("shared", "shared latents")):
        v0, v1 = c0[group]["share"], c1[group]["share"]
        rows.append(norm_row(NAME, comp, f"D \\ D' firing share ({label})", v0, c0["floors"][group], 1.0,
                             note="floor: random sets of live latents of the same size; skyline: a set that fires only "
                                  "on D \\ D' text; 0.5 = equal rates on D' and D \\ D'",
                             value_seed2=v1, seed_null_spread=abs(v0 - v1), n_latents=len(c0["groups"][group]),
                             n_latents_seed2=len(c1["groups"][group]), rate_ratio=c0[group]["ratio"],
                             activation_share=c0[group]["act_share"], anchor_live_share=anc["live"]["share"], **common))
    excess0 = c0["exclusive_D"]["share"] - c0["shared"]["share"]
    excess1 = c1["exclusive_D"]["share"] - c1["shared"]["share"]
    rows.append(norm_row(NAME, comp, "enrichment excess (D-exclusive minus shared firing share)", excess0,
                         c0["floor"] - c0["shared"]["share"], None,
                         note="floor: random live sets of the D-exclusive set's size minus the shared latents",
                         value_seed2=excess1, seed_null_spread=abs(excess0 - excess1), **common))
    m_ab = matching_missing(ctx, book, (m_full, rf), (m_sub, rp), site, (A_SEED, B_SEED))
    m_ba = matching_missing(ctx, book, (m_full, rf), (m_sub, rp), site, (B_SEED, A_SEED))
    noise = seed_noise_missing(ctx, book, (m_full, rf), site)
    cc_spread, m_spread = abs(c0["missing"] - c1["missing"]), abs(m_ab - m_ba)
    tol = max(cc_spread, m_spread)
    agree = bool(abs(c0["missing"] - m_ab) <= tol)
    rows.append(norm_row(NAME, comp, f"crosscoder: share of {m_full} latents missing from {m_sub}", c0["missing"],
                         anc["missing"], None, note=f"floor: {m_full} crossed with a copy of itself",
                         value_seed2=c1["missing"], seed_null_spread=cc_spread, **common))
    rows.append(norm_row(NAME, comp, f"matching: share of {m_full} SAE_D features missing from {m_sub}", m_ab, noise, None,
                         note=f"best Pearson partner below {ctx.cfg.match.corr_threshold}; floor: the same share between "
                              f"two seeds of SAE_D on {m_full} (noise level)", value_seed2=m_ba, seed_null_spread=m_spread,
                         model_d=m_full, model_dprime=m_sub, site=site))
    two = pd.DataFrame([
        {"arm": "crosscoder", "missing_share": c0["missing"], "seed_null_spread": cc_spread, "floor": anc["missing"],
         "floor_kind": "copy anchor", "exclusive_D": len(c0["groups"]["exclusive_D"]),
         "exclusive_Dprime": len(c0["groups"]["exclusive_Dprime"]), "shared": len(c0["groups"]["shared"]), "n_live": c0["n_live"]},
        {"arm": "matching", "missing_share": m_ab, "seed_null_spread": m_spread, "floor": noise,
         "floor_kind": "SAE seed noise", "exclusive_D": np.nan, "exclusive_Dprime": np.nan, "shared": np.nan, "n_live": np.nan}])
    two["agree"] = agree
    res.tables["two_arm_missing"] = two
    res.tables["crosscoder_subset"] = pd.DataFrame(rows)
    res.tidy += rows
    ex, sh = c0["exclusive_D"], c0["shared"]
    res.findings.append(
        f"{comp}: of {c0['n_live']} live crosscoder latents, {len(c0['groups']['exclusive_D'])} are exclusive to {m_full} "
        f"(trained on D), {len(c0['groups']['exclusive_Dprime'])} to {m_sub} (trained on D'), {len(c0['groups']['shared'])} "
        f"shared. D \\ D' firing share (0.5 = no enrichment; {float(out.float().mean()):.2f} of the tokens are from D \\ D'): "
        + (f"{m_full}-exclusive latents {ex['share']:.3f} (firing-rate ratio {ex['ratio']:.3f}; second seed "
           f"{c1['exclusive_D']['share']:.3f}; floor, random live sets of that size: {c0['floor']:.3f}), "
           if len(c0["groups"]["exclusive_D"]) else f"no latent is exclusive to {m_full}, so there is no enrichment to "
           f"measure (second seed: {len(c1['groups']['exclusive_D'])} exclusive); ")
        + f"shared latents {sh['share']:.3f} (second seed {c1['shared']['share']:.3f}; floor "
        f"{c0['floors']['shared']:.3f}); enrichment excess {excess0:.3f} (second seed {excess1:.3f}, seed null spread "
        f"{abs(excess0 - excess1):.3f}); copy anchor: {anc['exclusive_fraction']:.3f} of its live latents exclusive, "
        f"their firing share {anc['live']['share']:.3f}.")
    res.findings.append(
        f"{comp}: the crosscoder finds {c0['missing']:.3f} of {m_full}'s latents missing from {m_sub} (seed null spread "
        f"{cc_spread:.3f}; copy anchor floor {anc['missing']:.3f}); matching finds {m_ab:.3f} of SAE_D features of "
        f"{m_full} without a partner in {m_sub} (seed spread {m_spread:.3f}; SAE seed noise {noise:.3f}): the two arms "
        + ("agree" if agree else "disagree") + f" (difference {abs(c0['missing'] - m_ab):.3f}, tolerance {tol:.3f}).")
    bars = []
    for name_, c in (("seed 1", c0), ("seed 2", c1), ("copy anchor", anc)):
        for group in ("exclusive_D", "shared", "live"):
            if np.isfinite(c[group]["share"]):
                bars.append({"control": f"{group} ({name_})", "view": "D \\ D' firing share", "found": c[group]["share"],
                             "floor": c["floors"][group], "skyline": 1.0})
    if bars:
        res.figures.append(("D \\ D' firing share of crosscoder latent groups (0.5 = equal rates on D' and D \\ D' text), "
                            "with the floor of random live latent sets of each group's size",
                            plots.found_fractions(pd.DataFrame(bars), figures_dir / "crosscoder_subset_enrichment.png",
                                                  "Crosscoder latents on D \\ D' text", ylabel="D \\ D' firing share")))
    res.text = (f"A BatchTopK crosscoder over {site} of {m_full} (trained on D) and {m_sub} (trained on D'), on the "
                "same harvested tokens of D; live latents classified by relative decoder norm (shared 0.3-0.7, "
                "exclusive >= 0.9). The D \\ D' firing share of a latent group is its firing rate on evaluation tokens "
                "from D \\ D' over the sum of its rates on D \\ D' and on D' tokens (0.5: no enrichment). Floor: random "
                "live latent sets of the same size; seed null: a second crosscoder seed; copy anchor: the D model "
                "crossed with a copy of itself. The two-arm table sets the crosscoder's share of the D model's latents "
                "missing from the D' model beside the matching arm's share of SAE_D features of the D model with no "
                f"partner at Pearson {ctx.cfg.match.corr_threshold} among SAE_D features of the D' model; they agree "
                "when they differ by at most the larger seed spread.")
    return res
