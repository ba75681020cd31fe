"""Feature cards from a dictionary and an evaluation text: one streaming pass, then records.

``collect(dictionary, chunks)`` encodes each chunk with ``dictionary.encode`` and feeds a
:class:`~universality.cards.stats.CardCollector`; :func:`feature_cards` turns its statistics into
:class:`~universality.cards.card.FeatureCard` records, decoding only the tokens the cards show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from universality.cards.buffers import TopBuffer
from universality.cards.card import Context, FeatureCard, QuantileBand
from universality.cards.stats import CardCollector, CardOptions, CardStats
from universality.cards.text import Chunk
from universality.progress import progress_bar

__all__ = ["collect", "feature_cards", "contexts_of", "buffer_token_ids", "encode_rows", "ENCODE_ROWS"]

#: rows encoded at once (bounds the dense codes held in memory)
ENCODE_ROWS = 4096


def encode_rows(dictionary: Any, x: torch.Tensor) -> torch.Tensor:
    """``dictionary.encode(x)`` in blocks of :data:`ENCODE_ROWS` rows on the dictionary's device; float32 on the CPU."""
    param = next(iter(dictionary.parameters()), None) if hasattr(dictionary, "parameters") else None
    dev, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    with torch.no_grad():
        parts = [dictionary.encode(x[i:i + ENCODE_ROWS].to(dev, dtype)).float().cpu() for i in range(0, len(x), ENCODE_ROWS)]
    return torch.cat(parts) if parts else torch.zeros(0, int(dictionary.d_sae))


def collect(dictionary: Any, chunks: Iterable[Chunk], options: CardOptions = CardOptions(),
            total_rows: int | None = None, desc: str = "cards") -> CardStats:
    """Card statistics of every latent of ``dictionary`` over ``chunks`` (one pass; progress bar)."""
    col = CardCollector(int(dictionary.d_sae), options)
    with progress_bar(desc=desc, total=total_rows, unit="tok", leave=False) as bar:
        for x, tok, ctx in chunks:
            col.update(encode_rows(dictionary, x), tok, ctx)
            bar.update(len(tok))
    return col.finish()


def contexts_of(buf: TopBuffer, latent: int, slots: Sequence[int], text: dict[int, str],
                with_other: bool = False) -> tuple[Context, ...]:
    """:class:`Context` records of ``latent``'s buffer ``slots`` (``text``: token id -> string)."""
    out = []
    for s in slots:
        tok = buf.tokens[s, latent]
        valid = tok >= 0
        idx = torch.nonzero(valid).flatten()
        focus = buf.before - int(idx[0]) if len(idx) else 0
        vals = buf.values[0, s, latent][valid]
        other = tuple(round(float(v), 4) for v in buf.values[1, s, latent][valid]) if with_other else None
        out.append(Context(tokens=tuple(text[int(t)] for t in tok[valid]), values=tuple(round(float(v), 4) for v in vals),
                           focus=focus, row=int(buf.rows[s, latent]), value=round(float(buf.focus_values[0, s, latent]), 4),
                           other=other))
    return tuple(out)


def buffer_token_ids(buffers: Iterable[TopBuffer], latents: Sequence[int]) -> list[int]:
    ids: set[int] = set()
    lat = torch.as_tensor(list(latents), dtype=torch.long)
    for b in buffers:
        t = b.tokens[:, lat].flatten()
        ids.update(int(i) for i in torch.unique(t[t >= 0]))
    return sorted(ids)


def _bands(stats: CardStats, latent: int, text: dict[int, str]) -> tuple[QuantileBand, ...]:
    o = stats.options
    slots = stats.sample.entries(latent)  # smallest keys first: a uniform sample of the firings
    if not slots:
        return ()
    vals = stats.sample.focus_values[0, slots, latent]
    order = [slots[i] for i in torch.argsort(vals, stable=True).tolist()]
    n = len(order)
    bands = []
    for q in range(o.n_bands):
        part = order[q * n // o.n_bands:(q + 1) * n // o.n_bands]
        if not part:
            continue
        pv = stats.sample.focus_values[0, part, latent]
        # examples spread over the band: its lowest, its highest and evenly between
        pick = sorted({part[int(round(j * (len(part) - 1) / max(o.n_band - 1, 1)))] for j in range(o.n_band)})
        bands.append(QuantileBand(lo=round(float(pv.min()), 4), hi=round(float(pv.max()), 4), share=len(part) / n,
                                  examples=contexts_of(stats.sample, latent, pick, text)))
    return tuple(bands)


def feature_cards(stats: CardStats, decode: Callable[[Sequence[int]], list[str]], latents: Sequence[int] | None = None,
                  logits: dict[int, tuple[list[int], list[float], list[int], list[float]]] | None = None,
                  tags: dict[int, tuple[str, ...]] | None = None) -> tuple[FeatureCard, ...]:
    """Cards of ``latents`` (default: every latent that fires) from ``stats``; ``decode`` turns token
    ids into text, ``logits`` are :func:`~universality.cards.logits.logit_effects` (optional)."""
    fires = stats.fires
    lat = [int(i) for i in (np.nonzero(fires > 0)[0] if latents is None else latents)]
    ids = buffer_token_ids([stats.top, stats.sample], lat) if lat else []
    extra = {t for f in lat for t, _ in stats.top_tokens[f]}
    if logits:
        extra |= {t for f in lat if f in logits for t in logits[f][0] + logits[f][2]}
    all_ids = sorted(set(ids) | extra)
    text = dict(zip(all_ids, decode(all_ids)))
    edges = stats.options.hist_edges
    cards = []
    for f in lat:
        counts = stats.hist_counts[f]
        nz = np.nonzero(counts)[0]
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        lg = (logits or {}).get(f)
        n = int(fires[f])
        cards.append(FeatureCard(
            latent=f, fires=n, n_tokens=stats.n_tokens, density=n / max(stats.n_tokens, 1),
            max_value=float(stats.max_value[f]), mean_value=float(stats.sums[f] / n) if n else float("nan"),
            top=contexts_of(stats.top, f, stats.top.entries(f), text), bands=_bands(stats, f, text),
            hist_edges=tuple(float(e) for e in edges[lo:hi + 1]) if hi else (),
            hist_counts=tuple(int(c) for c in counts[lo:hi]),
            token_identity=float(stats.token_identity[f]),
            top_tokens=tuple((text[t], round(s, 4)) for t, s in stats.top_tokens[f]),
            promoted=tuple((text[t], round(v, 4)) for t, v in zip(lg[0], lg[1])) if lg else (),
            suppressed=tuple((text[t], round(v, 4)) for t, v in zip(lg[2], lg[3])) if lg else (),
            tags=tuple((tags or {}).get(f, ()))))
    return tuple(cards)
