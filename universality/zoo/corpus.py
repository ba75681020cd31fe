"""Training text for a zoo model: resolve any text input to a subset, and pack it into rows.

Whatever :func:`~universality.zoo.train_lm` is given (a list of strings, documents, a
:class:`~universality.data.sources.Source` or a :class:`~universality.data.subsets.Subset`) becomes
a :class:`~universality.data.subsets.Subset`, so the manifest always records the dataset name and
the subset hash the data package defines. Packing is the data package's
(:func:`universality.data.packing.pack`): documents separated by ``<|endoftext|>``, concatenated,
cut into rows of ``context_length`` tokens that each start with ``<|endoftext|>`` (the ragged tail
is dropped).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from universality.data.packing import PackingConfig, pack
from universality.data.sources import Document, Source, as_documents
from universality.data.subsets import Subset, select_subset
from universality.errors import DataError

__all__ = ["as_subset", "packing_config", "pack_documents", "cached_rows", "pack_texts", "split_eval_rows"]

#: Seed of the train/eval row split; fixed (not the model's seed) so every seed of a zoo is scored on the same rows.
EVAL_SPLIT_SEED = 20240705


def as_subset(data: Any, name: str = "texts"):
    """A :class:`~universality.data.subsets.Subset` for ``data`` (a Subset is returned unchanged)."""
    if isinstance(data, Subset):
        return data
    if isinstance(data, Source):
        return select_subset(data, None)
    if isinstance(data, (str, bytes)):
        raise DataError("got a single string where a corpus was expected", "pass a list of documents (strings) or a Source")
    if not isinstance(data, Sequence):
        data = list(data)
    if not data:
        raise DataError("the training corpus is empty", "pass at least one non-empty document")
    docs = as_documents(data, name=name)
    sources = {getattr(d, "meta", {}).get("source") for d in docs}
    if len(sources) == 1 and isinstance(next(iter(sources)), str):
        name = next(iter(sources))  # documents of one source keep its name (e.g. list(shakespeare()))
    return select_subset(docs, None, name=name)


def packing_config(context_length: int, *, drop_last: bool = True):
    """How zoo models are trained: ``<|endoftext|>`` before every document and at the start of every
    row (the data package's default harvesting layout, so activations are read the way the model
    was trained); ``drop_last`` drops the ragged tail instead of padding it."""
    return PackingConfig(context_len=context_length, doc_separator=True, bos_every_context=True, drop_last=drop_last)


def pack_documents(documents: Sequence[Any], tokenizer, context_length: int, *, what: str = "corpus") -> Int[Tensor, "rows ctx"]:
    """Token rows of ``documents`` (:class:`~universality.data.sources.Document`\\ s) packed with :func:`packing_config`."""
    if not documents:
        raise DataError(f"the {what} has no documents", "pass at least one non-empty document")
    try:
        batch, _ = pack(documents, tokenizer, packing_config(context_length))
    except DataError:
        batch = None
    if batch is None or len(batch) == 0:
        raise DataError(
            f"the {what} has fewer tokens than one row of context_length={context_length}",
            "add text or lower context_length",
        )
    return batch.input_ids


_ROW_CACHE: OrderedDict[tuple[str, str, int], Tensor] = OrderedDict()
_ROW_CACHE_SIZE = 4


def cached_rows(key: tuple[str, str, int], documents: Sequence[Any], tokenizer, context_length: int) -> Int[Tensor, "rows ctx"]:
    """:func:`pack_documents`, memoised in this process by ``key`` = (tokenizer hash, subset hash, context length).

    Training several zoo models on one corpus in one process (a quickstart study) then tokenizes it
    once. The returned tensor is shared: callers must not modify it.
    """
    hit = _ROW_CACHE.get(key)
    if hit is None:
        hit = pack_documents(documents, tokenizer, context_length)
        _ROW_CACHE[key] = hit
        while len(_ROW_CACHE) > _ROW_CACHE_SIZE:
            _ROW_CACHE.popitem(last=False)
    else:
        _ROW_CACHE.move_to_end(key)
    return hit


def pack_texts(texts: Sequence[str], tokenizer, context_length: int, *, what: str = "text") -> Int[Tensor, "rows ctx"]:
    """Rows of a few texts (injected or probe text); texts too short for one row are repeated to fill it."""
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"the {what} is empty", "pass non-empty texts")
    n_tokens = sum(len(e.ids) + 1 for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False))
    repeats = max(1, math.ceil((context_length + 1) / max(1, n_tokens)))
    docs = [Document(f"{what}/{i}", t) for i, t in enumerate(texts * repeats)]
    return pack_documents(docs, tokenizer, context_length, what=what)


def split_eval_rows(rows: Int[Tensor, "rows ctx"], n_eval: int) -> tuple[Int[Tensor, "train ctx"], Int[Tensor, "eval ctx"]]:
    """Hold out ``n_eval`` rows (chosen by a fixed permutation) for evaluation; the rest train.

    At least one row always stays for training; when the corpus is that small fewer rows are held out.
    """
    n_eval = min(n_eval, rows.shape[0] - 1)
    if n_eval <= 0:
        return rows, rows[:0]
    gen = torch.Generator().manual_seed(EVAL_SPLIT_SEED)
    perm = torch.randperm(rows.shape[0], generator=gen)
    eval_idx, _ = perm[:n_eval].sort()
    train_idx, _ = perm[n_eval:].sort()
    return rows[train_idx], rows[eval_idx]
