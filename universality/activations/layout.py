"""The per-row fields of an activation store, and the shard key of a site's activations, shared by
the store, the harvest and the readers.

Besides ``acts/<site>``, every row of a store shard holds these int64 fields (see
:mod:`universality.activations.store` for the whole layout). A module of its own so that the
readers, which the store's ``iter_batches`` builds, need not import the store.
"""

from __future__ import annotations

from universality.sites import Site

__all__ = ["ROW_FIELDS", "acts_key"]

ROW_FIELDS = ("token_ids", "doc_index", "position", "context_index", "char_start", "char_end")


def acts_key(s: Site) -> str:
    """The shard tensor holding site ``s``'s activations: ``acts/<site name>`` (the on-disk format)."""
    return f"acts/{s.name}"
