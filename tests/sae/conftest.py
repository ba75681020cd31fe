"""One intra-op thread for these tiny models: on a shared 2-core machine, two threads are far slower."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (``one_thread`` in tests/conftest.py)."""
