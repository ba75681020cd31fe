"""Text sources, subsets, tokenisation/packing, shared evaluation spans and cross-tokenizer alignment.

See ``docs/api_data.md`` for the public API. Nothing here touches a model: packing and alignment take
a Hugging Face fast tokenizer.
"""

from __future__ import annotations

from universality.data.alignment import Alignment, MultiAlignment, align_many, align_tokens
from universality.data.eval_tokens import EvalSpans, SpanTokens, align_span_tokens, make_eval_spans, tokenize_spans
from universality.data.packing import BOS, PAD, TEXT, PackedBatch, Packer, PackingConfig, pack
from universality.data.sources import (
    Document,
    HFDatasetSource,
    JsonlSource,
    Source,
    SourceConfig,
    TextFileSource,
    TextsSource,
    as_documents,
    corpus_path,
    open_source,
    shakespeare,
)
from universality.data.subsets import (
    AllOf,
    Complement,
    HashFraction,
    MetaEquals,
    Subset,
    SubsetSpec,
    TextRegex,
    hash_unit,
    select_subset,
    subset_definition,
)

__all__ = [
    "Alignment", "MultiAlignment", "align_many", "align_tokens",
    "EvalSpans", "SpanTokens", "align_span_tokens", "make_eval_spans", "tokenize_spans",
    "BOS", "PAD", "TEXT", "PackedBatch", "Packer", "PackingConfig", "pack",
    "Document", "HFDatasetSource", "JsonlSource", "Source", "SourceConfig", "TextFileSource", "TextsSource",
    "as_documents", "corpus_path", "open_source", "shakespeare",
    "AllOf", "Complement", "HashFraction", "MetaEquals", "Subset", "SubsetSpec", "TextRegex", "hash_unit",
    "select_subset", "subset_definition",
]
