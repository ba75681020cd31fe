from __future__ import annotations

import json

import pytest
import torch

from universality.errors import ArtifactError
from universality.sae import SAE, make_sae
from universality.sae.batchtopk import BatchTopKSAE

from sae_cases import ARCH_CFGS, cfg_for


def _randomise(sae: SAE) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name in ("b_enc", "b_dec", "b_mag", "r_mag"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            if name == "log_threshold":
                p.fill_(-1.0)
        if isinstance(sae, BatchTopKSAE):
            sae.threshold.fill_(0.4)


@pytest.mark.parametrize("name", sorted(ARCH_CFGS))
def test_round_trip_with_folded_normalisation(name, tmp_path):
    sae = make_sae(cfg_for(name), seed=2)
    _randomise(sae)
    if sae.cfg.decoder_norm == "free":
        with torch.no_grad():
            sae.W_dec.mul_(torch.linspace(0.5, 1.5, 32)[:, None])
    s = 0.37  # trained on s * x
    sae.input_scale = s
    sae.meta.update(model="tiny", site="blocks.0.hook_resid_post", dataset="toy", subset_hash="abc")
    sae.save(tmp_path / name)
    loaded = SAE.load(tmp_path / name)
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    x = 5.0 * torch.randn(64, 8)  # raw activations
    expected = sae(s * x) / s
    assert torch.allclose(loaded(x), expected, atol=1e-5, rtol=1e-5)
    norms = sae.W_dec.norm(dim=1).detach()  # free decoders: row norms move into the latents
    assert torch.allclose(loaded.encode(x), sae.encode(s * x) / s * norms, atol=1e-5, rtol=1e-5)
    assert torch.allclose(loaded.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    doc = json.loads((tmp_path / name / "cfg.json").read_text())
    assert doc["architecture"] == sae.architecture
    assert doc["normalisation"]["scale"] == s and doc["normalisation"]["folded_into_weights"] is True
    assert doc["model"] == "tiny" and doc["subset_hash"] == "abc"
    assert loaded.input_scale == 1.0


def test_load_rejects_wrong_or_broken_artifacts(tmp_path):
    with pytest.raises(ArtifactError, match="not a folder"):
        SAE.load(tmp_path / "missing")
    sae = make_sae(cfg_for("topk"))
    sae.save(tmp_path / "a")
    doc = json.loads((tmp_path / "a" / "cfg.json").read_text())
    doc["architecture"] = "relu"
    doc["sae"].pop("k")
    doc["sae"].update(architecture="relu", sparsity_coeff=1.0)
    (tmp_path / "a" / "cfg.json").write_text(json.dumps(doc))
    SAE.load(tmp_path / "a")  # same tensor names: relu reads topk weights legitimately
    doc["architecture"] = doc["sae"]["architecture"] = "gated"
    (tmp_path / "a" / "cfg.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="missing"):
        SAE.load(tmp_path / "a")
    (tmp_path / "a" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError):
        SAE.load(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="holds no"):
        SAE.load(tmp_path / "empty")


def test_subclass_load_checks_architecture(tmp_path):
    make_sae(cfg_for("relu")).save(tmp_path / "r")
    with pytest.raises(ArtifactError, match="not 'batchtopk'"):
        BatchTopKSAE.load(tmp_path / "r")
