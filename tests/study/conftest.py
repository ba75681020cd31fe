"""Shared pieces of the study tests: the tiny study the crosscoder-arm tests build on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from universality.study.config import StudyConfig, register_configs, study_from_dict

register_configs()

_HARVEST = {"train_tokens": 2048, "context_length": 32, "batch_size": 16, "eval_spans": 24, "span_chars": 120,
            "max_doc_tokens": 128}


def tiny_study(out: Path, analyses: list[str], models: list[dict[str, Any]], sae_steps: int = 80,
               corpus: dict[str, Any] | None = None, **extra: Any) -> StudyConfig:
    """A study on 24 Shakespeare documents with a 300-token tokenizer, one site (``blocks.1.hook_resid_post``),
    2048 harvested tokens per cell and two TopK SAE seeds (k 4, expansion 2) of ``sae_steps`` steps."""
    return study_from_dict({
        "name": out.name, "out_dir": str(out), "analyses": analyses, "sites": ["blocks.1.hook_resid_post"],
        "tokenizer_vocab": 300, "corpus": {"max_docs": 24, **(corpus or {})}, "models": models, "harvest": _HARVEST,
        "sae": {"steps": sae_steps, "batch_size": 128, "expansion": 2, "seeds": [0, 1], "topk": {"k": 4}},
        "match": {"gw_max": 32, "n_perm": 2}, **extra})


@pytest.fixture
def tiny_study_cfg():
    """:func:`tiny_study`, for tests that build a tiny study."""
    return tiny_study
