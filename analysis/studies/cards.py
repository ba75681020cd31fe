"""Feature cards behind a study's figures: the texts of matched, unmatched, born-late and planted features.

The analyses call these with what they already computed; each returns a :class:`CardSection` that the
runner puts on the study's ``cards.html`` (one self-contained page, :mod:`analysis.cards_page`) and
links from the analysis's findings. Every card reads the study's shared evaluation spans (one context
per span), decoded with the model's own tokenizer; residual sites get direct logit effects.

- :func:`pair_section`: two dictionaries read on the same evaluation tokens (same tokenizer), matched
  one to one (Hungarian assignment on activation correlation, the studies' matching view): best and
  worst pairs, unmatched latents of each side, plus the analysis's own groups (planted positives).
- :func:`lineage_section`: chains of a checkpoint series as strips of cards, with the groups
  "longest chains", "born late" and the planted passage features.
- :func:`dictionary_section`: cards of chosen latents of one dictionary, in named groups (feature manifolds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.unembedding import unembedding
from universality.cards.api import describe_dictionary, dictionary_card_set, match_card_set
from universality.cards.card import CardSet
from universality.cards.stats import CardOptions
from universality.cards.text import context_bounds, tensor_chunks, token_decoder
from universality.match import match
from universality.study.pipeline import Cell

__all__ = ["CardSection", "SHOWN", "eval_rows", "pair_section", "lineage_section", "dictionary_section", "planted_items",
           "findings_about"]

#: items per group on a study's card page (best matches, worst matches, unmatched, chains ...)
SHOWN = 24


@dataclass(frozen=True)
class CardSection:
    """One section of the study's card page; ``findings``: indices into the analysis's findings that
    this section backs (their report lines link to its groups)."""

    title: str
    cards: CardSet
    findings: tuple[int, ...] = ()


def eval_rows(ctx: Any, model: str, revision: str, site: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(acts, token_ids, context)`` of the shared evaluation spans (context = span index)."""
    acts = ctx.eval_acts(model, revision)
    return acts[site].float(), acts["token_ids"].long(), ctx.eval_span_flags(model)["span"].long()


def _text(ctx: Any, model: str) -> dict[str, Any]:
    return {"source": f"study {ctx.cfg.name}: the shared evaluation spans", "spans": len(ctx.eval_spans),
            "tokens_from": f"tokenizer of {model}"}


def _is_residual(ctx: Any, model: str, site: str) -> bool:
    return any(s.name == site and s.is_residual for s in ctx.sites_of(model))


def pair_section(ctx: Any, title: str, a: tuple[Cell, int, str], b: tuple[Cell, int, str], site: str,
                 extra_groups: dict[str, list[str]] | None = None, findings: tuple[int, ...] = (),
                 site_b: str | None = None) -> CardSection | None:
    """Pair cards of SAE seed ``a[1]`` of cell ``a[0]`` (labelled ``a[2]``) against ``b`` at ``site``
    (``site_b`` for b); None when the two read different tokens (another tokenizer: no shared rows)."""
    (cell_a, seed_a, label_a), (cell_b, seed_b, label_b) = a, b
    site_b = site_b or site
    sae_a, sae_b = ctx.saes(cell_a)[site][seed_a], ctx.saes(cell_b)[site_b][seed_b]
    xa, tok, spans = eval_rows(ctx, cell_a.model, cell_a.revision, site)
    xb, tok_b, _ = eval_rows(ctx, cell_b.model, cell_b.revision, site_b)
    if not torch.equal(tok, tok_b):
        return None
    res = match(sae_a, sae_b, method="hungarian", view="activations", activations=(xa, xb), token_ids=(tok, tok_b))

    def chunks():
        for lo, hi in context_bounds(spans):
            yield xa[lo:hi], xb[lo:hi], tok[lo:hi], spans[lo:hi]

    ua = unembedding(ctx.adapter_at(cell_a.model, cell_a.revision))
    ub = unembedding(ctx.adapter_at(cell_b.model, cell_b.revision))
    cs = match_card_set(sae_a, sae_b, res.pairs, res.scores, chunks(), token_decoder(ctx.adapter(cell_a.model).tokenizer),
                        {**_text(ctx, cell_a.model), "site": site, "match": "hungarian on activation correlation"},
                        CardOptions(seed=ctx.cfg.seed), n_shown=SHOWN, threshold=ctx.cfg.match.corr_threshold,
                        labels=(label_a, label_b), unembed=(ua, ub),
                        residual=(_is_residual(ctx, cell_a.model, site), _is_residual(ctx, cell_b.model, site_b)),
                        extra_groups=extra_groups)
    return CardSection(title, cs, findings)


