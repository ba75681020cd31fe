"""The tiny-model helpers: deterministic weights, series layout, hub-cache layout, bad input."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from models.testing import make_checkpoint_series, make_hub_cache, make_tiny_model
from universality.errors import ConfigError


def test_same_seed_same_weights_and_overrides(tmp_path):
    a = make_tiny_model("gpt2", tmp_path / "a", seed=3, n_layer=3)
    b = make_tiny_model("gpt2", tmp_path / "b", seed=3, n_layer=3)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert any(k.startswith("transformer.h.2.") for k in wa)
    assert (a / "tokenizer.json").is_file() and (a / "config.json").is_file()


def test_series_and_hub_layout(tmp_path):
    root = make_checkpoint_series("mamba", tmp_path / "s", [0, 10])
    assert sorted(p.name for p in root.iterdir()) == ["step0", "step10"]
    repo = make_hub_cache(tmp_path / "hub", "org/name", {"step10": root / "step10"})
    commit = (repo / "refs" / "step10").read_text()
    assert repo.name == "models--org--name" and (repo / "snapshots" / commit / "config.json").is_file()


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="no tiny config for family 'bert'"):
        make_tiny_model("bert", tmp_path / "x")
    with pytest.raises(ConfigError):
        make_checkpoint_series("gpt2", tmp_path / "y", [])
    with pytest.raises(ConfigError):
        make_checkpoint_series("gpt2", tmp_path / "y", [-1])
