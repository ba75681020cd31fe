"""Session-scoped tiny random models of every family, saved once to local folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.testing import make_checkpoint_series, make_hub_cache, make_tiny_model

SERIES_STEPS = (0, 1000, 2000)


class TinyModels:
    """Builds each family's tiny model folder on first use and caches the path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._paths: dict[str, Path] = {}

    def __getitem__(self, key: str) -> Path:
        if key not in self._paths:
            family, _, variant = key.partition(":")
            overrides = {"use_parallel_residual": False} if variant == "sequential" else {}
            self._paths[key] = make_tiny_model(family, self.root / key.replace(":", "-"), seed=1, **overrides)
        return self._paths[key]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def neox_series(tmp_path_factory) -> Path:
    """A Pythia-style folder of checkpoint folders: <root>/step0, step1000, step2000."""
    return make_checkpoint_series("gpt_neox", tmp_path_factory.mktemp("series") / "pythia-tiny", SERIES_STEPS)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory, neox_series) -> Path:
    """An offline HF hub cache holding EleutherAI/pythia-14m at revisions step0 and step1000."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    make_hub_cache(cache, "EleutherAI/pythia-14m", {"step0": neox_series / "step0", "step1000": neox_series / "step1000"})
    return cache


@pytest.fixture()
def use_hub_cache(hub_cache, monkeypatch) -> Path:
    """Point huggingface_hub at the offline cache for one test."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    return hub_cache


