"""One intra-op thread for these tiny models (on a shared 2-core machine, two threads are far slower),
and the tiny GPT-2 the splice, transfer and ablation tests read (one per test module)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (``one_thread`` in tests/conftest.py)."""


def _models():
    """The top-level ``models`` package; a ``tests/models`` folder on sys.path can shadow it as a
    namespace package when pytest runs without the repository root on sys.path."""
    mod = sys.modules.get("models")
    if mod is None or not hasattr(mod, "load"):
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        mod = importlib.import_module("models")
    return mod


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    models = _models()
    from models.testing import make_tiny_model

    return models.load(make_tiny_model("gpt2", tmp_path_factory.mktemp("tiny_gpt2")))
