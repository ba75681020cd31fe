"""Subset-dataset generalisation: a crossed design of model data x SAE data (D, or D' inside D).

Four dictionaries: {model trained on D, model trained on D'} x {SAE trained on D activations, SAE
trained on D' activations}. The analysis asks

1. **Are the D' features a subset of the D features?** Per feature, the best activation correlation
   (MPPC, Wang et al. 2024) of an SAE_D' feature among SAE_D features, and the reverse. A D feature
   whose best partner in SAE_D' correlates below ``match.corr_threshold`` is *missing from D'*; the
   same rate between two seeds of SAE_D is the noise level it must exceed.
2. **Which missing features come from text only in D \\ D'?** A feature is *specific* to a set of
   tokens when at least 90% of its activation mass on the evaluation spans lies there (and it fires
   on at least 5 tokens). Two sets are checked: all text of D \\ D', and the planted family (a
   synthetic pattern only D \\ D' has, when the corpus is planted), whose features must be missing
   from SAE_D'.
3. **How well do D' features reconstruct D?** Explained variance of each SAE on evaluation tokens
   from D' and from D \\ D'.
4. **Model or SAE data?** MPPC between SAEs that differ only in the SAE's data (same model) and
   between SAEs that differ only in the model (same SAE data), against the seed skyline.

5. **Can smaller SAEs find the subset's features; are D' features noisier?** (grant text, issue 16
   item 5): :mod:`analysis.studies.subset_questions`, on the model trained on D.

Every MPPC row carries two skylines (Wang et al. 2024): the SAE-seed skyline (two seeds of SAE_D on
the model) and, when ``study.model_seed_skyline`` trains model-seed copies, the model-seed skyline
(SAE_D on the model against SAE_D on its copy pre-trained with another seed), each with its own
normalised value. The matched-fraction rows give the same rate between SAE seeds and between model
seeds as their noise levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from analysis import plots
from analysis.studies.cards import findings_about, pair_section, planted_items
from analysis.studies.subset_questions import run_questions
from analysis.studies.common import (
    A_SEED,
    B_SEED,
    MIN_FIRES,
    MPPC_MEANING,
    SMALL_N,
    SPECIFIC_MASS,
    AnalysisResult,
    Codebook,
    count_or_share,
    dead_note,
    mass_share,
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
from universality.eval.metrics import explained_variance
from universality.match.compare import with_note
from universality.study.pipeline import Cell

NAME = "subset_generalization"


def subset_models(ctx) -> tuple[str, str]:
    sub = [m for m in ctx.cfg.models if m.data == "D_prime"]
    if not sub:
        raise ConfigError("subset_generalization needs a model trained on D_prime", "add a model with data: D_prime")
    mdp = sub[0]
    full = [m for m in ctx.cfg.models if m.data == "D" and (m.zoo, m.path) == (mdp.zoo, mdp.path)]
    full = full or [m for m in ctx.cfg.models if m.data == "D"]
    if not full:
        raise ConfigError("subset_generalization needs a model trained on D", "add a model with data: D")
    return full[0].name, mdp.name


@dataclass
class _Tables:
    """What the per-site comparisons collect, table by table."""

    rows: list[dict] = field(default_factory=list)
    quality: list[dict] = field(default_factory=list)
    specific: list[dict] = field(default_factory=list)
    dist: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    #: (model, site, tokens) -> SAE_D latents specific to those tokens (D \ D' text, the planted family)
    specific_latents: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)


def run(ctx, figures_dir) -> AnalysisResult:
    m_full, m_sub = subset_models(ctx)
    book = Codebook(ctx)
    res = AnalysisResult(NAME, f"Subset generalisation: {m_full} (trained on D) and {m_sub} (trained on D')")
    out = _Tables()
    ref_site = None
    for model in (m_full, m_sub):
        rev = ctx.revisions(model)[-1]
        flags = ctx.eval_span_flags(model)
        outside = ~flags["in_subset"] & ~flags["injected"]
        if not bool(outside.any()) or bool(outside.all()):
            raise ConfigError("the evaluation spans do not cover both D' and D \\ D'",
                              "raise harvest.eval_spans or use a subset that keeps part of the corpus")
        for site in [s.name for s in ctx.sites_of(model)]:
            _compare_site(ctx, book, model, rev, site, flags, outside, out)
            if model == m_full:
                ref_site = site
    effects = _model_vs_sae_data(ctx, book, m_full, m_sub, ref_site, res)
    table = pd.DataFrame(out.rows)
    res.tables["subset_relation"] = table
    res.tables["specific_features"] = pd.DataFrame(out.specific)
    res.tidy += out.rows + effects
    res.findings += _specific_findings(out.specific) + _subset_findings(table)
    questions_text = run_questions(ctx, book, m_full, res, figures_dir)
    if ctx.cfg.cards:
        for model in (m_full, m_sub):
            rev = ctx.revisions(model)[-1]
            for site in [s.name for s in ctx.sites_of(model)]:
                extra = {"planted-family features of SAE_D (planted positive)":
                         planted_items(out.specific_latents.get((model, site, "planted family"), [])),
                         "SAE_D features specific to D \\ D' text":
                         planted_items(out.specific_latents.get((model, site, "D \\ D' text"), []))}
                sec = pair_section(ctx, f"{model}:{site}, SAE_D vs SAE_D'", (Cell(model, rev, "D"), A_SEED, "SAE_D"),
                                   (Cell(model, rev, "D_prime"), B_SEED, "SAE_D'"), site, extra_groups=extra,
                                   findings=findings_about(res.findings, f"{model}:{site}:"))
                if sec is not None:
                    res.cards.append(sec)
    res.figures += _figures(out, figures_dir)
    res.tables["reconstruction"] = pd.DataFrame(out.quality).pivot_table(
        index=["model", "site", "sae"], columns="tokens", values="explained_variance").reset_index()
    res.text = (f"Crossed design: models {m_full} (trained on D) and {m_sub} (trained on D') x SAEs trained on D or on "
                f"D' activations. A feature is matched when its best activation correlation exceeds "
                f"{ctx.cfg.match.corr_threshold}; the same rate between two seeds of SAE_D is the noise level. The "
                "reconstruction table gives each SAE's explained variance on evaluation tokens from D' and from D \\ D'. "
                + skylines_text(ctx) + " In the matched-fraction rows the skyline columns are the same rate between "
                "two seeds of SAE_D (skyline_sae_seed) and between SAE_D on the model and on its model-seed copy "
                "(skyline_model_seed): the noise levels a difference must exceed." + questions_text)
    return res


def _compare_site(ctx, book: Codebook, model: str, rev: str, site: str, flags: dict, outside: torch.Tensor,
                  out: _Tables) -> None:
    """SAE_D against SAE_D' of one model at one site: matched fractions with their seed noise level,
    features specific to text only in D \\ D', and reconstruction on each part of the evaluation text."""
    thr = ctx.cfg.match.corr_threshold
    cD, cP = Cell(model, rev, "D"), Cell(model, rev, "D_prime")
    codes_D = [book.codes(cD, site, s) for s in range(len(ctx.cfg.sae.seeds))]
    codes_P = book.codes(cP, site, B_SEED)
    sky, sky_feat = skyline_interval(codes_D)
    floor, _ = shuffled_floor(codes_D[A_SEED], codes_P, seed=ctx.cfg.seed)
    d_full, _ = per_feature_mppc(codes_D[A_SEED], codes_P, live_only=False)
    d_to_p, p_to_d = per_feature_mppc(codes_D[A_SEED], codes_P)
    seed_d, _ = per_feature_mppc(codes_D[A_SEED], codes_D[B_SEED])
    copy = seed_copy_codes(ctx, model, "D", site)
    model_sky = model_seed_skyline(ctx, model, codes_D[A_SEED], copy)
    copy_d = per_feature_mppc(codes_D[A_SEED], copy)[0] if copy is not None else None
    comp = f"{model}:{site}"
    dead = dead_note(codes_D[A_SEED], codes_P, "SAE_D", "SAE_D'")
    for metric, scores, way in (("mppc SAE_D' -> SAE_D", p_to_d, "b->a"), ("mppc SAE_D -> SAE_D'", d_to_p, "a->b")):
        out.rows.append(norm_row(NAME, comp, metric, float(scores.mean()), floor, sky, model_sky, note=dead,
                                 model=model, site=site, value_meaning=MPPC_MEANING,
                                 **mppc_ci(codes_D[A_SEED], codes_P, way, seed=ctx.cfg.seed)))
    missing = d_to_p < thr
    seed_missing = seed_d < thr
    live = ~np.isnan(d_full)
    missing_full = np.nan_to_num(d_full, nan=1.0) < thr  # per feature of SAE_D; dead ones are not "missing"
    seed_full, _ = per_feature_mppc(codes_D[A_SEED], codes_D[B_SEED], live_only=False)
    stable = np.nan_to_num(seed_full, nan=0.0) >= thr  # found again in SAE_D's other seed copy
    noise = ("skyline_sae_seed = the same rate between two seeds of SAE_D, skyline_model_seed = between SAE_D on "
             f"{model} and on its model-seed copy (noise levels)")
    noise = noise if copy is not None else with_note(noise, model_sky.why_not)
    out.rows.append({"analysis": NAME, "comparison": comp, "metric": "fraction of D features missing from D'",
                     "value": float(missing.mean()), "skyline_sae_seed": float(seed_missing.mean()),
                     "skyline_model_seed": float((copy_d < thr).mean()) if copy_d is not None else float("nan"),
                     "value_meaning": f"share of live SAE_D features whose best SAE_D' partner correlates below {thr}",
                     "note": with_note(noise, dead), "model": model, "site": site})
    out.rows.append({"analysis": NAME, "comparison": comp, "metric": "fraction of D' features found in D",
                     "value": float((p_to_d >= thr).mean()), "skyline_sae_seed": float((seed_d >= thr).mean()),
                     "skyline_model_seed": float((copy_d >= thr).mean()) if copy_d is not None else float("nan"),
                     "value_meaning": f"share of live SAE_D' features whose best SAE_D partner correlates at {thr} or more",
                     "note": with_note(noise, dead), "model": model, "site": site})
    for t in ctx.cfg.match.thresholds:
        out.curves += [
            {"threshold": t, "shared_fraction": float((p_to_d >= t).mean()), "comparison": f"{model}: D' in D", "kind": "observed"},
            {"threshold": t, "shared_fraction": float((d_to_p >= t).mean()), "comparison": f"{model}: D in D'", "kind": "observed"},
            {"threshold": t, "shared_fraction": float((seed_d >= t).mean()), "comparison": f"{model}: seed skyline", "kind": "skyline"}]
    out.dist += [{"comparison": f"{model}: D -> D'", "kind": "observed", "score": v} for v in d_to_p]
    out.dist += [{"comparison": f"{model}: D -> D'", "kind": "skyline", "score": v} for v in sky_feat]
    x = book.acts(model, rev, site)
    sae_D, sae_P = ctx.saes(cD)[site][A_SEED], ctx.saes(cP)[site][B_SEED]
    families = {"D \\ D' text": outside}
    if bool(flags["planted"].any()):
        families["planted family"] = flags["planted"]
    with torch.no_grad():
        z = sae_D.encode(x)
        for family, rows_mask in families.items():
            share, fires = mass_share(z, rows_mask)
            spec = (share >= SPECIFIC_MASS) & (fires >= MIN_FIRES) & live
            out.specific_latents[(model, site, family)] = [int(i) for i in np.nonzero(spec)[0]]
            out.specific.append({
                "model": model, "site": site, "tokens": family, "n_features": int(len(share)),
                "n_specific": int(spec.sum()),
                "missing_among_specific": float(missing_full[spec].mean()) if spec.any() else float("nan"),
                "missing_among_others": float(missing_full[~spec & live].mean()) if (~spec & live).any() else float("nan"),
                "n_other_live": int((~spec & live).sum()),
                "seed_stable_specific": int((spec & stable).sum()),
                "missing_among_seed_stable_specific": float(missing_full[spec & stable].mean())
                if (spec & stable).any() else float("nan"),
                "token_share": float(rows_mask.float().mean()),
            })
        for name_, sae in (("SAE_D", sae_D), ("SAE_D'", sae_P)):
            for part, mask in (("D' tokens", flags["in_subset"]), ("D \\ D' tokens", outside)):
                out.quality.append({"model": model, "site": site, "sae": name_, "tokens": part,
                                    "explained_variance": explained_variance(x[mask], sae(x[mask]))})


