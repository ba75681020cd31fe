"""Mamba / Mamba-2: the mamba-ssm checkpoint converter gives the same model as the HF original."""

from __future__ import annotations

import pytest
import torch

import models
from models.mamba_ssm import hf_config_from_mamba_ssm, is_mamba_ssm_config
from models.testing import save_as_mamba_ssm
from universality.errors import ModelLoadError


def _ids() -> torch.Tensor:
    return torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize(("family", "fmt"), [("mamba2", "safetensors"), ("mamba2", "bin"), ("mamba", "safetensors")])
def test_mamba_ssm_checkpoint_loads_as_the_same_model(tiny, tmp_path, family, fmt):
    ssm_dir = save_as_mamba_ssm(tiny[family], tmp_path / f"{family}-ssm", fmt=fmt)
    raw = (ssm_dir / "config.json").read_text()
    assert '"d_model"' in raw and '"model_type"' not in raw
    converted = models.load(ssm_dir, device="cpu")
    original = models.load(tiny[family], device="cpu")
    assert converted.family == family and converted.sites == original.sites
    torch.testing.assert_close(converted.forward(_ids()), original.forward(_ids()), atol=1e-5, rtol=0)
    a = converted.capture(_ids(), list(converted.sites))
    b = original.capture(_ids(), list(original.sites))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)
    assert converted.tokenizer is not None


def test_converter_config_mapping_and_refusals():
    raw = {"d_model": 256, "n_layer": 4, "vocab_size": 50277, "pad_vocab_size_multiple": 16,
           "ssm_cfg": {"layer": "Mamba2", "d_state": 64, "headdim": 32, "ngroups": 2, "chunk_size": 128}}
    assert is_mamba_ssm_config(raw)
    cfg = hf_config_from_mamba_ssm(raw)
    assert cfg.model_type == "mamba2" and cfg.vocab_size == 50288  # padded to a multiple of 16
    assert (cfg.num_heads, cfg.head_dim, cfg.n_groups, cfg.state_size, cfg.chunk_size) == (16, 32, 2, 64, 128)
    assert hf_config_from_mamba_ssm({**raw, "ssm_cfg": {}}).model_type == "mamba"  # mamba-ssm default: Mamba1
    with pytest.raises(ModelLoadError, match="attention layers"):
        hf_config_from_mamba_ssm({**raw, "attn_layer_idx": [1]})
    with pytest.raises(ModelLoadError, match="norm_before_gate"):
        hf_config_from_mamba_ssm({**raw, "ssm_cfg": {"layer": "Mamba2", "norm_before_gate": True}})
