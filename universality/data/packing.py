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

**Long documents** (more than ``Packer.chunk_chars`` characters) are tokenised in chunks of about
that many characters, lazily, as contexts are consumed, and only until ``max_doc_tokens`` tokens are
reached: a 5 MB document with a 2,000-token budget reads a few tens of kilobytes, not 5 MB. A chunk
ends just before a space that follows a non-space character, and only where tokenising the two sides
separately gives the same tokens as tokenising across the cut (checked on a window around it); a
tokenizer that changes tokens at every cut (one that prepends to each input) gets the document whole,
as does a document with no such space. The tokens, offsets and contexts are those of tokenising each
document whole. ``chunk_chars`` defaults to 8 characters per token of budget (at least 4,096, at
most 65,536).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from universality.data.sources import Document, check_unicode
from universality.errors import ConfigError, DataError

__all__ = ["PackingConfig", "PackedBatch", "Packer", "pack", "to_batch", "TEXT", "BOS", "PAD", "bos_id_of"]

TEXT, BOS, PAD = 0, 1, 2

_CHARS_PER_BUDGET_TOKEN = 8  # chunk characters per token of max_doc_tokens: about twice what English BPE needs
_MIN_CHUNK_CHARS = 4096
_MAX_CHUNK_CHARS = 1 << 16
_CUT_WINDOW = 256  # characters each side of a cut that are re-tokenised to check it
_CUT_TRIES = 8  # candidate cuts checked on each side of the chunk end before tokenising the rest whole


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


def default_chunk_chars(cfg: PackingConfig) -> int:
    """Characters per tokenizer call for long documents (see the module docstring)."""
    if cfg.max_doc_tokens is None:
        return _MAX_CHUNK_CHARS
    return min(_MAX_CHUNK_CHARS, max(_MIN_CHUNK_CHARS, _CHARS_PER_BUDGET_TOKEN * cfg.max_doc_tokens))


def _candidate_cuts(text: str, lo: int, hi: int) -> Iterator[int]:
    """Positions in ``(lo, hi + (hi - lo))`` of a space after a non-space: the nearest at or before
    ``hi`` first (going back), then those after it; ``_CUT_TRIES`` each way at most."""
    found, i = 0, hi + 1
    while found < _CUT_TRIES and (i := text.rfind(" ", lo + 1, i)) > lo:
        if not text[i - 1].isspace():
            found += 1
            yield i
    found, i, end = 0, hi, min(len(text), 2 * hi - lo)
    while found < _CUT_TRIES and (i := text.find(" ", i + 1, end)) != -1:
        if not text[i - 1].isspace():
            found += 1
            yield i


