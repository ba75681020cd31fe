"""Fixtures for the zoo tests: a small slice of the shipped corpus, one shared tokenizer, tiny configs."""

from __future__ import annotations

import pytest

from universality.zoo import ZooModelConfig, from_dict

TINY_FAMILIES = {
    "gpt2": {},
    "gpt_neox": {},
    "mamba": {"d_state": 8},
    "olmoe": {"n_experts": 4, "k": 2},
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="session")
def corpus():
    """The first 12 documents (scenes) of the shipped Shakespeare corpus, about 70k characters."""
    from universality.data import shakespeare

    return list(shakespeare(limit=12))


@pytest.fixture(scope="session")
def tokenizer(corpus, tmp_path_factory):
    from universality.zoo import train_tokenizer

    return train_tokenizer([d.text for d in corpus], 384, tmp_path_factory.mktemp("zoo_tok"))


def _tiny_cfg(family: str = "gpt2", **overrides) -> ZooModelConfig:
    """d_model 32, 2 layers, context 32, 24 steps of 8 rows; checkpoints 0, 1, 2, 4, 8, 16, 24."""
    base = dict(
        family=family, d_model=32, n_layers=2, n_heads=2, context_length=32, steps=24, batch_size=8,
        warmup_steps=4, lr=1e-2, checkpoint_every=8, eval_contexts=8, vocab_size=384,
    )
    base.update(TINY_FAMILIES[family])
    base.update(overrides)
    return from_dict(base)


@pytest.fixture(scope="session")
def tiny_cfg():
    """``tiny_cfg(family, **overrides)`` -> a tiny :class:`ZooModelConfig` (see ``_tiny_cfg``)."""
    return _tiny_cfg
