"""The per-row fields of an activation store, shared by the store and its readers.

Besides ``acts/<site>``, every row of a store shard holds these int64 fields (see
:mod:`universality.activations.store` for the whole layout). A module of its own so that the
readers, which the store's ``iter_batches`` builds, need not import the store.
"""

from __future__ import annotations

__all__ = ["ROW_FIELDS"]

ROW_FIELDS = ("token_ids", "doc_index", "position", "context_index", "char_start", "char_end")
