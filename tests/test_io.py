"""Atomic artifact I/O: nothing half-written is ever visible; corrupt files give clear errors."""

import os
import sys

import pytest
import torch

from universality.errors import ArtifactError
from universality.io import atomic_dir, load_tensors, read_json, save_tensors, sha256_file, stable_hash, write_json


def test_json_round_trip_and_no_temp_left(tmp_path):
    p = write_json(tmp_path / "a" / "cfg.json", {"b": 1, "a": [1.5, None], "dtype": torch.float32})
    assert read_json(p) == {"a": [1.5, None], "b": 1, "dtype": "float32"}
    assert sorted(os.listdir(p.parent)) == ["cfg.json"]


def test_tensor_round_trip(tmp_path):
    t = {"W": torch.randn(3, 4), "i": torch.arange(5)}
    p = save_tensors(tmp_path / "w.safetensors", t, metadata={"k": "v"})
    back = load_tensors(p)
    assert torch.equal(back["W"], t["W"]) and torch.equal(back["i"], t["i"])


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    p = save_tensors(tmp_path / "w.safetensors", {"W": torch.randn(64, 64)})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_tensors(p)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_tensors(tmp_path / "missing.safetensors")


def test_corrupt_json_is_a_clear_error(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text('{"a": 1')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_json(p)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    p = write_json(tmp_path / "cfg.json", {"v": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_json(p, {"v": 2})
    monkeypatch.undo()
    assert read_json(p) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["cfg.json"]


def test_atomic_dir_replaces_whole_or_nothing(tmp_path):
    target = tmp_path / "sae"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "one"
    assert sorted(os.listdir(tmp_path)) == ["sae"]
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["b.txt"]
    with pytest.raises(ArtifactError, match="already exists"):
        with atomic_dir(target, overwrite=False):
            pass


def test_hashes_are_stable(tmp_path):
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_atomic_dir_swaps_in_one_step(tmp_path, monkeypatch):
    """Replacing an existing folder never passes through a moment without it (renameat2 exchange)."""
    from universality import io as uio

    target = tmp_path / "sae"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    seen = []
    real_replace = os.replace

    def watching_replace(a, b):
        seen.append(target.exists())
        return real_replace(a, b)

    monkeypatch.setattr(uio.os, "replace", watching_replace)
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    assert uio._exchange.__name__ == "_exchange"
    if sys.platform.startswith("linux"):
        assert seen == [], "a Linux swap must not fall back to two renames"


def test_replace_marked_block_rewrites_between_markers_or_appends(tmp_path):
    from universality.io import replace_marked_block

    doc = tmp_path / "doc.md"
    replace_marked_block(doc, "t", "A")  # no file yet: the block is appended with both markers
    assert doc.read_text() == "\n<!-- t:start -->\nA\n<!-- t:end -->\n"
    doc.write_text("head\n<!-- t:start -->\nold\n<!-- t:end -->\ntail\n")
    replace_marked_block(doc, "t", "NEW")  # the text around the markers stays
    assert doc.read_text() == "head\n<!-- t:start -->\nNEW\n<!-- t:end -->\ntail\n"
