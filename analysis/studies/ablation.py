"""Ablation agreement rows for the studies (:mod:`universality.eval.ablation`).

Used by the architecture comparison (corresponding sites of two models) and by feature evolution
(each checkpoint against the final one): the :data:`ABLATION_PAIRS` best Hungarian pairs on activation
correlation between SAE seed A of one cell and seed B of the other (so the two never share an
initialisation) are ablated in their own models on :data:`ABLATION_SPANS` evaluation spans. Floor:
random pairs of the same latents; skyline: the best pairs between two SAE seeds of the first cell.
The effects are cached like the other stages (``cache/ablation-<hash>``).
"""

from __future__ import annotations

from typing import Any

from analysis.studies.common import A_SEED, B_SEED, Codebook, weights_digest
from universality.eval.ablation import ablation_effects, agreement_rows
from universality.io import load_tensors, save_tensors
from universality.match import match
from universality.progress import model_label
from universality.study.pipeline import Cell

__all__ = ["ABLATION_PAIRS", "ABLATION_SPANS", "ablation_row"]

#: matched pairs (best scores first) and evaluation spans of one agreement row
ABLATION_PAIRS, ABLATION_SPANS = 12, 8


def ablation_row(ctx, analysis: str, a: tuple[str, str, str], b: tuple[str, str, str], **extra: Any) -> dict:
    """One tidy row: agreement of ``a = (model, revision, site)`` (SAE seed A) with ``b`` (seed B)."""
    (ma, ra_, sa), (mb, rb_, sb) = a, b
    tokens = ctx.eval_tokens(ma)
    ids, mask = tokens.input_ids[:ABLATION_SPANS], tokens.attention_mask[:ABLATION_SPANS]
    book = Codebook(ctx)

    def best_pairs(cell_a, site_a, seed_a, cell_b, site_b, seed_b):
        xa, xb = book.acts(cell_a.model, cell_a.revision, site_a), book.acts(cell_b.model, cell_b.revision, site_b)
        tok = book.token_ids(cell_a.model, cell_a.revision)
        r = match(ctx.saes(cell_a)[site_a][seed_a], ctx.saes(cell_b)[site_b][seed_b], method="hungarian",
                  view="activations", activations=(xa, xb), token_ids=(tok, tok))
        top = r.pairs[(-r.scores).argsort(kind="stable")[:ABLATION_PAIRS]]
        return [int(i) for i in top[:, 0]], [int(j) for j in top[:, 1]]

    def effects(cell, site, seed, latents):
        return ablation_effects(ctx.adapter_at(cell.model, cell.revision), ctx.saes(cell)[site][seed], site, latents,
                                ids, mask, progress=False)

    cA, cB = Cell(ma, ra_, "D"), Cell(mb, rb_, "D")
    la, lb = best_pairs(cA, sa, A_SEED, cB, sb, B_SEED)
    s0, s1 = best_pairs(cA, sa, A_SEED, cA, sa, B_SEED)
    key = {"stage": "ablation", "a": ctx._model_key(ma, ra_), "b": ctx._model_key(mb, rb_), "sites": [sa, sb],
           "spans": ctx.eval_spans.hash, "n_spans": ABLATION_SPANS, "pairs": [la, lb], "seed_pairs": [s0, s1],
           "weights": weights_digest(ctx.saes(cA)[sa][A_SEED], ctx.saes(cB)[sb][B_SEED], ctx.saes(cA)[sa][B_SEED])}

    def build(tmp) -> None:
        got = {"a": effects(cA, sa, A_SEED, la), "b": effects(cB, sb, B_SEED, lb),
               "sky_a": effects(cA, sa, A_SEED, s0), "sky_b": effects(cA, sa, B_SEED, s1)}
        save_tensors(tmp / "effects.safetensors", {k: v.contiguous() for k, v in got.items()})

    rec = ctx.cache.run("ablation", key, build, label=f"{model_label(ma, ra_)}:{sa} vs {model_label(mb, rb_)}:{sb}")
    e = load_tensors(rec.path / "effects.safetensors")
    got = agreement_rows(e["a"], e["b"], e["sky_a"], e["sky_b"], seed=ctx.cfg.seed)
    floor, sky, value = got["floor"], got["skyline"], got["value"]
    gap = sky - floor
    label_a, label_b = (f"{ma}:{sa}", f"{mb}:{sb}") if ma != mb else (f"{ra_}:{sa}", f"{rb_}:{sb}")
    return {"analysis": analysis, "comparison": f"{label_a} vs {label_b}", "metric": "ablation agreement",
            "value": value, "floor": floor, "skyline": sky,
            "normalised": (value - floor) / gap if abs(gap) > 1e-6 else float("nan"),
            "model_a": ma, "site_a": sa, "model_b": mb, "site_b": sb, "n_pairs": got["n_pairs"],
            "value_meaning": (f"mean over the {ABLATION_PAIRS} best matched pairs of the correlation of the change in "
                              "next-token log-probability when each latent is ablated in its own model"),
            "note": (f"floor: random pairs of the same latents; skyline: the {ABLATION_PAIRS} best matched pairs "
                     f"between two SAE seeds of {label_a.rsplit(':', 1)[0]}, both ablated there; {ABLATION_SPANS} "
                     "evaluation spans"), **extra}
