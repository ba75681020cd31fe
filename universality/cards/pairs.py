"""Pair cards: latent ``a`` of dictionary A beside latent ``b`` of dictionary B on the same tokens.

:class:`PairCollector` reads the codes of both dictionaries chunk by chunk (same rows: the same
evaluation tokens read by both models, or both dictionaries on one store) and keeps, per pair, the
sums for the Pearson correlation of the two activations, firing counts, and three bounded buffers:
the strongest rows where both fire (by A's activation), where only A fires and where only B fires,
each with the windows of both latents.

The decoder cosine is shown only when both dictionaries read the same basis (:func:`same_basis`: the
same model and site, at any revision of one training run); across models the bases are unrelated and
a cosine would mean nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.cards.buffers import TopBuffer
from universality.cards.build import buffer_token_ids, contexts_of
from universality.cards.card import PairCard
from universality.errors import ConfigError

__all__ = ["PairCollector", "pair_cards", "same_basis", "PAIR_TOP"]

#: examples kept per pair and kind (both / only A / only B)
PAIR_TOP = 5


def same_basis(meta_a: dict[str, Any], meta_b: dict[str, Any]) -> bool:
    """Both dictionaries read the same activation basis: same model (revision aside) and site."""
    keys = ("model", "site", "d_in")
    return all(meta_a.get(k) is not None and meta_a.get(k) == meta_b.get(k) for k in keys)


class PairCollector:
    """Streaming statistics of ``pairs`` ``(p, 2)`` (latent of A, latent of B); see the module docstring."""

    def __init__(self, pairs: Sequence[tuple[int, int]] | np.ndarray, k: int = PAIR_TOP, before: int = 10,
                 after: int = 3) -> None:
        p = torch.as_tensor(np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
        self.a, self.b = p[:, 0], p[:, 1]
        n = len(p)
        self.bufs = {kind: TopBuffer(k, n, 2, before, after) for kind in ("both", "only_a", "only_b")}
        self.s = {name: torch.zeros(n, dtype=torch.float64) for name in ("a", "b", "aa", "bb", "ab")}
        self.fires = {name: torch.zeros(n, dtype=torch.int64) for name in ("a", "b", "both")}
        self.n_tokens = 0

    def update(self, za: Float[Tensor, "B na"], zb: Float[Tensor, "B nb"], token_ids: Int[Tensor, " B"],
               context: Int[Tensor, " B"]) -> None:
        if za.shape[0] != zb.shape[0]:
            raise ConfigError(f"{za.shape[0]} rows of A's codes but {zb.shape[0]} of B's",
                              "encode both dictionaries on the same evaluation tokens")
        xa, xb = za[:, self.a].float().cpu(), zb[:, self.b].float().cpu()
        fa, fb = xa > 0, xb > 0
        da, db = xa.double(), xb.double()
        for name, v in (("a", da), ("b", db), ("aa", da * da), ("bb", db * db), ("ab", da * db)):
            self.s[name] += v.sum(0)
        self.fires["a"] += fa.sum(0)
        self.fires["b"] += fb.sum(0)
        self.fires["both"] += (fa & fb).sum(0)
        ninf = torch.full((), float("-inf"))
        tok, ctx = token_ids.long().cpu(), context.long().cpu()
        self.bufs["both"].update(torch.where(fa & fb, xa, ninf), [xa, xb], tok, ctx, self.n_tokens)
        self.bufs["only_a"].update(torch.where(fa & ~fb, xa, ninf), [xa, xb], tok, ctx, self.n_tokens)
        self.bufs["only_b"].update(torch.where(fb & ~fa, xb, ninf), [xb, xa], tok, ctx, self.n_tokens)
        self.n_tokens += za.shape[0]

    def correlations(self) -> np.ndarray:
        """Pearson correlation of each pair's activations over the tokens (NaN when one is constant)."""
        n = max(self.n_tokens, 1)
        s = self.s
        cov = s["ab"] / n - s["a"] * s["b"] / n**2
        va, vb = s["aa"] / n - (s["a"] / n) ** 2, s["bb"] / n - (s["b"] / n) ** 2
        ok = (va > 0) & (vb > 0)
        return torch.where(ok, cov / (va.clamp_min(1e-300) * vb.clamp_min(1e-300)).sqrt(),
                           torch.full((), float("nan"), dtype=torch.float64)).numpy()


def pair_cards(col: PairCollector, decode: Callable[[Sequence[int]], list[str]], scores: Sequence[float] | None = None,
               cosines: Sequence[float] | None = None, tags: dict[int, tuple[str, ...]] | None = None) -> tuple[PairCard, ...]:
    """:class:`PairCard` records, one per pair, in the collector's pair order."""
    n = len(col.a)
    idx = list(range(n))
    ids = buffer_token_ids(col.bufs.values(), idx) if n else []
    text = dict(zip(ids, decode(ids)))
    corr = col.correlations()
    out = []
    for i in idx:
        ctx = {kind: contexts_of(buf, i, buf.entries(i), text, with_other=True) for kind, buf in col.bufs.items()}
        out.append(PairCard(
            a=int(col.a[i]), b=int(col.b[i]), score=float(scores[i]) if scores is not None else float("nan"),
            correlation=float(corr[i]), cosine=None if cosines is None else float(cosines[i]),
            both=ctx["both"], only_a=ctx["only_a"], only_b=ctx["only_b"], fires_a=int(col.fires["a"][i]),
            fires_b=int(col.fires["b"][i]), fires_both=int(col.fires["both"][i]), tags=tuple((tags or {}).get(i, ()))))
    return tuple(out)
