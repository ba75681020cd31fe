"""Live harvesting: :class:`LiveReader` runs the model on packed contexts and streams the rows.

It reads like a :class:`~universality.activations.readers.StoreReader` (same row stream, state and
resume; see :mod:`universality.activations.readers`) but harvests on the fly instead of reading an
:class:`~universality.activations.store.ActivationStore`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from universality.activations.harvest import capture_rows, check_sites
from universality.activations.readers import RowReader
from universality.data.packing import Packer, PackingConfig, to_batch
from universality.data.sources import as_documents
from universality.data.subsets import Subset
from universality.sites import Site
from universality.zoo.lineage import lineage_of

__all__ = ["LiveReader"]


class LiveReader(RowReader):
    """Harvests activations on the fly (no disk) and streams them like a :class:`StoreReader`.

    A group is ``group_contexts`` packed contexts (about ``shuffle_buffer`` rows; with no shuffle
    buffer, ``forward_batch`` contexts); its rows are the text tokens of those contexts. Restoring a
    state re-packs (tokenises) the skipped contexts but runs the model only on the current group.
    """

    def __init__(
        self,
        adapter,
        documents,
        sites: str | Site | Sequence[str | Site],
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
    ) -> None:
        super().__init__(check_sites(adapter, sites), batch_size, shuffle_buffer, seed, epochs, drop_last, device, dtype)
        self.adapter = adapter
        self.subset_hash = documents.hash if isinstance(documents, Subset) else None
        self.dataset_name = documents.source_name if isinstance(documents, Subset) else None
        self.documents = as_documents(documents)
        if self.dataset_name is None:
            self.dataset_name = getattr(self.documents, "name", None)
        self.packing = packing or PackingConfig()
        self.forward_batch = forward_batch
        self.include_bos = include_bos
        self._packer_cls = Packer
        if shuffle_buffer > 0:
            self.group_contexts = max(1, shuffle_buffer // self.packing.context_len)
        else:
            self.group_contexts = forward_batch
        self._stream = None  # (epoch, next group index, iterator of contexts)

    def _fingerprint(self) -> dict[str, Any]:
        return super()._fingerprint() | {"packing": asdict(self.packing), "include_bos": self.include_bos, "model": getattr(self.adapter, "name", None)}

    def provenance(self) -> dict[str, Any]:
        """The adapter's ``name`` and ``revision``, the documents' name and (for a
        :class:`~universality.data.subsets.Subset`) its hash, and for a zoo model its ``lineage``
        (:func:`universality.zoo.lineage_of`: a base run and its fine-tunes share one)."""
        name = getattr(self.adapter, "name", None)
        return {"model": name, "revision": getattr(self.adapter, "revision", None),
                "dataset": self.dataset_name, "subset_hash": self.subset_hash,
                "lineage": lineage_of(name) if isinstance(name, str) else None}

    def contexts_of(self, epoch: int, group: int) -> list:
        """The packed contexts of group ``group`` of epoch ``epoch`` (``(context_len, 5)`` arrays; the packer
        continues where the last call stopped, or re-packs from the start to get there)."""
        if self._stream is None or self._stream[0] != epoch or self._stream[1] != group:
            packer = self._packer_cls(self.adapter.tokenizer, self.packing)
            it = packer.contexts(self.documents)
            it = itertools.islice(it, group * self.group_contexts, None)
            self._stream = (epoch, group, it)
        _, _, it = self._stream
        chunk = list(itertools.islice(it, self.group_contexts))
        self._stream = (epoch, group + 1, it)
        return chunk

    @torch.no_grad()
    def _load_group(self, epoch: int, group: int) -> dict[str, Tensor] | None:
        contexts = self.contexts_of(epoch, group)
        if not contexts:
            return None
        parts: list[dict[str, Tensor]] = []
        for i in range(0, len(contexts), self.forward_batch):
            batch = to_batch(contexts[i : i + self.forward_batch], group * self.group_contexts + i)
            acts, _ = capture_rows(self.adapter, batch, self.typed_sites, include_bos=self.include_bos)
            parts.append({n: a.cpu() for n, a in acts.items()})
        return {n: torch.cat([p[n] for p in parts]) for n in self.sites}
