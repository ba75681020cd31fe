"""Firing statistics summed over ranks: :class:`SyncedFiringTracker`."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from jaxtyping import Bool, Float, Int
from torch import Tensor

from universality.train.dead import FiringTracker

__all__ = ["SyncedFiringTracker"]


def _count_table(count_F: Int[Tensor, " d_sae"], n: int) -> tuple[Int[Tensor, "n m"], Bool[Tensor, "n m"]]:
    """An ``(n, m)`` table of latent indices (padded, with a mask) that holds latent ``i`` exactly
    ``count_F[i]`` times: the input :meth:`FiringTracker.update_sparse` needs to add ``count_F``
    firings over ``n`` tokens, so the window bookkeeping stays the base class's."""
    idx_S = torch.repeat_interleave(torch.arange(count_F.shape[0], device=count_F.device), count_F)
    m = max(1, -(-idx_S.numel() // max(n, 1)))
    pad = n * m - idx_S.numel()
    idx = torch.cat([idx_S, idx_S.new_zeros(pad)]).view(n, m)
    fired = torch.cat([torch.ones_like(idx_S, dtype=torch.bool), torch.zeros(pad, dtype=torch.bool, device=idx_S.device)]).view(n, m)
    return idx, fired


class SyncedFiringTracker(FiringTracker):
    """A :class:`FiringTracker` whose every update is summed over the ranks of ``group``.

    Each update all-reduces the local per-latent firing counts and the local token count, then
    advances the window with the global numbers, so every rank holds the tracker a single process
    would hold after seeing the concatenated batch (same dead mask, same densities).
    """

    def __init__(self, d_sae: int, window: int, device: str | torch.device = "cpu", group: Any = None) -> None:
        super().__init__(d_sae, window, device)
        self.group = group

    @torch.no_grad()
    def _add_global(self, count_F: Int[Tensor, " d_sae"], n: int) -> None:
        buf = torch.cat([count_F.to(torch.int64), count_F.new_tensor([n], dtype=torch.int64)])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        n_all = int(buf[-1])
        if n_all == 0:
            return
        idx, fired = _count_table(buf[:-1], n_all)
        super().update_sparse(idx, fired)

    @torch.no_grad()
    def update(self, acts: Float[Tensor, "batch d_sae"]) -> None:
        self._add_global((acts > 0).sum(dim=0), acts.shape[0])

    @torch.no_grad()
    def update_sparse(self, idx: Int[Tensor, "batch k"], vals: Float[Tensor, "batch k"]) -> None:
        count_F = torch.bincount(idx[vals > 0].flatten(), minlength=self.count.shape[0])
        self._add_global(count_F, idx.shape[0])
