"""Two subset questions of the grant text, asked inside the subset study on the model trained on D.

(a) **Can smaller SAEs find the subset's features?** SAE_D' dictionaries of each width in
``study.sae.expansions`` are matched to the SAE_D dictionary at the study's own expansion (seed A) with
:func:`universality.match.splitting.width_recovery`: the share of its live latents with a partner
correlating at least ``match.corr_threshold`` (floor: the same against token-shuffled codes). The same
share for SAE_D of each width (seed B, never the reference's own seed) is the skyline of that width:
what a dictionary of that size trained on all of D finds. Skipped, with a note, without extra widths.

(b) **Are D' features noisier?** Per dictionary at the study's width: SAE_D' (seed B) against SAE_D
(seed A), with SAE_D's other seed (B) as the seed reference (the difference two seeds of the same data
make). *Noisier* means less reproducible or less context-bound:

- *seed stability*: each live feature's best activation correlation with the other seed copy of the same
  dictionary (per-feature MPPC; lower = noisier), with a token-shuffled floor;
- *context excess on D \\ D' text* (:func:`~analysis.studies.common.context_excess`, features with at
  least ``MIN_FIRES`` firings): the mass there beyond what token identity predicts (lower = more
  token-like);
- *density*: mean firing rate of the live features on the evaluation tokens (reported, not a criterion);
- *explained variance on D \\ D' tokens* (reconstruction of the text the subset lacks).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from analysis import plots
from analysis.studies.common import A_SEED, B_SEED, MIN_FIRES, context_excess, norm_row, per_feature_mppc, shuffled_floor
from universality.eval.metrics import explained_variance
from universality.match.splitting import width_recovery
from universality.study.pipeline import Cell

NAME = "subset_generalization"

#: the note in the analysis text when ``study.sae.expansions`` is empty
NO_WIDTHS_NOTE = ("Narrower SAEs on D' (question a) were not trained: set study.sae.expansions (e.g. [2, 4]) to "
                  "match SAE_D' of each width against SAE_D.")

#: (b) criteria: metric name -> (higher is less noisy, meaning)
NOISE_METRICS = {
    "seed stability": (True, "mean over live features of the best activation correlation with the other seed copy "
                             "of the same dictionary (per-feature MPPC)"),
    "context excess on D \\ D' text": (True, "mean over features firing at least MIN_FIRES times of the activation mass "
                                              "on D \\ D' text beyond what token identity predicts (context_excess)"),
    "density": (None, "mean firing rate of the live features on the evaluation tokens"),
    "explained variance on D \\ D' tokens": (True, "explained variance of the SAE's reconstruction on evaluation tokens "
                                                   "from documents outside D'"),
}


def width_question(ctx, book, model: str, rev: str, site: str, figures_dir):
    """(a) at one site: ``(tidy rows, table, figure or None, finding)``; ``None`` without extra widths."""
    widths = list(ctx.cfg.sae.expansions)
    if not widths:
        return None
    thr, main = ctx.cfg.match.corr_threshold, ctx.cfg.sae.expansion
    cD, cP = Cell(model, rev, "D"), Cell(model, rev, "D_prime")
    acts, tok = book.acts(model, rev, site), book.token_ids(model, rev)
    reference = ctx.saes(cD)[site][A_SEED]
    labels = [f"{e}x" for e in widths]
    rec_p = width_recovery(reference, [ctx.saes_at(cP, e)[site][B_SEED] for e in widths], acts, tok, thr,
                           labels=labels, seed=ctx.cfg.seed)
    rec_d = width_recovery(reference, [ctx.saes_at(cD, e)[site][B_SEED] for e in widths], acts, tok, thr,
                           labels=labels, seed=ctx.cfg.seed)
    table = pd.concat([rec_p.assign(sae="SAE on D'"), rec_d.assign(sae="SAE on D")], ignore_index=True)
    table.insert(0, "expansion", [float(e) for e in widths] * 2)
    table.insert(0, "site", site)
    table.insert(0, "model", model)
    comp = f"{model}:{site}"
    rows = []
    meaning = (f"share of SAE_D's live latents ({main}x, seed {A_SEED}) with a partner at correlation >= {thr} "
               "in a dictionary of this width")
    for k, e in enumerate(widths):
        rows.append(norm_row(NAME, f"{comp} SAE_D' {e}x vs SAE_D {main}x", "found fraction of D features (SAE_D' by width)",
                             float(rec_p["recovered"].iloc[k]), float(rec_p["floor_recovered"].iloc[k]),
                             float(rec_d["recovered"].iloc[k]), model=model, site=site, expansion=e,
                             value_meaning=meaning, note=f"skyline: SAE_D of the same width (seed {B_SEED})"))
        rows.append(norm_row(NAME, f"{comp} SAE_D {e}x vs SAE_D {main}x", "found fraction of D features (SAE_D by width)",
                             float(rec_d["recovered"].iloc[k]), float(rec_d["floor_recovered"].iloc[k]), None,
                             model=model, site=site, expansion=e, value_meaning=meaning,
                             note="the skyline of the SAE_D' row of this width"))
    floor = table["floor_recovered"]
    fig = plots.series(table, figures_dir / f"subset_width_recovery_{site}.png",
                       f"{comp}: SAE_D ({main}x) latents found by narrower dictionaries", "expansion", "recovered",
                       hue="sae", bands={"shuffled floor": (float(floor.min()), float(floor.max()))},
                       ylabel=f"share found (corr >= {thr})", xlabel="expansion of the dictionary searched")
    parts = "; ".join(f"{lab}: {p:.3f} (SAE on D: {d:.3f})"
                      for lab, p, d in zip(labels, rec_p["recovered"], rec_d["recovered"]))
    finding = (f"{comp}: share of SAE_D's {main}x latents found (corr >= {thr}) by SAE_D' of each width — {parts}; "
               f"shuffled floor at most {float(floor.max()):.3f}.")
    return rows, table, (f"SAE_D latents found by SAE_D' and SAE_D of each width at {site}", fig), finding


def _stats(sae, codes_self, codes_other, x: torch.Tensor, tok: torch.Tensor, outside: torch.Tensor) -> dict:
    """The (b) numbers of one dictionary (``codes_other``: its other seed copy)."""
    stab, _ = per_feature_mppc(codes_self, codes_other)
    with torch.no_grad():
        z = sae.encode(x).float()
        fires = (z > 0).sum(0).cpu().numpy()
        live = fires > 0
        excess = context_excess(z, outside, tok)
        ev = explained_variance(x[outside], sae(x[outside]))
    busy = fires >= MIN_FIRES
    return {"seed stability": float(stab.mean()) if stab.size else float("nan"),
            "context excess on D \\ D' text": float(np.mean(excess[busy])) if busy.any() else float("nan"),
            "density": float((fires[live] / z.shape[0]).mean()) if live.any() else float("nan"),
            "explained variance on D \\ D' tokens": float(ev)}


def noise_question(ctx, book, model: str, rev: str, site: str, outside: torch.Tensor):
    """(b) at one site: ``(tidy rows, table, finding)``."""
    cD, cP = Cell(model, rev, "D"), Cell(model, rev, "D_prime")
    x, tok = book.acts(model, rev, site), book.token_ids(model, rev)
    dA, dB = book.codes(cD, site, A_SEED), book.codes(cD, site, B_SEED)
    pA, pB = book.codes(cP, site, A_SEED), book.codes(cP, site, B_SEED)
    d_saes, p_saes = ctx.saes(cD)[site], ctx.saes(cP)[site]
    sae_p = _stats(p_saes[B_SEED], pB, pA, x, tok, outside)
    sae_d = _stats(d_saes[A_SEED], dA, dB, x, tok, outside)
    sae_d_other = _stats(d_saes[B_SEED], dB, dA, x, tok, outside)
    stab_floor, _ = shuffled_floor(pB, pA, seed=ctx.cfg.seed)
    comp = f"{model}:{site} SAE_D' (seed {B_SEED}) vs SAE_D (seed {A_SEED})"
    rows, verdicts = [], []
    for metric, (higher_better, meaning) in NOISE_METRICS.items():
        v, ref, other = sae_p[metric], sae_d[metric], sae_d_other[metric]
        gap, seed_gap = v - ref, abs(other - ref)
        noisier = bool(higher_better and np.isfinite(gap) and -gap > seed_gap)
        row = {"analysis": NAME, "comparison": comp, "metric": f"noise: {metric}", "value": v, "sae_d": ref,
               "sae_d_other_seed": other, "difference": gap, "seed_difference": seed_gap,
               "noisier_than_seed_noise": noisier if higher_better else float("nan"),
               "value_meaning": f"SAE_D': {meaning}", "model": model, "site": site,
               "note": f"seed_difference: |SAE_D seed {B_SEED} - SAE_D seed {A_SEED}|, the difference two seeds of "
                       "the same data make"}
        if metric == "seed stability":
            row["floor"] = stab_floor
            row["note"] += "; floor: SAE_D' against its other seed's token-shuffled codes"
        rows.append(row)
        if higher_better:
            verdicts.append((metric, v, ref, other, noisier))
    table = pd.DataFrame([{"model": model, "site": site, "metric": m, "SAE_D'": sae_p[m], "SAE_D": sae_d[m],
                           "SAE_D other seed": sae_d_other[m]} for m in NOISE_METRICS])
    said = "; ".join(f"{m} {v:.3f} vs {r:.3f} (other SAE_D seed {o:.3f}){' — lower beyond seed noise' if n else ''}"
                     for m, v, r, o, n in verdicts)
    n_noisy = sum(n for *_, n in verdicts)
    finding = (f"{model}:{site}: are D' features noisier? SAE_D' against SAE_D: {said}; seed-stability floor "
               f"{stab_floor:.3f}; density {sae_p['density']:.4f} vs {sae_d['density']:.4f}. "
               f"{n_noisy} of {len(verdicts)} criteria say noisier by more than two seeds of SAE_D differ.")
    return rows, table, finding


def run_questions(ctx, book, model: str, res, figures_dir) -> str:
    """Both questions for every site of ``model`` (trained on D); tables, rows, figures and findings go to
    ``res``; returns the text to add to the analysis text."""
    rev = ctx.revisions(model)[-1]
    flags = ctx.eval_span_flags(model)
    outside = ~flags["in_subset"] & ~flags["injected"]
    widths, noise = [], []
    for site in [s.name for s in ctx.sites_of(model)]:
        got = width_question(ctx, book, model, rev, site, figures_dir)
        if got is not None:
            rows, table, fig, finding = got
            res.tidy += rows
            widths.append(table)
            res.figures.append(fig)
            res.findings.append(finding)
        rows, table, finding = noise_question(ctx, book, model, rev, site, outside)
        res.tidy += rows
        noise.append(table)
        res.findings.append(finding)
    res.tables["subset_noise"] = pd.concat(noise, ignore_index=True)
    text = (f" Are D' features noisier (on {model}): SAE_D' against SAE_D at the same width, with SAE_D's other seed "
            "as the seed reference; noisier = lower seed stability (each feature's best correlation with the other "
            "seed copy) or lower context excess on D \\ D' text, by more than two seeds of SAE_D differ "
            "(table subset_noise).")
    if not widths:
        return text + " " + NO_WIDTHS_NOTE
    res.tables["subset_width_recovery"] = pd.concat(widths, ignore_index=True)
    return text + (f" Narrower SAEs on D': SAE_D' of each width in study.sae.expansions "
                   f"({', '.join(f'{e}x' for e in ctx.cfg.sae.expansions)}) matched to SAE_D at "
                   f"{ctx.cfg.sae.expansion}x (table subset_width_recovery); skyline: SAE_D of the same width.")
