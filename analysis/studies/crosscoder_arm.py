"""The crosscoder arm of the architecture comparison, beside the matching arm.

For every pair of models of different families trained on D, a BatchTopK crosscoder is trained over the
deepest site of each model. Models on one tokenizer train on their aligned harvest rows
(:func:`universality.study.stages.train_crosscoders`; same packed token stream, token ids checked row by
row); models on different tokenizers (a hub GPT-2 beside a zoo model) train live on D, one row per unit
of text both tokenizers cover with whole tokens, read at its last token
(:func:`universality.study.stages.train_text_crosscoders`), and are read on the evaluation text through
the same character alignment (:func:`analysis.studies.common.aligned_eval_rows`). Its live latents are
classified by relative decoder norm (:func:`universality.crosscoder.analysis.classify_latents`): shared,
exclusive to A, exclusive to B.

Nulls and anchors, each a separate dictionary with its own seed:

- seed null: the same crosscoder with a second seed; ``seed_null_spread`` is the absolute difference of
  the two seeds' fractions (the noise level of a fraction);
- copy anchor: model A's site crossed with a copy of itself (the "everything shared" ceiling); its shared
  fraction is the ``skyline`` of the shared row, its exclusive fraction the ``floor`` of the exclusive rows.

The two-arm table puts the crosscoder's shared fraction next to the matching arm's: the fraction of
live SAE features of both models (deepest sites, seeds ``A_SEED`` and ``B_SEED``) whose best Pearson
partner on the other side reaches ``match.corr_threshold``, with its own seed spread (the same with the
seeds swapped). The arms agree when their shared fractions differ by at most the larger of the two spreads.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch

from analysis import plots
from analysis.studies.common import A_SEED, B_SEED, AnalysisResult, Codebook, aligned_eval_rows, norm_row, per_feature_mppc
from universality.crosscoder.analysis import classify_latents, live_latents, relative_decoder_norms
from universality.errors import ConfigError
from universality.match import encode_codes
from universality.study.pipeline import Cell
from universality.study.stages import train_crosscoders

NAME = "crosscoder_arm"
SEEDS = 2  # crosscoder seeds of the seed null


def pairs_of(ctx) -> list[tuple[str, str]]:
    """Pairs of models on D of different families (as in the matching arm)."""
    on_d = [m.name for m in ctx.cfg.models if m.data == "D"]
    fam = {m: ctx.adapter(m).family for m in on_d}
    return [(a, b) for a, b in itertools.combinations(on_d, 2) if fam[a] != fam[b]]


def fractions(cc, x: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """Fractions of live latents (on ``x``) that are shared, exclusive to source 0 and to source 1, and the
    live latents' relative decoder norm of source 1."""
    live = live_latents(cc, x)
    rel = relative_decoder_norms(cc)
    labels, owner = classify_latents(rel)
    n = int(live.sum())
    if n == 0:
        return {"shared": float("nan"), "exclusive_a": float("nan"), "exclusive_b": float("nan"), "n_live": 0}, rel[:0, 1]
    lab = np.array(labels)[live.numpy()]
    own = owner[live].numpy()
    return {"shared": float((lab == "shared").mean()), "exclusive_a": float(((lab == "exclusive") & (own == 0)).mean()),
            "exclusive_b": float(((lab == "exclusive") & (own == 1)).mean()), "n_live": n}, rel[live, 1]


