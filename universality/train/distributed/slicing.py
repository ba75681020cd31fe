"""The data-parallel view of a source: :class:`RankSlice` hands each rank its share of every global batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from jaxtyping import Float
from torch import Tensor

from universality.errors import ConfigError, DataError
from universality.train.trainer import as_site_batch

__all__ = ["share_bounds", "RankSlice"]


def share_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an ``n``-row global batch that belong to ``rank`` (contiguous shares,
    sizes differing by at most one, in rank order, like :func:`torch.tensor_split`)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class RankSlice:
    """Rank ``rank``'s share of every global batch of ``source`` (an activation source).

    Every rank iterates its own copy of the same source; a global batch of ``n`` rows gives rank
    ``r`` rows :func:`share_bounds`\\ ``(n, r, world)``, so the shares are disjoint and, concatenated
    in rank order, are the global batch. A global batch with fewer rows than ranks ends the
    stream on every rank alike (so no rank waits in a collective for the others); a global batch
    that does not divide evenly (a store's last, partial batch) gives shares one row apart, and
    DDP then weighs the shares' means equally rather than by their row counts.
    ``state_dict``/``load_state_dict`` are the source's own: the global position, the same on
    every rank, which is what rank 0's checkpoint records.
    """

    def __init__(self, source: Iterable, rank: int, world: int) -> None:
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
            raise ConfigError(f"rank {rank!r} of world {world!r} is not valid", "use 0 <= rank < world")
        self.source, self.rank, self.world = source, rank, world

    def __iter__(self) -> Iterator[dict[str, Float[Tensor, "rows d"]]]:
        for item in self.source:
            batch = as_site_batch(item)
            n = next(iter(batch.values())).shape[0]
            if any(x.shape[0] != n for x in batch.values()):
                raise DataError("the sites of one batch have different row counts", "yield the same rows for every site")
            if n < self.world:
                return
            lo, hi = share_bounds(n, self.rank, self.world)
            yield {site: x[lo:hi] for site, x in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        if not hasattr(self.source, "state_dict"):
            raise DataError("the activation source has no state_dict", "use a resumable source to checkpoint")
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:  # e.g. sites, batch_size of the wrapped reader
        if name in ("source", "rank", "world"):
            raise AttributeError(name)
        return getattr(self.source, name)