def _model_vs_sae_data(ctx, book: Codebook, m_full: str, m_sub: str, site: str | None, res: AnalysisResult) -> list[dict]:
    """Same SAE data with another model against the same model with other SAE data, at ``site``."""
    if site is None or site not in {s.name for s in ctx.sites_of(m_sub)}:
        return []
    rf, rp = ctx.revisions(m_full)[-1], ctx.revisions(m_sub)[-1]
    pairs = {
        "SAE data (model D: SAE_D vs SAE_D')": (Cell(m_full, rf, "D"), Cell(m_full, rf, "D_prime")),
        "SAE data (model D': SAE_D vs SAE_D')": (Cell(m_sub, rp, "D"), Cell(m_sub, rp, "D_prime")),
        "model (SAE on D: model D vs model D')": (Cell(m_full, rf, "D"), Cell(m_sub, rp, "D")),
        "model (SAE on D': model D vs model D')": (Cell(m_full, rf, "D_prime"), Cell(m_sub, rp, "D_prime")),
    }
    sky, _ = skyline_interval([book.codes(Cell(m_full, rf, "D"), site, s) for s in range(len(ctx.cfg.sae.seeds))])
    model_sky = model_seed_skyline(ctx, m_full, book.codes(Cell(m_full, rf, "D"), site, A_SEED),
                                   seed_copy_codes(ctx, m_full, "D", site))
    effects = []
    for label, (a, b) in pairs.items():
        ca, cb = book.codes(a, site, A_SEED), book.codes(b, site, B_SEED)
        fa, fb = per_feature_mppc(ca, cb)
        floor, _ = shuffled_floor(ca, cb, seed=ctx.cfg.seed)
        value = (float(fa.mean()) + float(fb.mean())) / 2
        effects.append(norm_row(NAME, label, "mppc (both directions)", value, floor, sky, model_sky,
                                note=dead_note(ca, cb, "first", "second"), site=site, factor=label.split(" (")[0],
                                value_meaning=MPPC_MEANING, **mppc_ci(ca, cb, "both", seed=ctx.cfg.seed)))
    res.tables["model_vs_sae_data"] = pd.DataFrame(effects)
    eff = pd.DataFrame(effects).groupby("factor")["value"].mean()
    res.findings.append(
        f"Changing the {eff.idxmin()} moves features more (mean MPPC {eff.min():.3f}) than changing the "
        f"{eff.idxmax()} ({eff.max():.3f}); SAE-seed skyline {sky}; "
        + (f"model-seed skyline {model_sky.value:.3f}." if model_sky.value is not None else f"{model_sky.why_not}."))
    return effects


