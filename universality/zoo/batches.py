"""Which rows form the batch of each update: a pure function of the update index.

Epoch ``e`` visits the training rows in the order ``randperm(n, seed=hash(seed, e))``; update ``t``
takes the flat positions ``t*B ... t*B + B - 1`` of the concatenated epochs. Because the batch is a
function of ``t`` alone (no iterator state), resuming at update ``t`` reproduces exactly the batches
an uninterrupted run would have seen. An optional curriculum (:class:`~universality.zoo.config.InjectSpec`)
overwrites the last rows of every batch after a given step with rows of injected text.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from universality.zoo.config import InjectSpec

__all__ = ["BatchSchedule"]


class BatchSchedule:
    """Deterministic batches over ``rows`` (and injected rows after ``inject.after_step``)."""

    def __init__(
        self,
        rows: Int[Tensor, "rows ctx"],
        batch_size: int,
        seed: int,
        inject: InjectSpec | None = None,
        inject_rows: Int[Tensor, "inject_rows ctx"] | None = None,
    ) -> None:
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.inject, self.inject_rows = inject, inject_rows
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.rows.shape[0], generator=gen)
            self._perms = {epoch: perm}  # keep only the current epoch
        return perm

    def indices(self, update: int) -> Int[Tensor, " batch"]:
        """Row indices of update ``update`` (0-based) into ``rows``."""
        n = self.rows.shape[0]
        out = []
        for flat in range(update * self.batch_size, (update + 1) * self.batch_size):
            epoch, pos = divmod(flat, n)
            out.append(int(self._perm(epoch)[pos]))
        return torch.tensor(out, dtype=torch.int64)

    def injected(self, update: int) -> bool:
        """Whether update ``update`` (producing checkpoint ``update + 1``) carries injected rows."""
        return self.inject is not None and update >= self.inject.after_step

    def batch(self, update: int) -> Int[Tensor, "batch ctx"]:
        """The ``(batch_size, context_length)`` token ids of update ``update``."""
        batch = self.rows[self.indices(update)]
        if self.injected(update):
            assert self.inject is not None and self.inject_rows is not None
            k = self.inject.rows(self.batch_size)
            m = self.inject_rows.shape[0]
            start = (update - self.inject.after_step) * k
            pick = torch.tensor([(start + i) % m for i in range(k)], dtype=torch.int64)
            batch = batch.clone()
            batch[self.batch_size - k :] = self.inject_rows[pick]
        return batch
