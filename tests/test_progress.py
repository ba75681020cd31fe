"""The one progress-bar rule (universality.progress): the flag, short work, then TQDM_DISABLE."""

from __future__ import annotations

import pytest

from universality.progress import MIN_WORK, bar_disabled, progress_bar


def test_rule():
    assert bar_disabled(progress=False)
    assert bar_disabled(work=MIN_WORK - 1) and not bar_disabled(work=MIN_WORK)
    assert not bar_disabled() and not bar_disabled(work=None)  # size unknown up front: a bar
    assert bar_disabled(work=10, min_work=11) and not bar_disabled(work=11, min_work=11)


def test_environment_decides_when_the_rule_allows_a_bar(monkeypatch):
    """An allowed bar passes no ``disable``, so tqdm's ``TQDM_DISABLE`` default (read when tqdm is
    imported; tests/conftest.py sets it) decides; a bar the rule turns off says ``disable=True``."""
    import universality.progress as mod

    seen = []
    monkeypatch.setattr(mod, "tqdm", lambda *a, **kw: seen.append(kw) or kw)
    progress_bar(range(3), "x", work=MIN_WORK, unit="row")
    progress_bar(range(3), "x", progress=False)
    progress_bar(range(3), "x", work=1)
    assert ["disable" in kw for kw in seen] == [False, True, True]
    assert seen[0]["desc"] == "x" and seen[0]["unit"] == "row" and seen[1]["disable"] is True


def test_disable_is_not_passed_through():
    with pytest.raises(TypeError, match="progress="):
        progress_bar(range(3), "x", disable=True)
