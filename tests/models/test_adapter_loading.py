"""Loading: local folders, checkpoint series, the offline hub cache, and clear errors."""

from __future__ import annotations

import pytest
import torch

import models
from models.pythia import PYTHIA_REVISIONS, is_series_dir, local_revisions, step_of
from universality.errors import ConfigError, ModelLoadError


def _ids() -> torch.Tensor:
    return torch.arange(12).reshape(2, 6) + 3


def test_pythia_revision_names():
    assert len(PYTHIA_REVISIONS) == 154
    assert PYTHIA_REVISIONS[:12] == ("step0", "step1", "step2", "step4", "step8", "step16", "step32", "step64",
                                     "step128", "step256", "step512", "step1000")
    assert PYTHIA_REVISIONS[-1] == "step143000" and "step2000" in PYTHIA_REVISIONS and "step1500" not in PYTHIA_REVISIONS
    steps = [step_of(r) for r in PYTHIA_REVISIONS]
    assert steps == sorted(steps)
    assert step_of("main") is None and step_of("step12a") is None


def test_local_folder_loads_with_tokenizer(tiny):
    a = models.load(tiny["gpt2"], device="cpu")
    assert a.name == str(tiny["gpt2"]) and a.revision is None and a.checkpoints == ()
    assert a.tokenizer is not None and a.tokenizer.eos_token == "<|endoftext|>" and a.tokenizer.pad_token is not None
    ids = a.tokenizer("the quick brown fox", return_tensors="pt")["input_ids"]
    assert a.forward(ids).shape == (1, ids.shape[1], a.model.config.vocab_size)
    assert a.device == torch.device("cpu") and a.dtype == torch.float32


def test_checkpoint_series_folder(neox_series):
    assert is_series_dir(neox_series) and local_revisions(neox_series) == ("step0", "step1000", "step2000")
    latest = models.load(neox_series, device="cpu")
    assert latest.checkpoints == ("step0", "step1000", "step2000")
    assert latest.revision == "step2000" and latest.family == "gpt_neox"
    mid = latest.at_revision("step1000")
    assert mid.revision == "step1000" and mid.checkpoints == latest.checkpoints
    direct = models.load(neox_series / "step1000", device="cpu")
    torch.testing.assert_close(mid.forward(_ids()), direct.forward(_ids()), atol=0, rtol=0)
    assert (mid.forward(_ids()) - latest.forward(_ids())).abs().max() > 1e-3  # different weights
    assert mid.tokenizer is not None
    with pytest.raises(ModelLoadError, match="no revision 'step5'"):
        latest.at_revision("step5")
    with pytest.raises(ModelLoadError, match="step0"):
        models.load(neox_series, revision="step7", device="cpu")


def test_hub_revision_offline(use_hub_cache, neox_series):
    a = models.load("EleutherAI/pythia-14m", revision="step1000", device="cpu")
    assert a.name == "EleutherAI/pythia-14m" and a.revision == "step1000" and a.family == "gpt_neox"
    assert a.checkpoints == PYTHIA_REVISIONS
    local = models.load(neox_series / "step1000", device="cpu")
    torch.testing.assert_close(a.forward(_ids()), local.forward(_ids()), atol=0, rtol=0)
    b = a.at_revision("step0")
    assert b.revision == "step0"
    torch.testing.assert_close(b.forward(_ids()), models.load(neox_series / "step0", device="cpu").forward(_ids()))
    assert a.tokenizer is not None
    # A published revision that is not in the offline cache fails with one line.
    with pytest.raises(ModelLoadError) as err:
        a.at_revision("step2000")
    assert "\n" not in str(err.value) and "step2000" in str(err.value)


def test_unknown_names_revisions_backends(use_hub_cache, tmp_path, tiny):
    with pytest.raises(ModelLoadError, match="no published revision 'step3'") as err:
        models.load("EleutherAI/pythia-14m", revision="step3")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="cannot find model") as err:
        models.load("nobody/no-such-model")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="no model folder"):
        models.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        models.load(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="single-model folder"):
        models.load(tiny["gpt2"], revision="step1")
    with pytest.raises(ModelLoadError, match="unknown backend"):
        models.load(tiny["gpt2"], backend="jax")
    with pytest.raises(ConfigError, match="dtype"):
        models.load(tiny["gpt2"], dtype="int8")


def test_unsupported_model_type(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                               vocab_size=50)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="model_type 'bert' is not supported"):
        models.load(tmp_path / "bert")


def test_registry_is_a_dict_of_every_family():
    assert set(models.FAMILIES) == {"gpt2", "gpt_neox", "mamba", "mamba2", "olmoe", "mixtral", "qwen2_moe"}
