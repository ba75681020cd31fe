"""Import of artifacts written by sae-lens and sparsify themselves, and export they can read."""

from __future__ import annotations

import warnings

import pytest
import torch

from universality.errors import ArtifactError, ConfigError
from universality.sae import SAE, make_sae
from universality.sae.formats import load_saelens, save_saelens, save_sparsify

from sae_cases import cfg_for

warnings.filterwarnings("ignore", module="sae_lens")


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=g) + (0.3 if "threshold" in name else 0.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_import_artifacts_written_by_saelens(arch, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    cls = {"standard": sae_lens.StandardSAE, "topk": sae_lens.TopKSAE, "jumprelu": sae_lens.JumpReLUSAE, "gated": sae_lens.GatedSAE}[arch]
    cfg_cls = {"standard": sae_lens.StandardSAEConfig, "topk": sae_lens.TopKSAEConfig,
               "jumprelu": sae_lens.JumpReLUSAEConfig, "gated": sae_lens.GatedSAEConfig}[arch]
    kw = {"k": 4} if arch == "topk" else {}
    theirs = cls(cfg_cls(d_in=8, d_sae=32, **kw))
    _perturb(theirs)
    if arch == "topk":
        with torch.no_grad():
            theirs.W_dec /= theirs.W_dec.norm(dim=1, keepdim=True)
    theirs.save_model(tmp_path / arch)
    ours = SAE.load(tmp_path / arch)  # dispatches on sae_weights.safetensors
    assert ours.meta["imported_from"]["format"] == "saelens"
    x = torch.randn(64, 8)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
        assert torch.allclose(ours.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)


def test_import_saelens_batchtopk_inference_artifact(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(d_in=8, d_sae=32, k=4))
    _perturb(theirs)
    theirs.topk_threshold.fill_(0.25)
    theirs.save_inference_model(tmp_path / "b")
    ref = sae_lens.SAE.load_from_disk(tmp_path / "b")
    ours = load_saelens(tmp_path / "b")
    assert ours.architecture == "jumprelu"
    x = torch.randn(64, 8)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("name", ["relu", "relu_tied", "topk", "batchtopk", "jumprelu", "gated"])
def test_export_to_saelens_is_read_identically(name, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = make_sae(cfg_for(name), seed=5)
    _perturb(sae, 1)
    sae.normalize_decoder_()
    if name == "batchtopk":
        sae.threshold.fill_(0.3)
    sae.input_scale = 2.0
    save_saelens(sae, tmp_path / name)
    theirs = sae_lens.SAE.load_from_disk(tmp_path / name)
    x = torch.randn(64, 8)
    with torch.no_grad():
        assert torch.allclose(theirs(x), sae(2.0 * x) / 2.0, atol=1e-5)
        assert torch.allclose(load_saelens(tmp_path / name)(x), theirs(x), atol=1e-5)


def test_import_artifact_written_by_sparsify(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    theirs = sparsify.SparseCoder(8, sparsify.SparseCoderConfig(num_latents=32, k=4))
    _perturb(theirs)
    theirs.set_decoder_norm_to_unit_norm()
    theirs.save_to_disk(tmp_path / "sp")
    ours = SAE.load(tmp_path / "sp")
    assert ours.architecture == "topk" and ours.cfg.k == 4
    x = torch.randn(64, 8)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x).sae_out, atol=1e-5)


def test_export_to_sparsify_is_read_identically(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    sae = make_sae(cfg_for("topk"), seed=2)
    _perturb(sae, 3)
    sae.normalize_decoder_()
    save_sparsify(sae, tmp_path / "sp")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "sp")
    x = torch.randn(64, 8)
    with torch.no_grad():
        assert torch.allclose(theirs(x).sae_out, sae(x), atol=1e-5)


def test_format_errors(tmp_path):
    with pytest.raises(ConfigError, match="TopK SAEs only"):
        save_sparsify(make_sae(cfg_for("relu")), tmp_path / "x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "sae_weights.safetensors").write_bytes(b"")
    (tmp_path / "bad" / "cfg.json").write_text('{"architecture": "standard", "d_in": 8, "d_sae": 32, "normalize_activations": "layer_norm"}')
    with pytest.raises(ArtifactError, match="layer_norm"):
        SAE.load(tmp_path / "bad")
