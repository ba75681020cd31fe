"""Aligned multi-source rows: every source's row ``r`` is the activation of the same token.

A crosscoder over two models (or two checkpoints, or layers harvested into different stores) needs
row ``r`` of every source to be the same token of the same context. Two readers:

* :class:`AlignedStoreReader` (``aligned_stores(stores, sites, ...)``) reads several
  :class:`~universality.activations.store.ActivationStore` s harvested on the same packed token stream
  with **one** row order: the rows are split into global ranges (``piece_rows``, crossing shard
  boundaries freely, so stores with different shard sizes still line up), the ranges are permuted and
  grouped as in :class:`~universality.activations.readers.StoreReader`, and one permutation per group
  is applied to every source.
* :class:`AlignedLiveReader` (``aligned_live(adapters, documents, sites, ...)``) packs the documents
  with every adapter's tokenizer, and runs every adapter on the same contexts.

**Refusals.** Up front, stores must agree on their row count, packing and BOS rows (and subset hash
where both record one); then, for every group read, the token ids of every source must agree row by row
(a store's ``token_ids`` row field, or the contexts each tokenizer packed). A disagreement raises
:class:`~universality.errors.DataError` naming the source and the first differing row. Sources on
different tokenizers are refused here; :func:`universality.activations.aligned_text` aligns those through
characters (one row per shared unit of text).

Both yield ``{name_i: (batch, width_i)}`` with ``names`` ``"<i>:<site>"`` by default (two sources may
read the same site name), optionally row fields as ``"<i>:<field>"``, and are resumable exactly like
every reader (``state_dict``/``load_state_dict``, :mod:`universality.activations.readers`).
``JointSource.aligned(reader)`` concatenates them for a crosscoder; ``source_provenance(name)`` gives
each source's model, revision, dataset and subset hash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from universality.activations.harvest import capture_rows, check_sites
from universality.activations.layout import ROW_FIELDS, acts_key
from universality.activations.live import LiveReader
from universality.activations.readers import RowReader, plan_groups, store_provenance
from universality.activations.store import ActivationStore
from universality.data.packing import to_batch
from universality.errors import ConfigError, DataError
from universality.sites import Site, as_site

__all__ = ["AlignedStoreReader", "AlignedLiveReader", "aligned_stores", "aligned_live", "check_same_tokens"]

_FIX = "harvest every source on the same documents with the same packing and tokenizer"


def source_names(sites: Sequence[Site], names: Sequence[str] | None) -> list[str]:
    """The keys of an aligned reader's sources: ``names``, or ``"<i>:<site>"``; refused unless one distinct name per source."""
    out = [f"{i}:{s.name}" for i, s in enumerate(sites)] if names is None else [str(n) for n in names]
    if len(out) != len(sites) or len(set(out)) != len(out):
        raise ConfigError(f"aligned source names {out} must be {len(sites)} distinct names", "give one distinct name per source")
    return out


def check_same_tokens(tokens: Sequence[Int[Tensor, " rows"]], labels: Sequence[str], where: str) -> None:
    """Raise :class:`DataError` naming the first source and row whose token id differs from source 0's."""
    ref = tokens[0]
    for t, label in zip(tokens[1:], labels[1:]):
        if t.shape != ref.shape:
            raise DataError(f"aligned sources disagree on {where}: {labels[0]} has {ref.shape[0]} rows, {label} has {t.shape[0]}", _FIX)
        bad = (t != ref).nonzero()
        if bad.numel():
            r = int(bad[0, 0])
            raise DataError(f"aligned sources disagree on {where}: row {r} is token {int(ref[r])} in {labels[0]} "
                            f"but {int(t[r])} in {label} ({bad.shape[0]} rows differ)", _FIX)