def _specific_findings(specific: list[dict]) -> list[str]:
    """One finding per row of the specific-features table; shares of fewer than
    :data:`~analysis.studies.common.SMALL_N` features are quoted as counts ("1 of 1", not "100%")."""
    def part(frac: float, n: int) -> str:
        return count_or_share(int(round(frac * n)), n) if n and np.isfinite(frac) else "n/a"

    out = []
    for r in specific:
        n_spec, n_stable = int(r["n_specific"]), int(r["seed_stable_specific"])
        n_other = int(r.get("n_other_live", SMALL_N))
        text = (f"{r['model']}:{r['site']}: {n_spec} of {r['n_features']} SAE_D features fire "
                f"(>= {SPECIFIC_MASS:.0%} of their mass) on the {r['tokens']} (only in D \\ D'); of those "
                f"{part(r['missing_among_specific'], n_spec)} are missing from SAE_D' against "
                f"{part(r['missing_among_others'], n_other)} of the other features; "
                f"{n_stable} of them are found again in another seed of SAE_D")
        if n_stable and np.isfinite(r["missing_among_seed_stable_specific"]):
            text += f", and {part(r['missing_among_seed_stable_specific'], n_stable)} of those are missing from SAE_D'."
        else:
            text += "."
        out.append(text)
    return out


def _subset_findings(table: pd.DataFrame) -> list[str]:
    out = []
    for (model, site), grp in table[table["metric"].str.startswith("fraction")].groupby(["model", "site"]):
        vals = dict(zip(grp["metric"], zip(grp["value"], grp["skyline_sae_seed"])))
        miss, found = vals["fraction of D features missing from D'"], vals["fraction of D' features found in D"]
        out.append(f"{model}:{site}: {found[0]:.0%} of D' features are found in D (seeds: {found[1]:.0%}); "
                   f"{miss[0]:.0%} of D features are missing from D' (seeds: {miss[1]:.0%}).")
    return out


def _figures(out: _Tables, figures_dir) -> list[tuple[str, str]]:
    return [
        ("Shared fraction against the correlation threshold: D' in D, D in D', and between seeds",
         plots.threshold_curves(pd.DataFrame(out.curves), figures_dir / "subset_curves.png",
                                "Features matched across data subsets",
                                xlabel="activation correlation threshold (best partner)")),
        ("Per-feature best correlation of SAE_D features in SAE_D', against seed copies",
         plots.similarity_distributions(pd.DataFrame(out.dist), figures_dir / "subset_distributions.png",
                                        "SAE_D features found in SAE_D'")),
    ]
