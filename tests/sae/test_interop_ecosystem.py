"""Interop that accepts what the ecosystem writes: artifacts built by sae-lens and sparsify
themselves (TopK with ``rescale_acts_by_decoder_norm``, ``expected_average_only_in``, bfloat16
weights), the BatchTopK export guard, and loading public dictionaries by release and id from a
Hugging Face hub cache built in the test."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from universality.errors import ArtifactError, ConfigError
from universality.sae import SAE, make_sae, sae_config
from universality.sae.formats import load_pretrained, load_saelens, save_saelens

warnings.filterwarnings("ignore", module="sae_lens")

D_IN, D_SAE = 8, 32


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "; " in text, text
    return text


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights with decoder rows of norms between about 0.3 and 3 (far from unit)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=g) + (0.3 if "threshold" in name else 0.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)
        W_dec = module.W_dec
        rows = W_dec / W_dec.norm(dim=1, keepdim=True)
        W_dec.copy_(rows * torch.exp(torch.empty(W_dec.shape[0], 1).uniform_(-1.2, 1.1, generator=g)))


def _assert_same_map(ours: SAE, theirs, x: torch.Tensor, atol: float = 1e-5) -> None:
    with torch.no_grad():
        z_ours, z_theirs = ours.encode(x), theirs.encode(x)
        assert torch.allclose(z_ours, z_theirs, atol=atol), (z_ours - z_theirs).abs().max()
        assert torch.allclose(ours.decode(z_ours), theirs.decode(z_theirs), atol=atol)
        assert torch.allclose(ours(x), theirs(x), atol=atol)
    assert torch.allclose(ours.decoder_norms(), torch.ones(ours.d_sae), atol=1e-5)


# ----------------------------------------------------------------------------- rescale_acts_by_decoder_norm
@pytest.mark.parametrize("writer", ["save_inference_model", "save_model"])
def test_topk_training_artifact_with_rescale_loads_exactly(writer, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    assert theirs.cfg.rescale_acts_by_decoder_norm  # sae-lens's default for TopK training
    _randomise(theirs)
    assert (theirs.W_dec.norm(dim=1) - 1).abs().max() > 0.5
    getattr(theirs, writer)(tmp_path / writer)
    assert json.loads((tmp_path / writer / "cfg.json").read_text())["rescale_acts_by_decoder_norm"] is True
    ours = SAE.load(tmp_path / writer)
    assert ours.architecture == "topk" and ours.cfg.k == 4
    assert ours.meta["imported_from"]["rescale_acts_by_decoder_norm"] is True
    x = torch.randn(128, D_IN)
    _assert_same_map(ours, theirs, x)
    if writer == "save_inference_model":  # and what sae-lens itself reads back
        _assert_same_map(ours, sae_lens.SAE.load_from_disk(tmp_path / writer), x)


def test_inference_topk_with_rescale_and_non_unit_rows(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, rescale_acts_by_decoder_norm=True,
                                                     apply_b_dec_to_input=False))
    _randomise(theirs, 3)
    theirs.save_model(tmp_path / "t")
    stored = load_file(tmp_path / "t" / "sae_weights.safetensors")["W_dec"]
    assert (stored.norm(dim=1) - 1).abs().max() > 0.5  # the file holds the non-unit rows
    _assert_same_map(load_saelens(tmp_path / "t"), theirs, torch.randn(128, D_IN))


def test_topk_with_non_unit_rows_and_no_rescale_is_still_refused(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    _randomise(theirs)
    theirs.save_model(tmp_path / "t")
    with pytest.raises(ArtifactError) as info:
        SAE.load(tmp_path / "t")
    assert "unit-norm" in _one_line(info.value) and "rescale_acts_by_decoder_norm" in str(info.value)


# ----------------------------------------------------------------------------- expected_average_only_in
@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_expected_average_only_in_is_the_identity_at_inference(arch, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    cls, cfg_cls = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
                    "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig)}[arch]
    kw = {"k": 4} if arch == "topk" else {}
    theirs = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, normalize_activations="expected_average_only_in", **kw))
    _randomise(theirs, 1)
    with torch.no_grad():
        theirs.W_dec /= theirs.W_dec.norm(dim=1, keepdim=True)
    theirs.save_model(tmp_path / arch)
    ours = SAE.load(tmp_path / arch)
    assert ours.meta["imported_from"]["normalize_activations"] == "expected_average_only_in"
    _assert_same_map(ours, sae_lens.SAE.load_from_disk(tmp_path / arch), torch.randn(64, D_IN))


def test_pre_6_0_boolean_normalize_activations(tmp_path):
    folder = save_saelens(make_sae(sae_config("relu", D_IN, D_SAE), seed=0), tmp_path / "old")
    doc = json.loads((folder / "cfg.json").read_text())
    for value, accepted in ((True, True), (False, True), ("layer_norm", False)):
        doc["normalize_activations"] = value
        (folder / "cfg.json").write_text(json.dumps(doc))
        if accepted:
            load_saelens(folder)
        else:
            with pytest.raises(ArtifactError, match="layer_norm"):
                load_saelens(folder)


# ----------------------------------------------------------------------------- bf16 tolerance
def _rows_rounded_to_bf16(seed: int = 0) -> torch.Tensor:
    """Unit float32 rows rounded to bfloat16, with some norm off by more than 1e-3 (float32's tolerance)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(D_SAE, D_IN, generator=g)
    rows = (rows / rows.norm(dim=1, keepdim=True)).to(torch.bfloat16)
    off = (rows.float().norm(dim=1) - 1).abs().max()
    assert 1e-3 < off < 2 ** -8, off
    return rows


@pytest.mark.parametrize("arch", ["topk", "standard"])
def test_bf16_rounding_of_unit_rows_is_accepted_but_not_in_float32(arch, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    cls, cfg_cls = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
                    "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig)}[arch]
    kw = {"k": 4} if arch == "topk" else {}
    theirs = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, dtype="bfloat16", **kw))
    _randomise(theirs, 2)
    with torch.no_grad():
        theirs.W_dec.copy_(_rows_rounded_to_bf16())
    theirs.save_model(tmp_path / "bf16")
    assert load_file(tmp_path / "bf16" / "sae_weights.safetensors")["W_dec"].dtype == torch.bfloat16
    ours = SAE.load(tmp_path / "bf16")
    reference = sae_lens.SAE.load_from_disk(tmp_path / "bf16").to(torch.float32)
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)
    assert torch.equal(ours.W_dec, theirs.W_dec.float())  # accepted as stored, not folded

    # the same numbers stored as float32 are not unit to float32's tolerance: refused (TopK) or folded
    shutil.copytree(tmp_path / "bf16", tmp_path / "f32")
    tensors = {k: v.float() for k, v in load_file(tmp_path / "f32" / "sae_weights.safetensors").items()}
    save_file(tensors, tmp_path / "f32" / "sae_weights.safetensors")
    if arch == "topk":
        with pytest.raises(ArtifactError, match="unit-norm"):
            SAE.load(tmp_path / "f32")
    else:
        folded = SAE.load(tmp_path / "f32")
        assert torch.allclose(folded.decoder_norms(), torch.ones(D_SAE), atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(folded(x), reference(x), atol=1e-5)


# ----------------------------------------------------------------------------- BatchTopK export guard
def test_untrained_batchtopk_is_not_exported_as_a_relu(tmp_path):
    sae = make_sae(sae_config("batchtopk", D_IN, D_SAE, k=4), seed=0)
    assert float(sae.threshold) < 0
    with pytest.raises(ConfigError) as info:
        save_saelens(sae, tmp_path / "b")
    assert "threshold" in _one_line(info.value)
    assert not (tmp_path / "b").exists()
    sae.threshold.fill_(0.0)  # a trained threshold of exactly 0 is a legitimate export
    save_saelens(sae, tmp_path / "b")
    assert load_file(tmp_path / "b" / "sae_weights.safetensors")["threshold"].eq(0).all()


# ----------------------------------------------------------------------------- by release and id
def _put_in_hub_cache(cache: Path, repo_id: str, folder: str, artifact: Path, commit: str = "a" * 40) -> Path:
    """Lay ``artifact``'s files out as huggingface_hub caches ``repo_id``/``folder`` at ``commit``:
    content-addressed blobs, snapshot symlinks to them, and ``refs/main`` naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit / folder
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for file in artifact.iterdir():
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    return snapshot


def _saelens_release(name: str) -> dict:
    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory().get(name)
    if entry is None or entry.conversion_func is not None:
        pytest.skip(f"this sae-lens has no plain release {name!r}")
    return entry


def test_load_a_saelens_release_from_the_hub_cache(tmp_path, monkeypatch):
    sae_lens = pytest.importorskip("sae_lens")
    entry = _saelens_release("gpt2-small-res-jb")
    sae_id = "blocks.0.hook_resid_pre"
    theirs = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))
    _randomise(theirs, 4)
    theirs.save_model(tmp_path / "artifact")
    cache = tmp_path / "hub"
    _put_in_hub_cache(cache, entry.repo_id, entry.saes_map[sae_id], tmp_path / "artifact")

    ours = load_pretrained("gpt2-small-res-jb", sae_id, cache_dir=cache)
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    pretrained = ours.meta["imported_from"]["pretrained"]
    assert pretrained["repo_id"] == entry.repo_id and pretrained["sae_id"] == sae_id
    assert ours.meta["model"] == entry.model

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the default cache is $HF_HUB_CACHE
    with torch.no_grad():
        assert torch.allclose(load_pretrained("gpt2-small-res-jb", sae_id)(x), theirs(x), atol=1e-5)

    with pytest.raises(ConfigError) as info:
        load_pretrained("gpt2-small-res-jb", "blocks.99.hook_resid_pre", cache_dir=cache)
    assert "no SAE" in _one_line(info.value)
    with pytest.raises(ArtifactError) as info:
        load_pretrained("gpt2-small-res-jb", "blocks.1.hook_resid_pre", cache_dir=cache)
    text = _one_line(info.value)
    assert "not in the local Hugging Face cache" in text and f"hf download {entry.repo_id}" in text


def test_release_with_norm_scaling_factor_and_overrides(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4, normalize_activations="expected_average_only_in"))
    _randomise(theirs, 5)
    with torch.no_grad():
        theirs.W_dec /= theirs.W_dec.norm(dim=1, keepdim=True)
    theirs.save_model(tmp_path / "artifact")
    registry = {"my-release": {"repo_id": "someone/my-saes", "model": "pythia-70m", "config_overrides": {"dataset_path": "pile"},
                               "saes": [{"id": "layer_3", "path": "l3", "norm_scaling_factor": 2.5}]}}
    _put_in_hub_cache(tmp_path / "hub", "someone/my-saes", "l3", tmp_path / "artifact")
    ours = load_pretrained("my-release", "layer_3", cache_dir=tmp_path / "hub", registry=registry)
    assert ours.meta["normalisation"]["scale"] == 2.5 and ours.meta["normalisation"]["folded_into_weights"]
    assert ours.meta["dataset"] == "pile" and ours.meta["model"] == "pythia-70m"
    theirs.fold_activation_norm_scaling_factor(2.5)  # what sae-lens's from_pretrained does with the factor
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
        assert torch.allclose(2.5 * ours.encode(x), theirs.encode(x), atol=1e-5)  # unit rows: latents / s


def test_load_a_sparsify_hub_repo_from_the_cache(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    theirs = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=4))
    _randomise(theirs, 6)
    theirs.set_decoder_norm_to_unit_norm()
    theirs.save_to_disk(tmp_path / "artifact")
    _put_in_hub_cache(tmp_path / "hub", "EleutherAI/sae-tiny-test", "layers.3", tmp_path / "artifact")
    ours = load_pretrained("EleutherAI/sae-tiny-test", "layers.3", cache_dir=tmp_path / "hub", registry={})
    assert ours.architecture == "topk" and ours.meta["imported_from"]["format"] == "sparsify"
    assert ours.meta["imported_from"]["pretrained"]["folder"] == "layers.3"
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x).sae_out, atol=1e-5)
    with pytest.raises(ArtifactError, match="hf download EleutherAI/sae-tiny-test --include 'layers.4/\\*'"):
        load_pretrained("EleutherAI/sae-tiny-test", "layers.4", cache_dir=tmp_path / "hub", registry={})


def test_release_in_another_layout_is_refused(tmp_path):
    registry = {"scope": {"repo_id": "google/scope", "model": "gemma", "conversion_func": "gemma_2",
                          "saes": [{"id": "a", "path": "a"}]}}
    with pytest.raises(ArtifactError) as info:
        load_pretrained("scope", "a", cache_dir=tmp_path, registry=registry)
    assert "conversion_func='gemma_2'" in _one_line(info.value)
    with pytest.raises(ConfigError) as info:
        load_pretrained("not a repo!!", "x", cache_dir=tmp_path, registry={})
    _one_line(info.value)