class AlignedStoreReader(RowReader):
    """Source ``i`` is site ``sites[i]`` of ``stores[i]``, all in one shared row order (see module doc)."""

    def __init__(
        self,
        stores: Sequence[ActivationStore | str | os.PathLike],
        sites: Sequence[str | Site],
        batch_size: int = 4096,
        shuffle_buffer: int = 0,
        seed: int = 0,
        epochs: int | None = 1,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        fields: Sequence[str] = (),
        piece_rows: int | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        stores = [s if isinstance(s, ActivationStore) else ActivationStore.open(s) for s in stores]
        if len(stores) < 2 or len(stores) != len(sites):
            raise ConfigError(f"{len(stores)} stores for {len(sites)} sites", "give one store per source (two or more); a store may repeat")
        bad = [f for f in fields if f not in ROW_FIELDS]
        if bad:
            raise ConfigError(f"unknown row fields {bad}", f"use some of {ROW_FIELDS}")
        typed = [store.require(site)[0] for store, site in zip(stores, [as_site(s) for s in sites])]
        super().__init__(typed, batch_size, shuffle_buffer, seed, epochs, drop_last, device, dtype)
        self.stores, self.fields = stores, list(fields)
        self.sites = self.names = source_names(typed, names)
        self.labels = [f"source {i} ({s.path})" for i, s in enumerate(stores)]
        self._check_manifests()
        self.n_rows = stores[0].n_rows
        # shard start rows of every store: global row -> (shard, local row)
        self._starts = [np.cumsum([0] + [int(sh["rows"]) for sh in s.shards]) for s in stores]
        default_piece = shuffle_buffer if shuffle_buffer > 0 else max(batch_size, 1 << 16)
        self.piece_rows = int(piece_rows or default_piece)
        # global row ranges (shard -1: they cross shards), grouped like a StoreReader's pieces
        self._pieces = [(-1, lo, min(lo + self.piece_rows, self.n_rows)) for lo in range(0, self.n_rows, self.piece_rows)]
        self._buffers: dict[str, Tensor] = {}
        self._layout_epoch: int | None = None
        self._layout: list[list[tuple[int, int, int]]] = []
        if self._pieces:  # refuse different token streams now, not after the first batches
            _, lo, hi = self._pieces[0]
            self._check_tokens(lo, min(hi, lo + 4096), "their first rows")

    # ---------------------------------------------------------------- checks
    def _check_manifests(self) -> None:
        ref = self.stores[0].manifest
        for store, label in zip(self.stores[1:], self.labels[1:]):
            m = store.manifest
            if "token_ids" not in (m.get("row_fields") or ROW_FIELDS):
                raise DataError(f"{label} keeps no token ids per row, so its rows cannot be checked", "re-harvest it")
            for key in ("packing", "include_bos"):
                if m.get(key) != ref.get(key):
                    raise DataError(f"aligned stores disagree on {key}: {ref.get(key)!r} in {self.labels[0]}, {m.get(key)!r} in {label}", _FIX)
            if ref.get("subset_hash") and m.get("subset_hash") and ref["subset_hash"] != m["subset_hash"]:
                raise DataError(f"aligned stores were harvested on different subsets ({ref['subset_hash']} in {self.labels[0]}, "
                                f"{m['subset_hash']} in {label})", _FIX)
            if store.n_rows != self.stores[0].n_rows:
                raise DataError(f"aligned stores hold different row counts: {self.stores[0].n_rows} in {self.labels[0]}, "
                                f"{store.n_rows} in {label}", _FIX)

    def _distinct(self) -> list[int]:
        """Index of the first source of every distinct store (a repeated store is read and checked once)."""
        seen: dict[int, int] = {}
        for i, s in enumerate(self.stores):
            seen.setdefault(id(s), i)
        return sorted(seen.values())

    def _check_tokens(self, lo: int, hi: int, where: str) -> dict[int, Tensor]:
        first = self._distinct()
        tokens = {i: self._read(i, "token_ids", [(lo, hi)]) for i in first}
        check_same_tokens([tokens[i] for i in first], [self.labels[i] for i in first], f"{where} (rows {lo}-{hi})")
        return tokens

    # ---------------------------------------------------------------- reading
    def _read(self, i: int, key: str, pieces: list[tuple[int, int]], out: Tensor | None = None) -> Tensor:
        """Global rows ``pieces`` of tensor ``key`` of store ``i``, concatenated (into ``out`` when given)."""
        store, starts = self.stores[i], self._starts[i]
        total = sum(hi - lo for lo, hi in pieces)
        if out is None:
            dtype, shape = store.key_info(0, key)
            out = torch.empty((total, *shape[1:]), dtype=dtype)
        at = 0
        for lo, hi in pieces:
            shard = int(np.searchsorted(starts, lo, side="right")) - 1
            while lo < hi:
                end = min(hi, int(starts[shard + 1]))
                store.read_rows_into(shard, key, lo - int(starts[shard]), end - int(starts[shard]), out[at : at + end - lo])
                at, lo, shard = at + end - lo, end, shard + 1
        return out

    def _groups(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        if self._layout_epoch != epoch:
            self._layout_epoch, self._layout = epoch, plan_groups(self._pieces, self.shuffle_buffer, self.seed, epoch)
        return self._layout

    def _load_group(self, epoch: int, group: int) -> dict[str, Tensor] | None:
        groups = self._groups(epoch)
        if group >= len(groups):
            return None
        pieces = [(lo, hi) for _, lo, hi in groups[group]]
        total = sum(hi - lo for lo, hi in pieces)
        first = self._distinct()
        tokens = {i: self._read(i, "token_ids", pieces) for i in first}
        check_same_tokens([tokens[i] for i in first], [self.labels[i] for i in first], f"group {group} of epoch {epoch}")
        out: dict[str, Tensor] = {}
        for i, (site, name) in enumerate(zip(self.typed_sites, self.names)):
            key = acts_key(site)
            dtype, shape = self.stores[i].key_info(0, key)
            buf = self._buffers.get(name)
            if self.shuffle_buffer > 0 and buf is not None and buf.shape[0] >= total:
                buf = buf[:total]  # shuffled batches are gathered copies: the buffer can be reused
            else:
                buf = torch.empty((total, *shape[1:]), dtype=dtype)
                if self.shuffle_buffer > 0:
                    self._buffers[name] = buf
            out[name] = self._read(i, key, pieces, buf)
        for i in range(len(self.stores)):
            for f in self.fields:
                out[f"{i}:{f}"] = tokens[i] if f == "token_ids" and i in tokens else self._read(i, f, pieces)
        return out

    # ---------------------------------------------------------------- identity
    def _fingerprint(self) -> dict[str, Any]:
        return super()._fingerprint() | {"stores": [s.manifest.get("key") for s in self.stores], "rows": self.n_rows,
                                         "piece_rows": self.piece_rows, "fields": self.fields}

    def source_provenance(self, name: str) -> dict[str, Any]:
        """Model, revision, dataset, subset hash (and lineage) of the store behind source ``name``."""
        i = self.names.index(name)
        return store_provenance(self.stores[i]) | {"site": self.typed_sites[i].name}

    def provenance(self) -> dict[str, Any]:
        """Source 0's provenance (every source read the same tokens); per source: :meth:`source_provenance`."""
        return {k: v for k, v in self.source_provenance(self.names[0]).items() if k != "site"}

    def __len__(self) -> int:
        return self.n_rows // self.batch_size if self.drop_last else -(-self.n_rows // self.batch_size)


class AlignedLiveReader(RowReader):
    """Source ``i`` is site ``sites[i]`` of ``adapters[i]``, harvested live on the same contexts (see module doc)."""

    def __init__(
        self,
        adapters: Sequence[Any],
        documents,
        sites: Sequence[str | Site],
        packing=None,
        batch_size: int = 4096,
        shuffle_buffer: int = 0,
        seed: int = 0,
        epochs: int | None = 1,
        drop_last: bool = False,
        forward_batch: int = 8,
        include_bos: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        fields: Sequence[str] = (),
        names: Sequence[str] | None = None,
    ) -> None:
        if len(adapters) < 2 or len(adapters) != len(sites):
            raise ConfigError(f"{len(adapters)} adapters for {len(sites)} sites", "give one adapter per source (two or more)")
        bad = [f for f in fields if f != "token_ids"]
        if bad:
            raise ConfigError(f"live aligned readers yield only the token_ids row field, not {bad}", "read a store for the others")
        typed = [check_sites(a, [s])[0] for a, s in zip(adapters, sites)]
        super().__init__(typed, batch_size, shuffle_buffer, seed, epochs, drop_last, device, dtype)
        # one LiveReader per adapter packs its contexts (same packing, same group sizes); this reader runs the models
        self.members = [LiveReader(a, documents, [s], packing=packing, batch_size=batch_size, shuffle_buffer=shuffle_buffer,
                                   seed=seed, forward_batch=forward_batch, include_bos=include_bos)
                        for a, s in zip(adapters, typed)]
        self.adapters, self.fields = list(adapters), list(fields)
        self.sites = self.names = source_names(typed, names)
        self.labels = [f"source {i} ({getattr(a, 'name', '?')})" for i, a in enumerate(adapters)]
        self.packing, self.forward_batch, self.include_bos = self.members[0].packing, forward_batch, include_bos

    @torch.no_grad()
    def _load_group(self, epoch: int, group: int) -> dict[str, Tensor] | None:
        contexts = [m.contexts_of(epoch, group) for m in self.members]
        ids = [torch.from_numpy(np.stack(c)[..., 0].reshape(-1)) if c else torch.empty(0, dtype=torch.int64) for c in contexts]
        check_same_tokens(ids, self.labels, f"the packed contexts of group {group}")
        if not contexts[0]:
            return None
        first = group * self.members[0].group_contexts
        parts: list[dict[str, Tensor]] = []
        for j in range(0, len(contexts[0]), self.forward_batch):
            part: dict[str, Tensor] = {}
            for i, (adapter, site, name) in enumerate(zip(self.adapters, self.typed_sites, self.names)):
                batch = to_batch(contexts[i][j : j + self.forward_batch], first + j)
                acts, keep = capture_rows(adapter, batch, [site], include_bos=self.include_bos)
                part[name] = acts[site.name].cpu()
                if self.fields:
                    part[f"{i}:token_ids"] = batch.input_ids[keep]
            parts.append(part)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _fingerprint(self) -> dict[str, Any]:
        return super()._fingerprint() | {"packing": asdict(self.packing), "include_bos": self.include_bos, "fields": self.fields,
                                         "models": [getattr(a, "name", None) for a in self.adapters]}

    def source_provenance(self, name: str) -> dict[str, Any]:
        """The adapter's model and revision and the documents behind source ``name``."""
        i = self.names.index(name)
        return self.members[i].provenance() | {"site": self.typed_sites[i].name}

    def provenance(self) -> dict[str, Any]:
        return {k: v for k, v in self.source_provenance(self.names[0]).items() if k != "site"}


def aligned_stores(stores: Sequence[ActivationStore | str | os.PathLike], sites: Sequence[str | Site], batch_size: int = 4096,
                   shuffle_buffer: int = 0, seed: int = 0, **kwargs: Any) -> AlignedStoreReader:
    """:class:`AlignedStoreReader` over ``stores`` (source ``i`` = ``sites[i]`` of ``stores[i]``)."""
    return AlignedStoreReader(stores, sites, batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed, **kwargs)


def aligned_live(adapters: Sequence[Any], documents, sites: Sequence[str | Site], batch_size: int = 4096,
                 shuffle_buffer: int = 0, seed: int = 0, **kwargs: Any) -> AlignedLiveReader:
    """:class:`AlignedLiveReader` running ``adapters`` on ``documents`` (source ``i`` = ``sites[i]`` of ``adapters[i]``)."""
    return AlignedLiveReader(adapters, documents, sites, batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed, **kwargs)
