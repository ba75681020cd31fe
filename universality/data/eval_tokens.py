"""Shared evaluation tokens: one fixed set of text spans used for every model in a study.

Activation-based matching compares two models on *the same text*. :func:`make_eval_spans` picks
``n_spans`` character spans from a document collection, deterministically from a seed:
documents are visited in the order of ``hash_unit(id, "eval-spans/<seed>")``, and each gives one
span that starts at a hash-chosen line start and ends at the last whitespace before
``span_chars`` characters. The spans (text, document id, character offset) are saved as JSON with
their hash, so every model in a study reads the identical file.

Each model tokenises each span on its own (:func:`tokenize_spans`; one span per row, optional BOS
in front, right padding). The text-token rows of two models are put on shared units with
:func:`align_span_tokens` (the rule is in :mod:`universality.data.alignment`). Text-token rows are
ordered span by span, token by token - the order of ``SpanTokens.text_mask`` read row-major.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from universality.data.alignment import Alignment, align_tokens
from universality.data.packing import BOS, PAD, TEXT, bos_id_of
from universality.data.sources import Document
from universality.data.subsets import hash_unit
from universality.errors import ArtifactError, ConfigError, DataError
from universality.io import read_json, stable_hash, write_json

__all__ = ["EvalSpans", "SpanTokens", "make_eval_spans", "tokenize_spans", "align_span_tokens"]


@dataclass(frozen=True)
class EvalSpans:
    """Fixed text spans: ``texts[i]`` is ``doc text[char_offsets[i] : char_offsets[i] + len]``."""

    texts: tuple[str, ...]
    doc_ids: tuple[str, ...]
    char_offsets: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.texts) == len(self.doc_ids) == len(self.char_offsets)):
            raise DataError("texts, doc_ids and char_offsets differ in length", "build spans with make_eval_spans")
        if not self.texts:
            raise DataError("no evaluation spans", "pick at least one span")

    @property
    def hash(self) -> str:
        return stable_hash({"texts": list(self.texts), "doc_ids": list(self.doc_ids), "offsets": list(self.char_offsets)})

    def __len__(self) -> int:
        return len(self.texts)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, {"format": "eval_spans/1", "hash": self.hash, "texts": list(self.texts),
                          "doc_ids": list(self.doc_ids), "char_offsets": list(self.char_offsets)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvalSpans":
        obj = read_json(path)
        if not isinstance(obj, dict) or obj.get("format") != "eval_spans/1":
            raise ArtifactError(f"{path} is not an eval-spans file", "write it with EvalSpans.save")
        spans = cls(tuple(obj["texts"]), tuple(obj["doc_ids"]), tuple(int(x) for x in obj["char_offsets"]))
        if spans.hash != obj.get("hash"):
            raise ArtifactError(f"{path} hash does not match its content", "the file was edited; re-create it")
        return spans


def make_eval_spans(docs: Iterable[Document], n_spans: int = 256, span_chars: int = 512, seed: int = 0) -> EvalSpans:
    """Pick ``n_spans`` spans of at most ``span_chars`` characters, one per document (see module doc)."""
    if not isinstance(n_spans, int) or n_spans < 1:
        raise ConfigError(f"n_spans must be a positive integer, got {n_spans!r}", "pass e.g. 256")
    if not isinstance(span_chars, int) or span_chars < 16:
        raise ConfigError(f"span_chars must be an integer >= 16, got {span_chars!r}", "pass e.g. 512")
    salt = f"eval-spans/{seed}"
    ordered = sorted(docs, key=lambda d: (hash_unit(d.id, salt), d.id))
    texts, ids, offsets = [], [], []
    for doc in ordered:
        text = doc.text
        if len(text.strip()) < 16:
            continue
        room = max(len(text) - span_chars, 0)
        start = int(hash_unit(doc.id, salt + "/start") * (room + 1))
        if start > 0:  # move to the next line start, if one is close
            nl = text.find("\n", start, start + span_chars // 2)
            start = nl + 1 if nl >= 0 else start
        end = min(start + span_chars, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            end = cut if cut > start + span_chars // 4 else end
        piece = text[start:end]
        if not piece.strip():
            continue
        texts.append(piece)
        ids.append(doc.id)
        offsets.append(start)
        if len(texts) == n_spans:
            break
    if not texts:
        raise DataError("no document is long enough for an evaluation span", "pass documents with text")
    return EvalSpans(tuple(texts), tuple(ids), tuple(offsets))


@dataclass(frozen=True)
class SpanTokens:
    """One tokenizer's view of the spans: a padded batch plus character spans of every token."""

    input_ids: Int[Tensor, "span pos"]
    attention_mask: Int[Tensor, "span pos"]
    kind: Int[Tensor, "span pos"]  # TEXT / BOS / PAD as in universality.data.packing
    char_spans: Int[Tensor, "span pos 2"]

    @property
    def text_mask(self) -> Bool[Tensor, "span pos"]:
        return self.kind == TEXT

    @property
    def n_text_tokens(self) -> int:
        return int(self.text_mask.sum())

    def text_token_spans(self) -> list[Tensor]:
        """Per span, the ``(n_i, 2)`` character spans of its text tokens."""
        return [self.char_spans[i][self.text_mask[i]] for i in range(self.input_ids.shape[0])]


def tokenize_spans(spans: EvalSpans, tokenizer, prepend_bos: bool = True, max_len: int | None = None) -> SpanTokens:
    """Tokenise each span on its own (no packing), BOS first when ``prepend_bos``; right padding."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer", "load the model's fast tokenizer")
    enc = tokenizer(list(spans.texts), add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    bos = bos_id_of(tokenizer) if prepend_bos else None
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = int(pad) if pad is not None else (bos if bos is not None else 0)
    rows = []
    for ids, offs in zip(enc["input_ids"], enc["offset_mapping"]):
        r = np.empty((len(ids), 4), dtype=np.int64)
        r[:, 0], r[:, 1:3], r[:, 3] = ids, np.asarray(offs, dtype=np.int64).reshape(-1, 2), TEXT
        if bos is not None:
            r = np.concatenate([np.array([[bos, 0, 0, BOS]], dtype=np.int64), r])
        if max_len is not None:
            r = r[:max_len]
        rows.append(r)
    width = max(len(r) for r in rows)
    out = np.tile(np.array([pad, 0, 0, PAD], dtype=np.int64), (len(rows), width, 1))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    t = torch.from_numpy(out)
    kind = t[..., 3].contiguous()
    return SpanTokens(t[..., 0].contiguous(), (kind != PAD).long(), kind, t[..., 1:3].contiguous())


def align_span_tokens(a: SpanTokens, b: SpanTokens) -> Alignment:
    """Align the text-token rows of two tokenizations of the same :class:`EvalSpans`."""
    if a.input_ids.shape[0] != b.input_ids.shape[0]:
        raise DataError(
            f"{a.input_ids.shape[0]} spans on side a but {b.input_ids.shape[0]} on side b",
            "tokenize the same EvalSpans for both models",
        )
    return align_tokens(a.text_token_spans(), b.text_token_spans())
