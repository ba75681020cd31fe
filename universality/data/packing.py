"""Tokenise documents with the model's own tokenizer and pack them into fixed-length contexts.

Every token keeps the index of its document and its character span ``[char_start, char_end)`` in
that document's text (from the fast tokenizer's offsets mapping). BOS handling is a config choice
(:class:`PackingConfig`):

- ``doc_separator=True``: a BOS token is inserted before every document, so a document boundary
  inside a context is marked the way the model was trained (GPT-2, Pythia and Mamba use
  ``<|endoftext|>``, which is BOS and EOS at once).
- ``bos_every_context=True``: every context starts with BOS. A context whose first stream token is
  a document-separator BOS uses it; otherwise a context BOS is prepended and the context holds
  ``context_len - 1`` text tokens (the text continues from where the previous context stopped,
  nothing is dropped). With ``False`` contexts are plain consecutive slices of the token stream.
- The last, partial context is padded (``attention_mask`` 0) unless ``drop_last=True``.

Token kinds: ``TEXT`` (0), ``BOS`` (1, separator or context BOS; ``doc_index`` -1, span (0, 0)),
``PAD`` (2). BOS and PAD rows are what harvesting leaves out by default.

Packing is deterministic: the same documents, tokenizer and config give the same contexts, so a
harvest resumes by skipping the contexts it has already written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from universality.data.sources import Document
from universality.errors import ConfigError, DataError

__all__ = ["PackingConfig", "PackedBatch", "Packer", "pack", "TEXT", "BOS", "PAD", "bos_id_of"]

TEXT, BOS, PAD = 0, 1, 2


@dataclass(frozen=True)
class PackingConfig:
    """How documents become contexts (see the module docstring for the BOS rules)."""

    context_len: int = 128
    doc_separator: bool = True
    bos_every_context: bool = True
    drop_last: bool = False
    max_doc_tokens: int | None = None
    tokenize_batch: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.context_len, int) or self.context_len < 2:
            raise ConfigError(f"context_len must be an integer >= 2, got {self.context_len!r}", "pass e.g. 128")
        if self.max_doc_tokens is not None and (not isinstance(self.max_doc_tokens, int) or self.max_doc_tokens < 1):
            raise ConfigError(f"max_doc_tokens must be a positive integer or None, got {self.max_doc_tokens!r}", "fix it")
        if not isinstance(self.tokenize_batch, int) or self.tokenize_batch < 1:
            raise ConfigError(f"tokenize_batch must be a positive integer, got {self.tokenize_batch!r}", "pass e.g. 64")


@dataclass(frozen=True)
class PackedBatch:
    """A batch of contexts with per-token provenance."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    doc_index: Int[Tensor, "batch pos"]  # index into Packer.doc_ids, -1 for BOS/PAD
    char_start: Int[Tensor, "batch pos"]
    char_end: Int[Tensor, "batch pos"]
    kind: Int[Tensor, "batch pos"]  # TEXT / BOS / PAD
    context_index: Int[Tensor, " batch"]  # running number of the context in the packed stream

    @property
    def text_mask(self) -> Bool[Tensor, "batch pos"]:
        return self.kind == TEXT

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def bos_id_of(tokenizer) -> int:
    """BOS id of a tokenizer, falling back to EOS (GPT-2 style ``<|endoftext|>``)."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ConfigError(
        "the tokenizer has neither a BOS nor an EOS token",
        "use PackingConfig(doc_separator=False, bos_every_context=False) or set tokenizer.bos_token",
    )


class Packer:
    """Packs documents into contexts; ``doc_ids[i]`` is the id of the document with index ``i``."""

    def __init__(self, tokenizer, cfg: PackingConfig = PackingConfig()) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"{type(tokenizer).__name__} is not a fast tokenizer (no offsets mapping)",
                "load the model's fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))",
            )
        self.tokenizer, self.cfg = tokenizer, cfg
        need_bos = cfg.doc_separator or cfg.bos_every_context
        self.bos_id = bos_id_of(tokenizer) if need_bos else None
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else (self.bos_id if self.bos_id is not None else 0)
        self.doc_ids: list[str] = []
        self.n_text_tokens = 0

    def tokenize(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(ids (n,), offsets (n, 2))]`` for each text, without special tokens."""
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
        out = []
        for ids, offs in zip(enc["input_ids"], enc["offset_mapping"]):
            ids_a = np.asarray(ids, dtype=np.int64)
            offs_a = np.asarray(offs, dtype=np.int64).reshape(-1, 2)
            if self.cfg.max_doc_tokens is not None:
                ids_a, offs_a = ids_a[: self.cfg.max_doc_tokens], offs_a[: self.cfg.max_doc_tokens]
            out.append((ids_a, offs_a))
        return out

    def _doc_arrays(self, doc_index: int, ids: np.ndarray, offs: np.ndarray) -> np.ndarray:
        """Rows ``(token id, doc index, char start, char end, kind)`` of one document."""
        n = len(ids)
        rows = np.empty((n, 5), dtype=np.int64)
        rows[:, 0], rows[:, 1], rows[:, 2:4], rows[:, 4] = ids, doc_index, offs, TEXT
        if self.cfg.doc_separator:
            rows = np.concatenate([np.array([[self.bos_id, -1, 0, 0, BOS]], dtype=np.int64), rows])
        return rows

    def _documents(self, docs: Iterable[Document]) -> Iterator[tuple[int, np.ndarray]]:
        batch: list[Document] = []

        def flush():
            for doc, (ids, offs) in zip(batch, self.tokenize([d.text for d in batch])):
                self.doc_ids.append(doc.id)
                self.n_text_tokens += len(ids)
                yield len(self.doc_ids) - 1, self._doc_arrays(len(self.doc_ids) - 1, ids, offs)

        for doc in docs:
            if not isinstance(doc, Document):
                raise DataError(f"expected Document, got {type(doc).__name__}", "wrap texts with TextsSource")
            batch.append(doc)
            if len(batch) == self.cfg.tokenize_batch:
                yield from flush()
                batch = []
        if batch:
            yield from flush()

    def contexts(self, docs: Iterable[Document]) -> Iterator[np.ndarray]:
        """Yield contexts as ``(context_len, 5)`` int64 arrays (id, doc, start, end, kind)."""
        L, every = self.cfg.context_len, self.cfg.bos_every_context
        bos_row = np.array([[self.bos_id if self.bos_id is not None else 0, -1, 0, 0, BOS]], dtype=np.int64)
        tail = np.empty((0, 5), dtype=np.int64)
        for _, rows in self._documents(docs):
            buf = np.concatenate([tail, rows]) if len(tail) else rows
            start = 0
            while True:
                head_is_bos = start < len(buf) and buf[start, 4] == BOS
                need = L if (not every or head_is_bos) else L - 1
                if len(buf) - start < need:
                    break
                chunk = buf[start : start + need]
                yield chunk if need == L else np.concatenate([bos_row, chunk])
                start += need
            tail = buf[start:]
        if len(tail) and (tail[:, 4] == TEXT).any() and not self.cfg.drop_last:
            if every and tail[0, 4] != BOS:
                tail = np.concatenate([bos_row, tail])
            pad = np.tile(np.array([[self.pad_id, -1, 0, 0, PAD]], dtype=np.int64), (L - len(tail), 1))
            yield np.concatenate([tail, pad])

    def batches(self, docs: Iterable[Document], batch_size: int, start_context: int = 0) -> Iterator[PackedBatch]:
        """Group contexts into :class:`PackedBatch` es, skipping the first ``start_context`` contexts."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", "pass e.g. 8")
        pending: list[np.ndarray] = []
        first = start_context
        for index, ctx in enumerate(self.contexts(docs)):
            if index < start_context:
                continue
            pending.append(ctx)
            if len(pending) == batch_size:
                yield _to_batch(pending, first)
                first += len(pending)
                pending = []
        if pending:
            yield _to_batch(pending, first)


def _to_batch(contexts: list[np.ndarray], first: int) -> PackedBatch:
    arr = torch.from_numpy(np.stack(contexts))  # (batch, pos, 5)
    kind = arr[..., 4].contiguous()
    return PackedBatch(
        input_ids=arr[..., 0].contiguous(),
        attention_mask=(kind != PAD).long(),
        doc_index=arr[..., 1].contiguous(),
        char_start=arr[..., 2].contiguous(),
        char_end=arr[..., 3].contiguous(),
        kind=kind,
        context_index=torch.arange(first, first + len(contexts), dtype=torch.int64),
    )


def pack(docs: Iterable[Document], tokenizer, cfg: PackingConfig = PackingConfig()) -> tuple[PackedBatch, list[str]]:
    """Pack every document at once; returns the batch of all contexts and the document id table."""
    packer = Packer(tokenizer, cfg)
    contexts = list(packer.contexts(docs))
    if not contexts:
        raise DataError("no tokens to pack (no documents, or all empty)", "pass non-empty documents")
    return _to_batch(contexts, 0), packer.doc_ids
