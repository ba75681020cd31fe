"""The byte-level BPE tokenizer trainer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from models.testing import tiny_corpus
from models.tokenizer import SPECIAL_TOKEN, train_byte_level_bpe
from universality.errors import ConfigError, DataError


def test_train_save_and_reload_offline(tmp_path):
    tok = train_byte_level_bpe(tiny_corpus(), 300, tmp_path / "tok")
    assert len(tok) <= 300 and len(tok) > 257  # bytes + special + some merges
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for t in (tok, again):
        assert t.bos_token == t.eos_token == t.pad_token == SPECIAL_TOKEN
    text = "Sparse autoencoders, ünïcödé and emoji 🙂 round-trip."
    ids = again(text)["input_ids"]
    assert ids == tok(text)["input_ids"]
    assert again.decode(ids) == text  # byte-level: every string round-trips
    merged = again("the residual stream")["input_ids"]
    assert len(merged) < len("the residual stream")  # merges were learned


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError):
        train_byte_level_bpe(["abc"], 100, tmp_path)
    with pytest.raises(DataError):
        train_byte_level_bpe(["", ""], 300, tmp_path)
