"""Shared fixtures for the data tests: the shipped corpus and two small tokenizers."""

from __future__ import annotations

import pytest

from universality.data import shakespeare


@pytest.fixture(scope="session")
def corpus_docs():
    return list(shakespeare())


@pytest.fixture(scope="session")
def tokenizers_pair(tmp_path_factory, corpus_docs):
    """Two byte-level BPE tokenizers with different vocabularies (so different cuts of the text)."""
    from models.tokenizer import train_byte_level_bpe

    texts = [d.text for d in corpus_docs[:40]]
    small = train_byte_level_bpe(texts, 300, tmp_path_factory.mktemp("tok300"))
    large = train_byte_level_bpe(texts, 800, tmp_path_factory.mktemp("tok800"))
    return small, large
