"""Bounded per-latent buffers filled in one streaming pass: the strongest examples, a uniform random
sample of firings, sums keyed by (token id, latent).

Every buffer holds at most ``k`` entries per latent (memory ``k x n_latents x window``, never
``tokens x latents``). An entry remembers the row of its token in the evaluation text, its key, and
the window of token ids and activations around it, so no second pass over the text is needed.
Chunks must hold whole contexts (windows never reach across a chunk boundary; see
:func:`universality.cards.text.context_chunks`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["windows", "TopBuffer", "SparseSum"]


def windows(
    sources: list[Float[Tensor, "B n"]],
    token_ids: Int[Tensor, " B"],
    context: Int[Tensor, " B"],
    rows: Int[Tensor, "m n"],
    before: int,
    after: int,
) -> tuple[Int[Tensor, "m n W"], Float[Tensor, "S m n W"]]:
    """Token ids and the activations of every source around local ``rows`` (one row per (entry, latent)).

    Positions outside the chunk or in another context get token id -1 and activation 0.
    """
    B = token_ids.shape[0]
    offs = torch.arange(-before, after + 1)
    rr = rows.unsqueeze(-1) + offs
    inside = (rr >= 0) & (rr < B)
    rrc = rr.clamp(0, max(B - 1, 0))
    valid = inside & (context[rrc] == context[rows].unsqueeze(-1))
    tok = torch.where(valid, token_ids[rrc], torch.full_like(rrc, -1)).to(torch.int32)
    col = torch.arange(rows.shape[1]).view(1, -1, 1).expand_as(rrc)
    vals = torch.stack([torch.where(valid, s[rrc, col].float(), torch.zeros((), dtype=torch.float32)) for s in sources])
    return tok, vals


class TopBuffer:
    """The ``k`` entries with the largest (or smallest) key per latent, with their windows.

    ``update(keys, sources, token_ids, context, start_row)``: ``keys`` ``(B, n)``; an entry whose key
    is ``-inf`` (``largest``) or ``+inf`` (smallest) never enters. ``sources``: the activations whose
    windows are kept (one for single cards, two for pair cards).
    """

    def __init__(self, k: int, n: int, n_sources: int, before: int, after: int, largest: bool = True) -> None:
        self.k, self.n, self.largest = k, n, largest
        self.before, self.after = before, after
        w = before + after + 1
        self.empty = float("-inf") if largest else float("inf")
        self.keys = torch.full((k, n), self.empty)
        self.rows = torch.full((k, n), -1, dtype=torch.int64)
        self.focus_values = torch.zeros((n_sources, k, n))
        self.tokens = torch.full((k, n, w), -1, dtype=torch.int32)
        self.values = torch.zeros((n_sources, k, n, w))

    def update(self, keys: Float[Tensor, "B n"], sources: list[Float[Tensor, "B n"]], token_ids: Int[Tensor, " B"],
               context: Int[Tensor, " B"], start_row: int) -> None:
        B = keys.shape[0]
        if B == 0:
            return
        kk = min(self.k, B)
        cand_keys, cand_rows = torch.topk(keys.float(), kk, dim=0, largest=self.largest)
        tok, vals = windows(sources, token_ids, context, cand_rows, self.before, self.after)
        focus = torch.stack([s.float().gather(0, cand_rows) for s in sources])
        all_keys = torch.cat([self.keys, cand_keys])
        keep = torch.topk(all_keys, self.k, dim=0, largest=self.largest).indices  # (k, n)
        self.keys = all_keys.gather(0, keep)
        self.rows = torch.cat([self.rows, cand_rows + start_row]).gather(0, keep)
        self.focus_values = torch.cat([self.focus_values, focus], 1).gather(1, keep.unsqueeze(0).expand(len(sources), -1, -1))
        w = tok.shape[-1]
        idx3 = keep.unsqueeze(-1).expand(-1, -1, w)
        self.tokens = torch.cat([self.tokens, tok]).gather(0, idx3)
        self.values = torch.cat([self.values, vals], 1).gather(1, idx3.unsqueeze(0).expand(len(sources), -1, -1, -1))

    def entries(self, latent: int) -> list[int]:
        """Buffer slots of ``latent`` that hold an entry, best first."""
        col = self.keys[:, latent]
        order = torch.argsort(col, descending=self.largest, stable=True)
        return [int(i) for i in order if torch.isfinite(col[i])]


class SparseSum:
    """Sums keyed by int64 keys (``token_id * n_latents + latent``), kept sorted and unique."""

    def __init__(self) -> None:
        self.keys = torch.zeros(0, dtype=torch.int64)
        self.sums = torch.zeros(0, dtype=torch.float64)

    def add(self, keys: Int[Tensor, " m"], values: Float[Tensor, " m"]) -> None:
        if keys.numel() == 0:
            return
        allk = torch.cat([self.keys, keys.long()])
        allv = torch.cat([self.sums, values.double()])
        uniq, inv = torch.unique(allk, sorted=True, return_inverse=True)
        self.sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, allv)
        self.keys = uniq

    def lookup(self, keys: Int[Tensor, " m"]) -> tuple[Float[Tensor, " m"], Tensor]:
        """Sums at ``keys`` (0 where absent) and a mask of the present ones."""
        if self.keys.numel() == 0:
            return torch.zeros(len(keys), dtype=torch.float64), torch.zeros(len(keys), dtype=torch.bool)
        pos = torch.searchsorted(self.keys, keys).clamp_max(len(self.keys) - 1)
        hit = self.keys[pos] == keys
        return torch.where(hit, self.sums[pos], torch.zeros((), dtype=torch.float64)), hit