class Packer:
    """Packs documents into contexts; ``doc_ids[i]`` is the id of the document with index ``i``.

    ``chunk_chars``: documents longer than this are tokenised in chunks of about this many
    characters (default :func:`default_chunk_chars`); the result does not depend on it.
    """

    def __init__(self, tokenizer, cfg: PackingConfig = PackingConfig(), chunk_chars: int | None = None) -> None:
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
        self.chunk_chars = default_chunk_chars(cfg) if chunk_chars is None else chunk_chars
        if not isinstance(self.chunk_chars, int) or self.chunk_chars < 1:
            raise ConfigError(f"chunk_chars must be a positive integer, got {chunk_chars!r}",
                              "pass e.g. 65536, or leave it unset")

    # ------------------------------------------------------------------ tokenizer calls
    def _encode(self, texts: list[str], labels: list[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(ids, offsets)]`` of ``texts``; on a tokenizer failure, a :class:`DataError` naming the
        text (``labels``: ``(what, full text)``) that is not valid Unicode, if one is."""
        if not texts:
            return []
        try:
            enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
        except Exception:
            for what, full in labels:
                check_unicode(full, what)
            raise
        return [(np.asarray(ids, dtype=np.int64), np.asarray(offs, dtype=np.int64).reshape(-1, 2))
                for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]

    def tokenize(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(ids (n,), offsets (n, 2))]`` for each text, without special tokens."""
        out = self._encode(texts, [(f"text {i}", t) for i, t in enumerate(texts)])
        cap = self.cfg.max_doc_tokens
        return out if cap is None else [(ids[:cap], offs[:cap]) for ids, offs in out]

    def _ids(self, text: str, label: tuple[str, str]) -> list[int]:
        return self._encode([text], [label])[0][0].tolist()

    def _clean_cut(self, text: str, lo: int, i: int, label: tuple[str, str]) -> bool:
        """Whether tokenising ``text[..i]`` and ``text[i..]`` apart gives the tokens of tokenising across ``i``."""
        a, b = max(lo, i - _CUT_WINDOW), min(len(text), i + _CUT_WINDOW)
        return self._ids(text[a:i], label) + self._ids(text[i:b], label) == self._ids(text[a:b], label)

    def _cut(self, text: str, lo: int, label: tuple[str, str]) -> int:
        """End of the chunk that starts at ``lo``: a clean cut near ``lo + chunk_chars``, else ``len(text)``."""
        if len(text) - lo <= self.chunk_chars:
            return len(text)
        for i in _candidate_cuts(text, lo, lo + self.chunk_chars):
            if self._clean_cut(text, lo, i, label):
                return i
        return len(text)

    def _chunked(self, doc: Document) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The tokens of a long document, chunk by chunk, until ``max_doc_tokens`` (when set)."""
        text, budget, label = doc.text, self.cfg.max_doc_tokens, (f"document {doc.id!r}", doc.text)
        start = got = 0
        while start < len(text) and (budget is None or got < budget):
            end = self._cut(text, start, label)
            ids, offs = self._encode([text[start:end]], [label])[0]
            if budget is not None:
                ids, offs = ids[: budget - got], offs[: budget - got]
            got += len(ids)
            yield ids, offs + start
            start = end

    # ------------------------------------------------------------------ documents -> rows
    def _doc_arrays(self, doc_index: int, ids: np.ndarray, offs: np.ndarray, first: bool = True) -> np.ndarray:
        """Rows ``(token id, doc index, char start, char end, kind)`` of one document (or of one more
        chunk of it, ``first=False``: no separator)."""
        n = len(ids)
        rows = np.empty((n, 5), dtype=np.int64)
        rows[:, 0], rows[:, 1], rows[:, 2:4], rows[:, 4] = ids, doc_index, offs, TEXT
        if self.cfg.doc_separator and first:
            rows = np.concatenate([np.array([[self.bos_id, -1, 0, 0, BOS]], dtype=np.int64), rows])
        return rows

    def _flush(self, batch: list[Document]) -> Iterator[tuple[int, np.ndarray]]:
        """Rows of a batch of documents: the short ones tokenised in one call, the long ones by chunks."""
        short = [d for d in batch if len(d.text) <= self.chunk_chars]
        cap = self.cfg.max_doc_tokens
        encoded = iter(self._encode([d.text for d in short], [(f"document {d.id!r}", d.text) for d in short]))
        for doc in batch:
            self.doc_ids.append(doc.id)
            index = len(self.doc_ids) - 1
            pieces = self._chunked(doc) if len(doc.text) > self.chunk_chars else [next(encoded)]
            for k, (ids, offs) in enumerate(pieces):
                if cap is not None:
                    ids, offs = ids[:cap], offs[:cap]
                self.n_text_tokens += len(ids)
                yield index, self._doc_arrays(index, ids, offs, first=k == 0)

    def _documents(self, docs: Iterable[Document]) -> Iterator[tuple[int, np.ndarray]]:
        batch: list[Document] = []
        for doc in docs:
            if not isinstance(doc, Document):
                raise DataError(f"expected Document, got {type(doc).__name__}", "wrap texts with TextsSource")
            batch.append(doc)
            if len(batch) == self.cfg.tokenize_batch:
                yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)

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
                yield to_batch(pending, first)
                first += len(pending)
                pending = []
        if pending:
            yield to_batch(pending, first)


def to_batch(contexts: list[np.ndarray], first: int) -> PackedBatch:
    """Stack packed contexts (``(pos, 5)`` arrays from :meth:`Packer.contexts`) into a
    :class:`PackedBatch`; ``first`` is the context index of the first one."""
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
    return to_batch(contexts, 0), packer.doc_ids
