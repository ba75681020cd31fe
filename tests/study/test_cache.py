"""The stage cache reuses a stage built from the same key and never keeps a half-built stage."""

import pytest

from universality.study.cache import StageCache


def test_hit_miss_and_crash(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("x")

    a = cache.run("harvest", {"model": "m", "tokens": 10}, build)
    b = cache.run("harvest", {"tokens": 10, "model": "m"}, build)
    c = cache.run("harvest", {"model": "m", "tokens": 11}, build)
    assert (a.hit, b.hit, c.hit) == (False, True, False)
    assert a.path == b.path != c.path and len(calls) == 2
    assert (a.path / "out.txt").read_text() == "x"
    assert cache.hits == [] and len(cache.misses) == 2  # built here: asked again, still one miss
    fresh = StageCache(tmp_path)
    again = fresh.run("harvest", {"model": "m", "tokens": 10}, build)
    assert again.hit and fresh.hits == [a.path.name] and fresh.misses == [] and len(calls) == 2

    def crash(folder):
        (folder / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run("train", {"k": 1}, crash)
    assert not cache.path_for("train", {"k": 1}).exists()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []
