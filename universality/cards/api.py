"""Card sets in one call: the cards of a dictionary, and the pair cards of a match between two.

- :func:`dictionary_card_set`: cards of the latents of one dictionary over an evaluation text.
- :func:`match_card_set`: both dictionaries' cards on the same tokens, pair cards for the best and
  worst matched pairs, the unmatched live latents of each side, and the groups a report links to
  (``best matches``, ``worst matches``, ``unmatched in A``, ``unmatched in B``).

The text comes as chunks (:mod:`universality.cards.text`); for two dictionaries the chunks carry the
activations of both, row-aligned: ``(acts_a, acts_b, token_ids, context)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from universality.cards.build import collect, encode_rows, feature_cards
from universality.cards.card import CardSet
from universality.cards.logits import Unembedding, logit_effects
from universality.cards.pairs import PairCollector, pair_cards, same_basis
from universality.cards.stats import CardCollector, CardOptions, CardStats
from universality.cards.text import Chunk
from universality.progress import progress_bar

__all__ = ["describe_dictionary", "dictionary_card_set", "match_card_set", "PAIRS_SHOWN", "MATCH_THRESHOLD"]

#: best and worst matched pairs given pair cards (each), and unmatched latents given cards (per side)
PAIRS_SHOWN = 40
#: a latent whose best partner scores below this is "unmatched" (the studies' activation-correlation threshold)
MATCH_THRESHOLD = 0.5


def describe_dictionary(dictionary: Any, path: str | None = None, label: str | None = None) -> dict[str, Any]:
    """What a card set records about a dictionary: label, path, model, revision, site, architecture, sizes."""
    meta = dict(getattr(dictionary, "meta", {}) or {})
    cfg = getattr(dictionary, "cfg", None)
    out = {k: meta.get(k) for k in ("model", "revision", "site", "dataset", "subset_hash", "family") if meta.get(k) is not None}
    out.update(path=path, label=label or path or "dictionary", architecture=getattr(cfg, "architecture", None),
               d_in=int(dictionary.d_in) if hasattr(dictionary, "d_in") else None, d_sae=int(dictionary.d_sae))
    if getattr(cfg, "k", None) is not None:
        out["k"] = int(cfg.k)
    return out


def _logits(dictionary: Any, unembed: Unembedding | None, site_is_residual: bool, latents: Sequence[int],
            k: int) -> dict[int, tuple[list[int], list[float], list[int], list[float]]] | None:
    if unembed is None or not site_is_residual or k == 0 or not latents:
        return None
    return logit_effects(dictionary.W_dec.detach(), unembed, k, list(latents))


def dictionary_card_set(dictionary: Any, chunks: Iterable[Chunk], decode: Callable[[Sequence[int]], list[str]],
                        text: dict[str, Any], options: CardOptions = CardOptions(), latents: Sequence[int] | None = None,
                        unembed: Unembedding | None = None, site_is_residual: bool = False, label: str | None = None,
                        path: str | None = None, total_rows: int | None = None) -> tuple[CardSet, CardStats]:
    """Cards of ``latents`` (default: every live one) of ``dictionary`` over ``chunks`` in one pass."""
    stats = collect(dictionary, chunks, options, total_rows, desc=f"cards {label or ''}".strip())
    lat = [int(i) for i in (np.nonzero(stats.fires > 0)[0] if latents is None else latents)]
    cards = feature_cards(stats, decode, lat, _logits(dictionary, unembed, site_is_residual, lat, options.n_logit))
    cs = CardSet(a=describe_dictionary(dictionary, path, label), text={**text, "n_tokens": stats.n_tokens}, cards_a=cards,
                 groups={"all live latents": tuple(f"a:{c.latent}" for c in cards)} if cards else {},
                 meta={"options": options.__dict__.copy(), "identity_tokens": stats.identity_tokens})
    return cs, stats


def _cosines(da: Any, db: Any, pairs: np.ndarray) -> np.ndarray:
    wa = torch.nn.functional.normalize(da.W_dec.detach().float()[torch.as_tensor(pairs[:, 0])], dim=1)
    wb = torch.nn.functional.normalize(db.W_dec.detach().float()[torch.as_tensor(pairs[:, 1])], dim=1)
    return (wa * wb).sum(1).numpy()


def match_card_set(dict_a: Any, dict_b: Any, pairs: np.ndarray, scores: np.ndarray,
                   chunks: Iterable[tuple[Tensor, Tensor, Tensor, Tensor]], decode: Callable[[Sequence[int]], list[str]],
                   text: dict[str, Any], options: CardOptions = CardOptions(), n_shown: int = PAIRS_SHOWN,
                   threshold: float = MATCH_THRESHOLD, labels: tuple[str, str] = ("A", "B"),
                   paths: tuple[str | None, str | None] = (None, None), unembed: tuple[Unembedding | None, Unembedding | None] = (None, None),
                   residual: tuple[bool, bool] = (False, False), total_rows: int | None = None,
                   extra_groups: dict[str, Sequence[str]] | None = None) -> CardSet:
    """Pair cards for a match (``pairs`` ``(k, 2)`` with ``scores``) and cards of both sides, in one pass.

    Shown: the ``n_shown`` best and ``n_shown`` worst pairs by score, and up to ``n_shown`` live latents
    of each side whose best score is below ``threshold`` or that have no partner (unmatched).
    ``extra_groups``: more named groups of ``"a:<latent>"`` / ``"b:<latent>"`` items (a study's
    planted positives, say); their latents get cards too (those that fire on the text).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    best = order[:n_shown]
    worst = order[::-1][:n_shown]
    shown = list(dict.fromkeys([*best.tolist(), *worst.tolist()]))
    col_a, col_b = CardCollector(int(dict_a.d_sae), options), CardCollector(int(dict_b.d_sae), options)
    pc = PairCollector(pairs[shown], before=options.before, after=options.after)
    with progress_bar(desc="pair cards", total=total_rows, unit="tok", leave=False) as bar:
        for xa, xb, tok, ctx in chunks:
            za, zb = encode_rows(dict_a, xa), encode_rows(dict_b, xb)
            col_a.update(za, tok, ctx)
            col_b.update(zb, tok, ctx)
            pc.update(za, zb, tok, ctx)
            bar.update(len(tok))
    sa, sb = col_a.finish(), col_b.finish()
    good = scores >= threshold
    matched_a, matched_b = set(pairs[good, 0].tolist()), set(pairs[good, 1].tolist())
    unmatched_a = [int(i) for i in np.nonzero(sa.fires > 0)[0] if int(i) not in matched_a]
    unmatched_b = [int(i) for i in np.nonzero(sb.fires > 0)[0] if int(i) not in matched_b]
    # unmatched ones first by how often they fire: the ones a reader can judge
    unmatched_a = sorted(unmatched_a, key=lambda i: -int(sa.fires[i]))
    unmatched_b = sorted(unmatched_b, key=lambda i: -int(sb.fires[i]))
    meta_a = describe_dictionary(dict_a, paths[0], labels[0])
    meta_b = describe_dictionary(dict_b, paths[1], labels[1])
    cos = _cosines(dict_a, dict_b, pairs[shown]) if same_basis(meta_a, meta_b) else None
    pcards = pair_cards(pc, decode, scores=scores[shown], cosines=cos)
    lat_a = sorted({int(pairs[i, 0]) for i in shown} | set(unmatched_a[:n_shown]))
    lat_b = sorted({int(pairs[i, 1]) for i in shown} | set(unmatched_b[:n_shown]))
    extra = {name: [it for it in items if it.split(":")[0] in ("a", "b")] for name, items in (extra_groups or {}).items()}
    lat_a = sorted(set(lat_a) | {int(it[2:]) for items in extra.values() for it in items if it.startswith("a:")})
    lat_b = sorted(set(lat_b) | {int(it[2:]) for items in extra.values() for it in items if it.startswith("b:")})
    lat_a = [i for i in lat_a if sa.fires[i] > 0]
    lat_b = [i for i in lat_b if sb.fires[i] > 0]
    live = {"a": set(lat_a), "b": set(lat_b)}
    cards_a = feature_cards(sa, decode, lat_a, _logits(dict_a, unembed[0], residual[0], lat_a, options.n_logit))
    cards_b = feature_cards(sb, decode, lat_b, _logits(dict_b, unembed[1], residual[1], lat_b, options.n_logit))
    pos = {int(s): j for j, s in enumerate(shown)}
    groups = {
        "best matches": tuple(f"pair:{pos[int(i)]}" for i in best),
        "worst matches": tuple(f"pair:{pos[int(i)]}" for i in worst),
        f"unmatched in {labels[0]}": tuple(f"a:{i}" for i in unmatched_a[:n_shown]),
        f"unmatched in {labels[1]}": tuple(f"b:{i}" for i in unmatched_b[:n_shown]),
    }
    for name, items in extra.items():  # a latent that never fires on this text has no card to show
        groups[name] = tuple(it for it in items if int(it[2:]) in live[it[0]])
    return CardSet(a=meta_a, b=meta_b, text={**text, "n_tokens": sa.n_tokens}, cards_a=cards_a, cards_b=cards_b,
                   pairs=pcards, unmatched_a=tuple(unmatched_a), unmatched_b=tuple(unmatched_b),
                   groups={k: v for k, v in groups.items() if v},
                   meta={"options": options.__dict__.copy(), "identity_tokens": [sa.identity_tokens, sb.identity_tokens],
                         "threshold": threshold, "n_pairs": len(pairs),
                         "shown_pairs": len(shown), "basis": "shared" if cos is not None else "different"})
