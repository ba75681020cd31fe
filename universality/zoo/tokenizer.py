"""The one tokenizer a zoo shares: train it once, hash it, and load it from a folder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from models.tokenizer import train_byte_level_bpe
from universality.errors import ArtifactError, ConfigError
from universality.io import stable_hash

__all__ = ["train_tokenizer", "load_tokenizer", "tokenizer_hash", "eos_id"]


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike):
    """Train the shared byte-level BPE on ``texts`` and save it to ``out_dir``.

    A thin wrapper over :func:`models.tokenizer.train_byte_level_bpe` (GPT-2's recipe, one special
    token ``<|endoftext|>``); returns the loaded ``PreTrainedTokenizerFast``. Pass the result (or
    ``out_dir``) as ``tokenizer=`` to every :func:`~universality.zoo.train_lm` call of a zoo so all
    its models share one vocabulary.
    """
    return train_byte_level_bpe(texts, vocab_size, out_dir)


def load_tokenizer(tokenizer: Any):
    """A tokenizer object, or one loaded from a folder path (offline, no remote code)."""
    if tokenizer is None or hasattr(tokenizer, "backend_tokenizer"):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        if not (path / "tokenizer.json").is_file():
            raise ArtifactError(f"{path} holds no tokenizer.json", "pass a folder written by train_tokenizer or a tokenizer object")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    raise ConfigError(f"tokenizer must be a fast HF tokenizer or a folder path, got {type(tokenizer).__name__}", "use train_tokenizer(...)")


def tokenizer_hash(tokenizer: Any) -> str:
    """Stable hash of the tokenizer's full serialisation (vocabulary, merges, normaliser, special tokens)."""
    return stable_hash(json.loads(tokenizer.backend_tokenizer.to_str()))


def eos_id(tokenizer: Any) -> int:
    """The id of the document separator (``<|endoftext|>``)."""
    ident = tokenizer.eos_token_id
    if ident is None:
        raise ConfigError("the tokenizer has no eos token", "use a tokenizer from universality.zoo.train_tokenizer")
    return int(ident)
