"""Control activation sources: what an SAE finds in data that carries no model computation.

Two controls for "are SAE features a property of the model or of the dataset?":

- :class:`GaussianSource` - Gaussian rows with the mean and covariance of a site's activations
  (:func:`fit_gaussian` reads them from an :class:`~universality.activations.ActivationStore`). The
  second moments are those of the model, every higher-order structure (sparsity, clusters) is gone.
- :class:`EmbeddingSource` - the input-embedding row of each harvested token
  (:func:`store_token_ids` reads the ids a store kept per row): what the residual stream holds before
  any block has run.

Both yield ``{site: (batch, d)}`` dicts like the store readers, so :mod:`universality.train`'s trainer
consumes them unchanged; batch ``i`` is a pure function of ``(seed, i)`` (Gaussian) or of ``(seed,
epoch)`` and the position (embeddings), and ``state_dict``/``load_state_dict`` resume at the next row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.activations.layout import acts_key
from universality.activations.store import ActivationStore
from universality.errors import ConfigError, DataError
from universality.io import stable_hash
from universality.sites import Site

__all__ = ["GaussianFit", "fit_gaussian", "GaussianSource", "store_token_ids", "EmbeddingSource"]


def _generator(*parts: int) -> torch.Generator:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + 1) & 0x7FFF_FFFF_FFFF_FFFF
    return torch.Generator().manual_seed(h)


@dataclass(frozen=True)
class GaussianFit:
    """Mean ``(d,)`` and covariance ``(d, d)`` (float64) of ``n_rows`` activation rows."""

    mean: Float[Tensor, " d"]
    cov: Float[Tensor, "d d"]
    n_rows: int

    def __post_init__(self) -> None:
        d = self.mean.shape[0]
        if self.mean.ndim != 1 or self.cov.shape != (d, d):
            raise DataError(f"GaussianFit needs mean (d,) and cov (d, d), got {tuple(self.mean.shape)} and "
                            f"{tuple(self.cov.shape)}", "fit both from the same rows")
        if not (torch.isfinite(self.mean).all() and torch.isfinite(self.cov).all()):
            raise DataError("GaussianFit holds NaN or infinite values", "check the activations it was fitted on")

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    def factor(self) -> Float[Tensor, "d d"]:
        """``L`` with ``L L^T = cov`` (symmetric square root; negative eigenvalues of round-off clamped to 0)."""
        vals, vecs = torch.linalg.eigh((self.cov + self.cov.T) / 2)
        return (vecs * vals.clamp_min(0.0).sqrt()) @ vecs.T

    def digest(self) -> str:
        """A short hash of the fit (part of a cache key)."""
        return stable_hash({"mean": self.mean.tolist(), "cov": self.cov.flatten().tolist(), "n": self.n_rows})


def fit_gaussian(store: ActivationStore, site: str | Site, max_rows: int | None = None) -> GaussianFit:
    """Mean and covariance (``1/(n-1)``) of ``site``'s rows in ``store``, shard by shard in float64
    (the first ``max_rows`` rows in store order when given)."""
    (s,) = store.require(site)
    key = acts_key(s)
    d = store.width(s)
    total, outer, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
    for i in range(len(store.shards)):
        x = store.read_rows(i, [key])[key].to(torch.float64)
        if max_rows is not None:
            x = x[: max(0, max_rows - n)]
        if not x.shape[0]:
            break
        total += x.sum(0)
        outer += x.T @ x
        n += x.shape[0]
    if n < 2:
        raise DataError(f"store {store.path} has {n} rows of {s.name}; a covariance needs at least 2",
                        "harvest more tokens")
    mean = total / n
    cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
    return GaussianFit(mean=mean, cov=(cov + cov.T) / 2, n_rows=n)


class GaussianSource:
    """``{site: (batch_size, d)}`` Gaussian rows, one independent :class:`GaussianFit` per site.

    Batch ``i`` is drawn from a generator seeded by ``(seed, i)`` alone (float32 rows); ``state_dict``
    holds the next batch's index. ``n_batches=None`` iterates forever. ``label`` names the fitted
    activations in :meth:`provenance` (the trainer records it and derives initial weights from it).
    """

    def __init__(self, fits: Mapping[str, GaussianFit], batch_size: int, seed: int = 0,
                 n_batches: int | None = None, label: str = "gaussian") -> None:
        if not fits:
            raise ConfigError("GaussianSource needs at least one site", "pass {site: fit_gaussian(store, site)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", "use e.g. 1024")
        if n_batches is not None and (not isinstance(n_batches, int) or n_batches < 1):
            raise ConfigError(f"n_batches must be a positive integer or None, got {n_batches!r}", "use None for endless")
        self.fits = dict(fits)
        self.batch_size, self.seed, self.n_batches, self.label = batch_size, int(seed), n_batches, label
        self._factors = {site: f.factor().to(torch.float32) for site, f in self.fits.items()}
        self._means = {site: f.mean.to(torch.float32) for site, f in self.fits.items()}
        self.next_batch = 0

    def batch(self, index: int) -> dict[str, Float[Tensor, "batch d"]]:
        """Batch ``index`` (a pure function of ``(seed, index)``)."""
        out = {}
        for k, site in enumerate(sorted(self.fits)):
            z = torch.randn(self.batch_size, self.fits[site].d, generator=_generator(self.seed, index, k))
            out[site] = self._means[site] + z @ self._factors[site]
        return out

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while self.n_batches is None or self.next_batch < self.n_batches:
            x = self.batch(self.next_batch)
            self.next_batch += 1
            yield x

    def provenance(self) -> dict[str, Any]:
        return {"model": None, "revision": None, "dataset": self.label,
                "subset_hash": stable_hash({site: f.digest() for site, f in sorted(self.fits.items())})}

    def state_dict(self) -> dict[str, Any]:
        return {"next_batch": self.next_batch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise DataError(f"source state is for seed {state.get('seed')}, this source has seed {self.seed}",
                            "resume with the same source")
        self.next_batch = int(state["next_batch"])


def store_token_ids(store: ActivationStore) -> Int[Tensor, " n_rows"]:
    """The token id of every row of ``store``, in store order."""
    return store.rows(fields=("token_ids",))["token_ids"].long()


class EmbeddingSource:
    """``{site: (batch_size, d)}``: rows of ``embedding`` (``(vocab, d)``, a model's input embedding) read
    at ``token_ids``, the same rows for every name in ``sites``.

    Each epoch visits every token once in an order drawn from ``(seed, epoch)``; a batch that would run
    past the end of an epoch starts the next one (``epochs=None``: endless). ``state_dict`` holds the
    epoch and the position in it.
    """

    def __init__(self, embedding: Float[Tensor, "vocab d"], token_ids: Int[Tensor, " n"], sites: Sequence[str],
                 batch_size: int, seed: int = 0, epochs: int | None = None, label: str = "embedding") -> None:
        if embedding.ndim != 2:
            raise DataError(f"embedding must be a (vocab, d) matrix, got shape {tuple(embedding.shape)}",
                            "pass the model's input embedding weight")
        ids = torch.as_tensor(token_ids).long().flatten()
        if ids.numel() < batch_size:
            raise DataError(f"{ids.numel()} token ids are fewer than one batch of {batch_size}", "harvest more tokens")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= embedding.shape[0]):
            raise DataError(f"token ids span [{int(ids.min())}, {int(ids.max())}], the embedding has {embedding.shape[0]} rows",
                            "use the embedding of the model whose tokenizer produced the ids")
        if not sites:
            raise ConfigError("EmbeddingSource needs at least one site name", "pass e.g. ['blocks.0.hook_resid_pre']")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", "use e.g. 1024")
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ConfigError(f"epochs must be a positive integer or None, got {epochs!r}", "use None for endless")
        self.embedding = embedding.detach().to("cpu", torch.float32)
        self.token_ids, self.sites = ids, list(sites)
        self.batch_size, self.seed, self.epochs, self.label = batch_size, int(seed), epochs, label
        self.epoch, self.offset = 0, 0

    def _order(self, epoch: int) -> Tensor:
        return torch.randperm(self.token_ids.numel(), generator=_generator(self.seed, epoch))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self._order(self.epoch)
        n = self.token_ids.numel()
        while self.epochs is None or self.epoch < self.epochs:
            take = order[self.offset:self.offset + self.batch_size]
            if take.numel() < self.batch_size:
                if self.epochs is not None and self.epoch + 1 >= self.epochs:
                    self.epoch, self.offset = self.epoch + 1, 0
                    return
                self.epoch += 1
                order = self._order(self.epoch)
                self.offset = self.batch_size - take.numel()
                take = torch.cat([take, order[:self.offset]])
            else:
                self.offset += self.batch_size
                if self.offset == n:
                    self.epoch, self.offset = self.epoch + 1, 0
                    order = self._order(self.epoch)
            x = self.embedding[self.token_ids[take]]
            yield {site: x for site in self.sites}

    def provenance(self) -> dict[str, Any]:
        return {"model": None, "revision": None, "dataset": self.label,
                "subset_hash": stable_hash({"ids": stable_hash(self.token_ids.tolist()), "d": self.embedding.shape[1]})}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise DataError(f"source state is for seed {state.get('seed')}, this source has seed {self.seed}",
                            "resume with the same source")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
