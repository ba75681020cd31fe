"""Feature patching on indirect object identification (Cunningham et al. 2023, section 4).

Each model of the study (zoo models trained with ``corpus.ioi: true``, :mod:`universality.zoo.ioi`)
is read on :data:`N_PAIRS` clean/corrupted IOI prompt pairs (the repeated name swapped, so the
answer flips). The study refuses (``ConfigError``) a model whose final checkpoint's mean clean logit
difference (IO minus S at the final position) is below
:data:`~universality.zoo.ioi.MIN_LOGIT_DIFF`. At every site with a dictionary (SAE seed A), the
corrupted run is patched toward the clean one along ``k`` directions,
``x' = x_corrupt + sum_{i in F} (c_i - c'_i) f_i`` (:mod:`universality.eval.patching`), for four
bases: the SAE's features, PCA of the site's activations on the evaluation text, the standard
basis (neurons / residual coordinates) and random orthonormal directions (the floor). ``F`` grows
along a causal ranking: every direction patched alone on the first half of the pairs, best first;
the curves are read on the other half. The skyline is the full clean activation (fraction 1; the
three complete linear bases reach it at ``k = d``); the SAE with every feature patched reaches
``recon(clean) + err(corrupt)``, and its KL floor is KL(clean || site replaced by the SAE
reconstruction) at the final position.

Per checkpoint (``checkpoints: all``): the logit difference at each checkpoint, and the curves at those
that have learned the task (the difference is below the threshold earlier, so fractions of it mean
nothing there). Per architecture: every model of the study on the same prompts (one tokenizer).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from analysis import plots
from analysis.studies.common import A_SEED, AnalysisResult, norm_row
from universality.eval.patching import (PatchRun, k_to_reach, kl_floor, neuron_basis, pca_basis, random_basis,
                                        restoration_curve, sae_basis, single_effects)
from universality.study.pipeline import Cell
from universality.zoo.ioi import MIN_LOGIT_DIFF, IOIPairs, ioi_pairs, logit_diff, require_learned

NAME = "ioi_patching"
#: prompt pairs per model (half rank the directions, half measure the curves)
N_PAIRS = 64
#: restoration targets ("features needed to restore 50% / 80%")
TARGETS = (0.5, 0.8)
#: k of the tidy rows (SAE value against the random-direction floor and the full-activation skyline)
K_ROWS = (1, 4, 16)
#: the refusal threshold (mean clean logit difference, nats); the module's, kept here so a test can lower it
THRESHOLD = MIN_LOGIT_DIFF
BASES = ("SAE features", "PCA directions", "neurons (standard basis)", "random directions")


@torch.no_grad()
def clean_logit_diff(adapter, pairs: IOIPairs) -> tuple[float, float]:
    """Mean logit difference (IO - S) on the clean and on the corrupted prompts."""
    return (float(logit_diff(adapter.forward(pairs.clean), pairs.io, pairs.s).mean()),
            float(logit_diff(adapter.forward(pairs.corrupt), pairs.io, pairs.s).mean()))


def site_curves(adapter, sae, site: str, pairs: IOIPairs, pca_acts: torch.Tensor, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Restoration curves of the four bases at ``site`` (long table: basis, k, fraction) and a summary:
    ``k`` to reach each of :data:`TARGETS` per basis, the SAE's all-features fraction and its KL floor."""
    rank, held = pairs.split(len(pairs) // 2)
    run_rank = PatchRun(adapter, site, rank.clean, rank.corrupt, rank.io, rank.s)
    run = PatchRun(adapter, site, held.clean, held.corrupt, held.io, held.s)
    d = run.x_clean.shape[-1]
    bases = [sae_basis(sae), pca_basis(pca_acts), neuron_basis(d), random_basis(d, seed)]
    rows, summary = [], {"ld_clean": run.ld_clean, "ld_corrupt": run.ld_corrupt}
    for b in bases:
        effect = single_effects(run_rank, b).numpy()
        order = np.argsort(-effect, kind="stable")
        ks, fr = restoration_curve(run, b, order)
        rows += [{"basis": b.name, "k": k, "fraction": float(f)} for k, f in zip(ks, fr)]
        for t in TARGETS:
            summary[(b.name, t)] = k_to_reach(ks, fr, t)
        summary[(b.name, "all")] = float(fr[-1])
        summary[(b.name, "n")] = b.n
        for k in K_ROWS:
            summary[(b.name, k)] = float(np.interp(k, ks, fr))
    summary["kl_floor"] = kl_floor(adapter, sae, site, held.clean)
    return pd.DataFrame(rows), summary


def _k_text(k) -> str:
    return "not reached" if k is None else str(k)


def run(ctx, figures_dir) -> AnalysisResult:
    res = AnalysisResult(NAME, "Feature patching on indirect object identification")
    models = [m.name for m in ctx.cfg.models]
    pairs = {m: ioi_pairs(ctx.adapter(m).tokenizer, N_PAIRS, seed=ctx.cfg.seed + 1) for m in models}
    lds = []
    for m in models:
        for rev in ctx.revisions(m):
            c, k = clean_logit_diff(ctx.adapter_at(m, rev), pairs[m])
            lds.append({"model": m, "revision": rev, "ld_clean": c, "ld_corrupt": k, "learned": c >= THRESHOLD})
    ld = pd.DataFrame(lds)
    for m in models:  # refuse before any dictionary is trained
        require_learned(float(ld[ld["model"] == m].iloc[-1]["ld_clean"]), m, THRESHOLD)
    res.tables["logit_difference"] = ld
    curves, summaries = [], []
    for m in models:
        spec = ctx.cfg.model(m)
        for rev in ctx.revisions(m):
            row = ld[(ld["model"] == m) & (ld["revision"] == rev)].iloc[0]
            if not row["learned"]:
                continue
            cell = Cell(m, rev, spec.data)
            for s in ctx.sites_of(m):
                sae = ctx.saes(cell)[s.name][A_SEED]
                acts = ctx.eval_acts(m, rev)[s.name].float()
                table, summ = site_curves(ctx.adapter_at(m, rev), sae, s.name, pairs[m], acts, seed=ctx.cfg.seed)
                curves.append(table.assign(model=m, revision=rev, site=s.name))
                summaries.append({"model": m, "revision": rev, "site": s.name, **summ})
                for k in K_ROWS:
                    res.tidy.append(norm_row(
                        NAME, f"{m}@{rev}:{s.name}", f"fraction restored by {k} directions", summ[("SAE features", k)],
                        summ[("random directions", k)], 1.0, model=m, revision=rev, site=s.name, k=k,
                        pca=summ[("PCA directions", k)], neurons=summ[("neurons (standard basis)", k)],
                        ld_clean=summ["ld_clean"], ld_corrupt=summ["ld_corrupt"], kl_floor=summ["kl_floor"],
                        note=("value: top-k SAE features; floor: top-k random orthonormal directions; skyline: the "
                              "clean activation patched whole (1); pca/neurons: the same k of PCA directions / the "
                              "standard basis; all ranked by their single-direction effect on held-out pairs")))
    curve = pd.concat(curves, ignore_index=True)
    res.tables["restoration_curves"] = curve
    res.tables["patching_summary"] = _summary_table(summaries)
    _figures(res, curve, figures_dir)
    _findings(res, ld, summaries)
    res.text = (f"Clean and corrupted IOI prompts ({N_PAIRS} pairs; the repeated name swapped, so the answer flips) "
                "are run through each model; at each site the corrupted activation is patched toward the clean one "
                "along the top-k directions of a basis, x' = x_corrupt + sum_(i in F) (c_i - c'_i) f_i (Cunningham "
                "et al. 2023), and the rest of the model runs from x'. Directions are ranked by the restoration each "
                "achieves alone on half of the pairs and the curves are read on the other half, at k = 0, 1, 2, 4, ... "
                "and every direction (so 'k needed' is the first grid value reaching the target). Floor: random "
                "orthonormal directions; skyline: the whole clean activation (1). Models below a mean clean logit "
                f"difference of {THRESHOLD:g} are refused; earlier checkpoints below it get no curves.")
    return res


def _summary_table(summaries: list[dict]) -> pd.DataFrame:
    rows = []
    for s in summaries:
        for b in BASES:
            rows.append({"model": s["model"], "revision": s["revision"], "site": s["site"], "basis": b,
                         "n_directions": s[(b, "n")], **{f"k_{int(t * 100)}pct": s[(b, t)] for t in TARGETS},
                         "fraction_all": s[(b, "all")], **{f"fraction_k{k}": s[(b, k)] for k in K_ROWS},
                         "ld_clean": s["ld_clean"], "ld_corrupt": s["ld_corrupt"],
                         "kl_floor": s["kl_floor"] if b == "SAE features" else float("nan")})
    return pd.DataFrame(rows)


def _figures(res: AnalysisResult, curve: pd.DataFrame, figures_dir) -> None:
    for m in dict.fromkeys(curve["model"]):
        part = curve[curve["model"] == m]
        last = list(dict.fromkeys(part["revision"]))[-1]
        part = part[part["revision"] == last].assign(panel=lambda d: d["site"])
        path = plots.restoration_curves(part, figures_dir / f"ioi_patching_{m}.png", f"{m}@{last}: IOI restoration")
        res.figures.append((f"IOI restoration curves, {m}@{last} (features, PCA, neurons, random)", path))


def _findings(res: AnalysisResult, ld: pd.DataFrame, summaries: list[dict]) -> None:
    finals = ld.groupby("model").tail(1)
    res.findings.append("Mean IOI logit difference (IO - S, final position) of the final checkpoints: "
                        + "; ".join(f"{r.model}@{r.revision} {r.ld_clean:.2f} clean, {r.ld_corrupt:.2f} corrupted"
                                    for r in finals.itertuples())
                        + f" (threshold {THRESHOLD:g}).")
    for r in finals.itertuples():
        mine = [s for s in summaries if s["model"] == r.model and s["revision"] == r.revision]
        for s in mine:
            need = "; ".join(f"{b} {_k_text(s[(b, 0.5)])}/{_k_text(s[(b, 0.8)])} of {s[(b, 'n')]}" for b in BASES)
            res.findings.append(
                f"{r.model}@{r.revision} {s['site']}: directions needed to restore 50%/80% of the logit difference: "
                f"{need}. Top-{K_ROWS[1]} restore {s[('SAE features', K_ROWS[1])]:.2f} (SAE), "
                f"{s[('PCA directions', K_ROWS[1])]:.2f} (PCA), {s[('neurons (standard basis)', K_ROWS[1])]:.2f} "
                f"(neurons), floor {s[('random directions', K_ROWS[1])]:.2f} (random); all SAE features restore "
                f"{s[('SAE features', 'all')]:.2f} (skyline: the clean activation, 1); KL floor of the SAE "
                f"reconstruction {s['kl_floor']:.3f} nats.")
    final = {(s["model"], s["site"]): s for s in summaries
             if (s["model"], s["revision"]) in set(zip(finals["model"], finals["revision"]))}
    models = list(dict.fromkeys(finals["model"]))
    if len(models) > 1:
        sites = [site for site in dict.fromkeys(s for _, s in final) if all((m, site) in final for m in models)]
        for site in sites:
            res.findings.append(
                f"Across models at {site} (final checkpoints, same prompts and tokenizer): SAE features needed for "
                "50%/80%: " + "; ".join(f"{m} {_k_text(final[(m, site)][('SAE features', 0.5)])}/"
                                        f"{_k_text(final[(m, site)][('SAE features', 0.8)])} (random floor "
                                        f"{_k_text(final[(m, site)][('random directions', 0.5)])}/"
                                        f"{_k_text(final[(m, site)][('random directions', 0.8)])})" for m in models) + ".")
    per_model = ld.groupby("model")
    for m, part in per_model:
        if len(part) > 1:
            bits = []
            for r in part.itertuples():
                ks = [s[("SAE features", 0.5)] for s in summaries if s["model"] == m and s["revision"] == r.revision]
                k_txt = ", ".join(_k_text(k) for k in ks) if ks else "no curves (not learned)"
                bits.append(f"{r.revision}: LD {r.ld_clean:.2f}, SAE features for 50% {k_txt}")
            res.findings.append(f"{m} across checkpoints (sites in config order): " + "; ".join(bits) + ".")
