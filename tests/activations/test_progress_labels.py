"""Progress labels name the model and its revision: the harvest bar and the eval-span bar."""

from __future__ import annotations

import pytest
from tqdm import tqdm as std_tqdm

import universality.progress as progress_mod
from universality.activations import harvest, harvest_label, span_activations
from universality.data import PackingConfig, make_eval_spans, tokenize_spans
from universality.progress import model_label

from activation_helpers import SITES


@pytest.fixture(scope="module")
def pythia_like(tmp_path_factory):
    """A tiny checkpoint series opened at revision step128 (the folder names the model)."""
    import models
    from models.testing import make_checkpoint_series

    root = make_checkpoint_series("gpt2", tmp_path_factory.mktemp("zoo") / "pythia-like", [128])
    return models.load(str(root), revision="step128")


@pytest.fixture
def bars(monkeypatch):
    """Every bar made through universality.progress, recorded (description and disable), none drawn."""
    made = []

    class Recording(std_tqdm):
        def __init__(self, *args, **kwargs):
            made.append({"desc": kwargs.get("desc"), "disable": kwargs.get("disable", False)})
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(progress_mod, "tqdm", Recording)
    return made


def test_harvest_bar_names_model_and_revision(pythia_like, poems, tmp_path, bars):
    assert pythia_like.revision == "step128"
    assert harvest_label(pythia_like) == "harvest pythia-like@step128"
    harvest(pythia_like, poems, SITES, tmp_path / "s", packing=PackingConfig(context_len=32), batch_size=8,
            max_tokens=200)
    assert {"desc": "harvest pythia-like@step128", "disable": False} in bars
    bars.clear()
    harvest(pythia_like, poems, SITES, tmp_path / "quiet", packing=PackingConfig(context_len=32), batch_size=8,
            max_tokens=64, progress=False)
    assert [b for b in bars if b["desc"].startswith("harvest")] == [{"desc": "harvest pythia-like@step128",
                                                                    "disable": True}]


def test_span_bar_names_revision_and_is_off_for_short_work(pythia_like, poems, bars):
    spans = make_eval_spans(list(poems)[:4], n_spans=4, span_chars=80, seed=0)
    tokens = tokenize_spans(spans, pythia_like.tokenizer, max_len=32)
    span_activations(pythia_like, tokens, SITES)
    (bar,) = bars
    assert bar == {"desc": "spans pythia-like@step128", "disable": True}  # 4 spans: short work, no bar


def test_model_label():
    assert model_label("/some/where/pythia-like", "step128") == "pythia-like@step128"
    assert model_label("EleutherAI/pythia-70m", "step1000") == "EleutherAI/pythia-70m@step1000"
    assert model_label("gpt2", None) == "gpt2" and model_label(None) == "model"
