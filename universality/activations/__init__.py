"""Activation harvesting, the sharded on-disk store and resumable readers.

- :func:`harvest` - many sites in one forward pass -> :class:`ActivationStore` on disk.
- :class:`ActivationStore` - ``open(path, expect=...)``, ``stats(site)``, ``iter_batches(...)``.
- :class:`StoreReader` / :class:`LiveReader` - ``dict[site -> (batch, width)]`` batches through a
  bounded shuffle buffer, with ``state_dict()`` / ``load_state_dict()``.
- :class:`DevicePrefetcher` - reads ahead in a thread, pins and copies batches to the GPU on a side stream.
- :func:`aligned_stores` / :func:`aligned_live` - several sources in one row order, same tokens checked
  (:mod:`universality.activations.aligned`; crosscoders over models or checkpoints).
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
from universality.activations.readers import DevicePrefetcher, RowReader, StoreReader
from universality.activations.store import ActivationStore

__all__ = [
    "ActivationStore",
    "AlignedLiveReader",
    "AlignedStoreReader",
    "DevicePrefetcher",
    "HarvestConfig",
    "LiveReader",
    "RowReader",
    "StoreReader",
    "aligned_live",
    "aligned_stores",
    "capture_rows",
    "check_sites",
    "harvest",
    "harvest_label",
    "span_activations",
]
