"""Tiny local models and a small slice of the shipped corpus for the activation tests."""

from __future__ import annotations

import pytest

from activation_helpers import SITES

from universality.data import MetaEquals, select_subset, shakespeare


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    import models
    from models.testing import make_tiny_model

    return models.load(str(make_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2"))))


@pytest.fixture(scope="session")
def poems():
    """The 13 Passionate Pilgrim poems plus a few sonnets: short, fast to harvest."""
    docs = select_subset(shakespeare(), MetaEquals("work", ("passionate_pilgrim", "phoenix_and_the_turtle")), name="shakespeare")
    return docs


@pytest.fixture(scope="session")
def small_store(tiny_gpt2, poems, tmp_path_factory):
    """A store of ~5k rows in ~12 shards (both tested sites)."""
    from universality.activations import harvest
    from universality.data import PackingConfig

    out = tmp_path_factory.mktemp("store")
    return harvest(tiny_gpt2, poems, SITES, out, packing=PackingConfig(context_len=32), batch_size=4,
                   shard_rows=400, progress=False)
