"""Activation harvesting, the sharded on-disk store and resumable readers.

- :func:`harvest` - many sites in one forward pass -> :class:`ActivationStore` on disk.
- :class:`ActivationStore` - ``open(path, expect=...)``, ``stats(site)``, ``iter_batches(...)``.
- :class:`StoreReader` / :class:`LiveReader` - ``dict[site -> (batch, width)]`` batches through a
  bounded shuffle buffer, with ``state_dict()`` / ``load_state_dict()``.
- :class:`DevicePrefetcher` - reads ahead in a thread, pins and copies batches to the GPU on a side stream.
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
from universality.activations.readers import DevicePrefetcher, RowReader, StoreReader
from universality.activations.store import ActivationStore

__all__ = [
    "ActivationStore",
    "DevicePrefetcher",
    "HarvestConfig",
    "LiveReader",
    "RowReader",
    "StoreReader",
    "capture_rows",
    "check_sites",
    "harvest",
    "harvest_label",
    "span_activations",
]
