"""SAELens and sparsify folders whose cfg.json lacks a field (or whose weights lack a tensor) give a
one-line ``problem; fix`` ArtifactError naming the file and the field, never a KeyError."""

from __future__ import annotations

import json

import pytest
import torch

from universality.errors import ArtifactError
from universality.sae import SAE, make_sae, sae_config
from universality.sae.formats import load_saelens, load_sparsify, save_saelens, save_sparsify


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "; " in text, text
    return text


def _saelens(tmp_path, arch: str = "topk", **fields):
    kw = {"k": 4} if arch in ("topk", "batchtopk") else {}
    folder = tmp_path / f"saelens_{arch}"
    save_saelens(make_sae(sae_config(arch, 8, 16, **kw), seed=0), folder)
    return folder


def _drop(folder, field: str) -> None:
    doc = json.loads((folder / "cfg.json").read_text())
    doc.pop(field)
    (folder / "cfg.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("field", ["d_in", "d_sae", "k"])
def test_saelens_cfg_without_a_field(tmp_path, field):
    folder = _saelens(tmp_path)
    _drop(folder, field)
    with pytest.raises(ArtifactError) as info:
        load_saelens(folder)
    text = _one_line(info.value)
    assert f"lacks the field {field!r}" in text and "cfg.json" in text
    with pytest.raises(ArtifactError, match=f"lacks the field {field!r}"):
        SAE.load(folder)  # the generic loader dispatches to the SAELens reader


def test_saelens_cfg_with_a_field_of_the_wrong_type(tmp_path):
    folder = _saelens(tmp_path)
    doc = json.loads((folder / "cfg.json").read_text())
    doc["d_sae"] = "wide"
    (folder / "cfg.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError) as info:
        load_saelens(folder)
    assert "'d_sae'" in _one_line(info.value) and "'wide'" in str(info.value)


def test_saelens_cfg_that_is_not_an_object(tmp_path):
    folder = _saelens(tmp_path)
    (folder / "cfg.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="not a JSON object"):
        load_saelens(folder)


@pytest.mark.parametrize("arch, tensor", [("jumprelu", "threshold"), ("gated", "b_gate"), ("relu", "b_dec")])
def test_saelens_weights_without_a_tensor(tmp_path, arch, tensor):
    from safetensors.torch import load_file, save_file

    folder = _saelens(tmp_path, arch)
    doc = json.loads((folder / "cfg.json").read_text())
    doc["apply_b_dec_to_input"] = False  # the conversion reads b_dec, W_enc (and b_gate, b_mag, r_mag)
    (folder / "cfg.json").write_text(json.dumps(doc))
    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights.pop(tensor)
    save_file(weights, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ArtifactError) as info:
        load_saelens(folder)
    assert f"lacks the tensor {tensor!r}" in _one_line(info.value)


def test_sparsify_cfg_without_k(tmp_path):
    folder = tmp_path / "sparsify"
    save_sparsify(make_sae(sae_config("topk", 8, 16, k=4), seed=0), folder)
    _drop(folder, "k")
    with pytest.raises(ArtifactError) as info:
        load_sparsify(folder)
    assert "lacks the field 'k'" in _one_line(info.value)


def test_complete_folders_still_load(tmp_path):
    folder = _saelens(tmp_path)
    sae = load_saelens(folder)
    assert sae.cfg.k == 4 and sae.cfg.d_in == 8 and torch.isfinite(sae.W_dec).all()
