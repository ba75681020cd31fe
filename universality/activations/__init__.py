"""Activation harvesting, the sharded on-disk store and resumable readers.

- :func:`harvest` - many sites in one forward pass -> :class:`ActivationStore` on disk.
- :class:`ActivationStore` - ``open(path, expect=...)``, ``stats(site)``, ``iter_batches(...)``.
- :class:`StoreReader` / :class:`LiveReader` - ``dict[site -> (batch, width)]`` batches through a
  bounded shuffle buffer, with ``state_dict()`` / ``load_state_dict()``.
- :class:`DevicePrefetcher` - reads ahead in a thread, pins and copies batches to the GPU on a side stream.
- :func:`aligned_stores` / :func:`aligned_live` - several sources in one row order, same tokens checked
  (:mod:`universality.activations.aligned`; crosscoders over models or checkpoints).
- :func:`aligned_text` - sources on different tokenizers, one row per shared unit of text
  (:mod:`universality.activations.aligned_text`; character alignment).
- :func:`span_activations` - text-token rows of shared evaluation spans (for cross-model matching).
"""

from __future__ import annotations

from universality.activations.harvest import (
    HarvestConfig,
    capture_rows,
    check_sites,
    harvest,
    harvest_label,
    span_activations,
)
from universality.activations.live import LiveReader
from universality.activations.aligned import AlignedLiveReader, AlignedStoreReader, aligned_live, aligned_stores
from universality.activations.aligned_text import AlignedTextReader, aligned_text, text_spans
from universality.activations.readers import DevicePrefetcher, RowReader, StoreReader
from universality.activations.store import ActivationStore

__all__ = [
    "ActivationStore",
    "AlignedLiveReader",
    "AlignedStoreReader",
    "AlignedTextReader",
    "DevicePrefetcher",
    "HarvestConfig",
    "LiveReader",
    "RowReader",
    "StoreReader",
    "aligned_live",
    "aligned_stores",
    "aligned_text",
    "capture_rows",
    "check_sites",
    "harvest",
    "harvest_label",
    "span_activations",
    "text_spans",
]