def matching_shared(ctx, book: Codebook, a: tuple[str, str, str], b: tuple[str, str, str], seeds: tuple[int, int],
                    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
    """Fraction of live features of both SAEs (``a``'s seed ``seeds[0]``, ``b``'s seed ``seeds[1]``) whose best
    Pearson partner on the other side reaches ``match.corr_threshold``, on the paired eval rows ``rows``
    (:func:`~analysis.studies.common.aligned_eval_rows`)."""
    (ma, ra, sa), (mb, rb, sb) = a, b
    ia, ib, tok = rows
    ca = encode_codes(ctx.saes(Cell(ma, ra, "D"))[sa][seeds[0]], book.acts(ma, ra, sa)[ia], token_ids=tok)
    cb = encode_codes(ctx.saes(Cell(mb, rb, "D"))[sb][seeds[1]], book.acts(mb, rb, sb)[ib], token_ids=tok)
    fa, fb = per_feature_mppc(ca, cb)
    both = np.concatenate([fa, fb])
    return float((both >= ctx.cfg.match.corr_threshold).mean()) if both.size else float("nan")


def run(ctx, figures_dir) -> AnalysisResult:
    pairs = pairs_of(ctx)
    if not pairs:
        raise ConfigError("crosscoder_arm needs two models of different families trained on D",
                          "add e.g. a zoo mamba model next to a gpt_neox one")
    if len(ctx.cfg.sae.seeds) < SEEDS:
        raise ConfigError(f"crosscoder_arm needs {SEEDS} SAE seeds", "set sae.seeds to at least two seeds")
    book = Codebook(ctx)
    res = AnalysisResult(NAME, "Crosscoder arm: " + ", ".join(f"{a} vs {b}" for a, b in pairs))
    rows, hist, aligned_by_text = [], [], []
    seeds = list(ctx.cfg.sae.seeds[:SEEDS])
    for ma, mb in pairs:
        ra, rb = ctx.revisions(ma)[-1], ctx.revisions(mb)[-1]
        sa, sb = ctx.sites_of(ma)[-1].name, ctx.sites_of(mb)[-1].name
        paired = aligned_eval_rows(ctx, book, (ma, ra), (mb, rb))
        ia, ib, _ = paired
        st_a = ctx.store(Cell(ma, ra, "D"))
        ta, tb = book.token_ids(ma, ra), book.token_ids(mb, rb)
        if ta.shape == tb.shape and torch.equal(ta, tb):
            ccs = train_crosscoders(ctx.cfg, ctx.cache, [st_a, ctx.store(Cell(mb, rb, "D"))], [sa, sb], [ma, mb], seeds,
                                    label=f"crosscoder {ma} x {mb}")
        else:
            aligned_by_text.append(f"{ma} vs {mb}")
            ccs = ctx.text_crosscoders([Cell(ma, ra, "D"), Cell(mb, rb, "D")], [sa, sb], seeds, label=f"crosscoder {ma} x {mb} (text units)")
        anchor = train_crosscoders(ctx.cfg, ctx.cache, [st_a, st_a], [sa, sa], [ma, ma], seeds[:1], label=f"crosscoder {ma} x copy")[0]
        xa, xb = book.acts(ma, ra, sa), book.acts(mb, rb, sb)
        fr = [fractions(cc, torch.cat([xa[ia], xb[ib]], dim=1)) for cc in ccs]
        anc, anc_rel = fractions(anchor, torch.cat([xa, xa], dim=1))
        comp = f"{ma}:{sa} x {mb}:{sb}"
        for (f, rel), seed in zip(fr, seeds):
            hist += [{"crosscoder": f"{ma} x {mb} (seed {seed})", "relative_norm": float(v)} for v in rel]
        hist += [{"crosscoder": f"{ma} x copy (anchor)", "relative_norm": float(v)} for v in anc_rel]
        f0, f1 = fr[0][0], fr[1][0]
        spread = {k: abs(f0[k] - f1[k]) for k in ("shared", "exclusive_a", "exclusive_b")}
        anc_excl = anc["exclusive_a"] + anc["exclusive_b"]
        common = dict(model_a=ma, site_a=sa, model_b=mb, site_b=sb, n_live=f0["n_live"], n_live_seed2=f1["n_live"],
                      anchor_shared=anc["shared"], anchor_n_live=anc["n_live"])
        rows.append(norm_row(NAME, comp, "crosscoder shared fraction", f0["shared"], float("nan"), anc["shared"],
                             note=f"skyline: shared fraction of {ma} crossed with a copy of itself; no floor",
                             value_seed2=f1["shared"], seed_null_spread=spread["shared"], **common))
        for side, m in (("a", ma), ("b", mb)):
            rows.append(norm_row(NAME, comp, f"crosscoder exclusive fraction ({m})", f0[f"exclusive_{side}"], anc_excl,
                                 None, note=f"floor: exclusive fraction of {ma} crossed with a copy of itself",
                                 value_seed2=f1[f"exclusive_{side}"], seed_null_spread=spread[f"exclusive_{side}"], **common))
        m_ab = matching_shared(ctx, book, (ma, ra, sa), (mb, rb, sb), (A_SEED, B_SEED), paired)
        m_ba = matching_shared(ctx, book, (ma, ra, sa), (mb, rb, sb), (B_SEED, A_SEED), paired)
        m_spread = abs(m_ab - m_ba)
        tol = max(spread["shared"], m_spread)
        agree = bool(abs(f0["shared"] - m_ab) <= tol)
        rows.append(norm_row(NAME, comp, "matching shared fraction", m_ab, float("nan"), None,
                             note=f"live SAE features of both sides with a partner at Pearson >= "
                                  f"{ctx.cfg.match.corr_threshold}", value_seed2=m_ba, seed_null_spread=m_spread,
                             model_a=ma, site_a=sa, model_b=mb, site_b=sb))
        two = pd.DataFrame([
            {"arm": "crosscoder", "shared": f0["shared"], "exclusive_a": f0["exclusive_a"], "exclusive_b": f0["exclusive_b"],
             "seed_null_spread": spread["shared"], "anchor_shared": anc["shared"]},
            {"arm": "matching", "shared": m_ab, "exclusive_a": float("nan"), "exclusive_b": float("nan"),
             "seed_null_spread": m_spread, "anchor_shared": float("nan")}])
        two["agree"] = agree
        res.tables[f"two_arm_{ma}_{mb}"] = two
        res.findings.append(
            f"{ma}:{sa} vs {mb}:{sb}: the crosscoder calls {f0['shared']:.3f} of its live latents shared "
            f"(exclusive to {ma} {f0['exclusive_a']:.3f}, to {mb} {f0['exclusive_b']:.3f}; seed null spread "
            f"{spread['shared']:.3f}; {ma} crossed with a copy of itself: {anc['shared']:.3f} shared); matching finds "
            f"{m_ab:.3f} of live SAE features with a partner (seed spread {m_spread:.3f}): the two arms "
            + ("agree" if agree else "disagree") + f" (difference {abs(f0['shared'] - m_ab):.3f}, tolerance {tol:.3f}).")
    if aligned_by_text:
        res.findings.append("Two tokenizers (" + "; ".join(aligned_by_text) + "): the crosscoder read one row per unit of "
                            "text both tokenizers cover with whole tokens (last token of each unit), on D and on the "
                            "evaluation text; the matching arm reads the same units.")
    res.tables["crosscoder_arm"] = pd.DataFrame(rows)
    res.tidy += rows
    if hist:
        res.figures.append(("Relative decoder norms of live crosscoder latents (both seeds and the copy anchor)",
                            plots.relative_norm_histogram(pd.DataFrame(hist), figures_dir / "crosscoder_arm_relative_norms.png",
                                                          "Crosscoder relative decoder norms", hue="crosscoder")))
    res.text = ("A crosscoder over the deepest site of each model, trained on their aligned harvest rows (the same "
                "tokens; for two tokenizers, units of text both cover with whole tokens), classifies its live latents (firing on the evaluation text) by relative decoder norm: shared "
                "(each source holds 0.3-0.7 of the norm), exclusive (one source holds >= 0.9). The seed null is a second "
                "crosscoder seed (seed_null_spread: the absolute difference of the fractions); the copy anchor crosses "
                "model A's site with a copy of itself (its shared fraction: the skyline of the shared row). The matching "
                "arm's shared fraction counts live SAE features of both models whose best partner reaches Pearson "
                f"{ctx.cfg.match.corr_threshold}; its spread swaps the SAE seeds. The arms agree when their shared "
                "fractions differ by at most the larger spread.")
    return res
