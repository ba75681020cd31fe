"""The evaluation text a card reads: chunks of whole contexts, and token ids turned into text.

A chunk is ``(acts (B, d), token_ids (B,), context (B,))`` with rows in text order and every context
whole (a window never needs a row of another chunk). Sources: tensors already in memory
(:func:`tensor_chunks`: a study's evaluation activations) or an activation store read shard by shard
(:func:`store_chunks`: memory bounded by one shard plus one context).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.activations.layout import acts_key
from universality.errors import ConfigError
from universality.sites import Site, as_site

__all__ = ["Chunk", "context_bounds", "tensor_chunks", "store_chunks", "token_decoder", "CHUNK_ROWS"]

Chunk = tuple[Float[Tensor, "B d"], Int[Tensor, " B"], Int[Tensor, " B"]]
#: rows per chunk (whole contexts are kept together, so a chunk may be longer by one context)
CHUNK_ROWS = 4096


def context_bounds(context: Int[Tensor, " T"], max_rows: int = CHUNK_ROWS) -> list[tuple[int, int]]:
    """``[lo, hi)`` row ranges of consecutive whole contexts, about ``max_rows`` rows each."""
    T = int(context.shape[0])
    if T == 0:
        return []
    change = (torch.nonzero(context[1:] != context[:-1]).flatten() + 1).tolist()
    starts = [0, *change]
    bounds, lo = [], 0
    for s in starts[1:]:
        if s - lo >= max_rows:
            bounds.append((lo, s))
            lo = s
    bounds.append((lo, T))
    return bounds


def tensor_chunks(acts: Float[Tensor, "T d"], token_ids: Int[Tensor, " T"], context: Int[Tensor, " T"],
                  max_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Chunks of in-memory rows (``context``: one id per row; equal ids are one context)."""
    if not (acts.shape[0] == token_ids.shape[0] == context.shape[0]):
        raise ConfigError(f"{acts.shape[0]} activation rows, {token_ids.shape[0]} token ids, {context.shape[0]} context ids",
                          "give one token id and one context id per activation row")
    for lo, hi in context_bounds(context, max_rows):
        yield acts[lo:hi], token_ids[lo:hi], context[lo:hi]


def store_chunks(store: Any, site: str | Site, max_rows: int | None = None,
                 chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Chunks of an :class:`~universality.activations.ActivationStore` at ``site`` in store order (the
    first ``max_rows`` rows, cut at a context boundary), read shard by shard; a context that runs
    across two shards is joined before it is handed on."""
    s = as_site(site)
    store.require(s)
    key = acts_key(s)
    carry: list[Tensor] | None = None
    seen = 0
    for shard in range(len(store.shards)):
        part = store.read_rows(shard, [key, "token_ids", "context_index"])
        x, tok, ctx = part[key], part["token_ids"], part["context_index"]
        if carry is not None:
            x, tok, ctx = torch.cat([carry[0], x]), torch.cat([carry[1], tok]), torch.cat([carry[2], ctx])
        if len(ctx) == 0:
            carry = None
            continue
        last = int(torch.nonzero(ctx != ctx[-1]).flatten()[-1]) + 1 if bool((ctx != ctx[-1]).any()) else 0
        final = shard == len(store.shards) - 1
        cut = len(ctx) if final else last  # hold back the trailing context: it may go on in the next shard
        carry = None if final else [x[cut:], tok[cut:], ctx[cut:]]
        for chunk in tensor_chunks(x[:cut], tok[:cut], ctx[:cut], chunk_rows):
            if max_rows is not None and seen + len(chunk[1]) > max_rows:
                bounds = context_bounds(chunk[2], 1)
                keep = max((hi for _, hi in bounds if seen + hi <= max_rows), default=0)
                if keep:
                    yield chunk[0][:keep], chunk[1][:keep], chunk[2][:keep]
                return
            seen += len(chunk[1])
            yield chunk


def token_decoder(tokenizer: Any | None) -> Callable[[Sequence[int]], list[str]]:
    """Token ids -> the text of each token (``tokenizer.decode([id])``; the tokenizer's own spelling of a
    token that is part of a multi-byte character; ``#id`` without a tokenizer)."""
    cache: dict[int, str] = {}

    def decode(ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in cache:
                if tokenizer is None:
                    cache[i] = f"#{i}"
                else:
                    try:
                        text = tokenizer.decode([i])
                        if "\ufffd" in text:  # part of a multi-byte character: show the token's own spelling
                            text = str(tokenizer.convert_ids_to_tokens(i))
                        cache[i] = text
                    except Exception:  # an id outside the tokenizer's vocabulary: show the id
                        cache[i] = f"#{i}"
            out.append(cache[i])
        return out

    return decode