def lineage_section(ctx: Any, title: str, model: str, site: str, revs: list[str], saes: list[Any],
                    chains: pd.DataFrame, born: pd.DataFrame | None = None, findings: tuple[int, ...] = (),
                    after_step: int | None = None) -> CardSection | None:
    """Strips of cards along lineage ``chains`` (one SAE per revision in ``saes``): the longest chains,
    chains born late (starting in the later half of the series) and, with ``born`` (the final SAE's
    planted-passage features and where their chains start), the chains of those features."""
    if chains is None or not len(chains):
        return None
    order = chains.sort_values(["persistence", "chain"], ascending=[False, True], kind="stable")
    pos = {r: i for i, r in enumerate(revs)}
    groups: dict[str, list[int]] = {"longest chains": [int(i) for i in order.index[:SHOWN]]}
    late = order[order["start"].map(pos) >= len(revs) // 2]
    late = late[late["end"] == revs[-1]]
    if len(late):
        groups["born late (reach the final checkpoint)"] = [int(i) for i in late.index[:SHOWN]]
    if born is not None and len(born):
        ends = {int(r.features[-1]): int(i) for i, r in chains.iterrows() if r.end == revs[-1]}
        hits = [ends[int(f)] for f in born["feature"] if int(f) in ends]
        if hits:
            groups["planted passage features (planted positive)"] = hits[:SHOWN]
    shown = sorted({i for items in groups.values() for i in items})
    index = {c: j for j, c in enumerate(shown)}
    strips = []
    need: dict[str, set[int]] = {r: set() for r in revs}
    for c in shown:
        row = chains.loc[c]
        start = pos[row.start]
        steps = [(revs[start + k], int(f)) for k, f in enumerate(row.features)]
        strips.append(tuple(steps))
        for r, f in steps:
            need[r].add(f)
    decode = token_decoder(ctx.adapter(model).tokenizer)
    lineage_cards = {}
    for r, sae in zip(revs, saes):
        if not need[r]:
            continue
        x, tok, spans = eval_rows(ctx, model, r, site)
        cs_r, _ = dictionary_card_set(sae, tensor_chunks(x, tok, spans), decode, _text(ctx, model),
                                      CardOptions(seed=ctx.cfg.seed, n_top=4, reservoir=12, n_band=1),
                                      latents=sorted(need[r]), label=f"{model}@{r}")
        lineage_cards[r] = cs_r.cards_a
    final = saes[-1]
    cs = CardSet(a=describe_dictionary(final, label=f"{model}@{revs[-1]} ({site})"),
                 text={**_text(ctx, model), "site": site, "n_tokens": int(eval_rows(ctx, model, revs[-1], site)[1].numel())},
                 cards_a=(), lineage=tuple(strips), lineage_cards=lineage_cards,
                 groups={name: tuple(f"lineage:{index[i]}" for i in items) for name, items in groups.items()},
                 meta={"revisions": list(revs), "after_step": after_step,
                       "chains_total": int(len(chains)), "chains_shown": len(shown)})
    return CardSection(title, cs, findings)


def dictionary_section(ctx: Any, title: str, cell: Cell, seed: int, site: str, groups: dict[str, list[int]],
                       findings: tuple[int, ...] = ()) -> CardSection | None:
    """Feature cards of SAE seed ``seed`` of ``cell`` at ``site``, one group per entry of ``groups``
    (name -> latents), e.g. the latents of one feature manifold; None when no group has a latent."""
    latents = sorted({int(i) for g in groups.values() for i in g})
    if not latents:
        return None
    x, tok, spans = eval_rows(ctx, cell.model, cell.revision, site)
    residual = _is_residual(ctx, cell.model, site)
    cs, _ = dictionary_card_set(ctx.saes(cell)[site][seed], tensor_chunks(x, tok, spans),
                                token_decoder(ctx.adapter(cell.model).tokenizer), {**_text(ctx, cell.model), "site": site},
                                CardOptions(seed=ctx.cfg.seed), latents=latents,
                                unembed=unembedding(ctx.adapter_at(cell.model, cell.revision)) if residual else None,
                                site_is_residual=residual, label=f"{cell.model}@{cell.revision} ({site})")
    shown = {c.latent for c in cs.cards_a}
    named = {name: tuple(f"a:{i}" for i in g if int(i) in shown) for name, g in groups.items()}
    return CardSection(title, dataclasses.replace(cs, groups={k: v for k, v in named.items() if v}), findings)


def findings_about(findings: list[str], prefix: str) -> tuple[int, ...]:
    """Indices of the findings that start with ``prefix`` (e.g. ``"pythia:blocks.0.hook_resid_post:"``)."""
    return tuple(i for i, f in enumerate(findings) if f.startswith(prefix))


def planted_items(latents: np.ndarray | list[int], side: str = "a") -> list[str]:
    """Card items for planted-positive latents of one side."""
    return [f"{side}:{int(i)}" for i in latents]
