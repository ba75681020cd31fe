"""Crosscoder model: config checks, shapes with unequal widths, the penalty on a hand case, folding, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from universality.errors import ConfigError
from universality.sae import SAE, SAEConfig, architectures, make_sae, sae_config
from universality.sae.crosscoder_config import CrosscoderConfig, crosscoder_config

WIDTHS = (8, 12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_in=20, d_sae=16, source_widths=(20,), k=4), "at least two sources"),
    (dict(d_in=21, d_sae=16, source_widths=(8, 12), k=4), "not the sum"),
    (dict(d_in=20, d_sae=16, source_widths=(8, 12), k=17), "k=17 is larger"),
    (dict(d_in=20, d_sae=16, source_widths=(8, 12), sparsity="topk"), "sparsity"),
    (dict(d_in=20, d_sae=16, source_widths=(8, 12), k=4, shared_latents=2), "reduced L1 penalty"),
    (dict(d_in=20, d_sae=16, source_widths=(8, 12), sparsity="l1", shared_latents=17), "exceeds d_sae"),
    (dict(d_in=20, d_sae=16, source_widths=(8, 12), sparsity="l1", shared_coeff_ratio=1.5), "shared_coeff_ratio"),
    (dict(d_in=20, d_sae=16, source_widths=(8, 0), k=4), r"source_widths\[1\]"),
    (dict(d_in=20, d_sae=16, source_widths=(10, 10), sparsity="l1", tie_shared=True), "shared_latents=0"),
    (dict(d_in=20, d_sae=16, source_widths=(8, 12), sparsity="l1", shared_latents=2, tie_shared=True), "one width"),
])
def test_config_errors_are_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        CrosscoderConfig(**kwargs)
    assert "\n" not in str(info.value) and info.value.fix  # one line, with a fix


def test_config_round_trip_and_registry():
    cfg = crosscoder_config(WIDTHS, 16, sparsity="l1", shared_latents=3)
    assert cfg.d_in == 20 and cfg.uses_penalty and cfg.default_remedy == "none"
    assert crosscoder_config(WIDTHS, 16, k=4).default_remedy == "auxk"
    doc = json.loads(json.dumps(cfg.to_dict()))  # widths become a JSON list
    assert SAEConfig.from_dict(doc) == cfg
    assert sae_config("crosscoder", 20, 16, source_widths=WIDTHS, k=4) == crosscoder_config(WIDTHS, 16, k=4)
    assert "crosscoder" in architectures()


def test_forward_shapes_with_unequal_widths_and_batchtopk_count():
    cc = make_sae(crosscoder_config(WIDTHS, 32, k=4), seed=1)
    x = torch.randn(10, 20)
    out = cc.forward_train(x)
    assert out.x_hat.shape == (10, 20) and out.acts.shape == (10, 32)
    assert int((out.acts > 0).sum()) == 4 * 10  # the batch keeps k * batch latents
    assert cc.encode(x).shape == (10, 32) and cc.decode_source(out.acts, 1).shape == (10, 12)
    # every source's decoder block starts with the same norm, whatever its width
    norms = cc.decoder_source_norms()
    assert torch.allclose(norms, torch.full_like(norms, 2 ** -0.5), atol=1e-6)


def test_batchtopk_selects_on_decoder_norm_weighted_activations():
    cc = make_sae(crosscoder_config((2, 2), 2, k=1), seed=0)
    with torch.no_grad():
        cc.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
        cc.b_enc.zero_(), cc.b_dec.zero_()
        cc.W_dec.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]]))  # w = (1, 3)
    z = cc.forward_train(torch.tensor([[2.0, 1.0, 0.0, 0.0]])).acts
    assert z.tolist() == [[0.0, 1.0]]  # 1 * 3 beats 2 * 1


def test_l1_penalty_is_weighted_by_the_sum_of_source_decoder_norms():
    cc = make_sae(crosscoder_config((2, 3), 3, sparsity="l1", shared_latents=1, shared_coeff_ratio=0.25), seed=0)
    W_dec = torch.tensor([[3.0, 4.0, 0.0, 0.0, 2.0],    # norms 5, 2
                          [0.0, 1.0, 2.0, 0.0, 0.0],    # norms 1, 2
                          [0.0, 0.0, 0.0, 0.0, 0.0]])   # norms 0, 0
    with torch.no_grad():
        cc.W_dec.copy_(W_dec)
        cc.W_enc.copy_(torch.eye(5)[:, :3])
        cc.b_enc.zero_(), cc.b_dec.zero_()
    x = torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.0], [0.5, 0.0, 4.0, 0.0, 0.0]])
    out = cc.forward_train(x)
    f = torch.relu(x[:, :3])
    expected = (0.25 * f[:, 0] * 7 + f[:, 1] * 3 + f[:, 2] * 0).mean()
    assert torch.allclose(out.sparsity, expected)
    assert torch.allclose(out.x_hat, f @ W_dec)


def test_folded_crosscoder_works_on_raw_activations():
    cc = make_sae(crosscoder_config(WIDTHS, 16, k=3), seed=2)
    with torch.no_grad():
        cc.b_dec.normal_(), cc.b_enc.normal_(), cc.W_dec.mul_(torch.rand(16, 1) + 0.5)
        cc.threshold.fill_(0.3)
    scales = [2.0, 0.25]
    cc.input_scale = scales
    x_raw = torch.randn(6, 20)
    s_vec = torch.tensor([2.0] * 8 + [0.25] * 12)
    want = cc.decode(cc.encode(x_raw * s_vec)) / s_vec
    folded = cc.folded()
    assert torch.allclose(folded(x_raw), want, atol=1e-5)
    assert folded.input_norm.tolist() == scales
    rows = folded.W_dec.norm(dim=1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    rel = lambda m: m.decoder_source_norms() / m.decoder_source_norms().sum(1, keepdim=True)  # noqa: E731
    assert torch.allclose(rel(folded), rel(cc), atol=1e-6)  # folding keeps the per-source ratios
    assert folded.meta["normalisation"]["method"] == "mean_squared_norm_per_source"


def test_save_load_round_trip_is_bitwise_and_self_describing(tmp_path):
    cc = make_sae(crosscoder_config(WIDTHS, 16, sparsity="l1", shared_latents=2), seed=3,
                  meta={"sources": [{"model": "pythia-70m", "revision": "step1000", "site": "blocks.2.hook_resid_post",
                                     "dataset": "pile", "subset_hash": "h"}]})
    with torch.no_grad():
        cc.b_dec.normal_()
    cc.save(tmp_path / "cc")
    doc = json.loads((tmp_path / "cc" / "cfg.json").read_text())
    assert doc["architecture"] == "crosscoder" and doc["sae"]["source_widths"] == [8, 12]
    assert doc["sources"][0]["model"] == "pythia-70m" and doc["sources"][1] == {"index": 1, "width": 12}
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "cc" / "weights.safetensors").exists()
    loaded = SAE.load(tmp_path / "cc")
    ref = cc.folded()
    assert type(loaded).__name__ == "CrosscoderSAE" and loaded.cfg == cc.cfg
    for name, value in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.randn(5, 20)
    assert torch.equal(loaded(x), ref(x))


def test_too_many_source_descriptions_are_refused(tmp_path):
    cc = make_sae(crosscoder_config(WIDTHS, 16, k=4), meta={"sources": [{}, {}, {}]})
    with pytest.raises(ConfigError, match="describes 3 sources"):
        cc.save(tmp_path / "cc")


def test_relative_norm_histogram_draws_the_latents(tmp_path):
    import pandas as pd

    from analysis.plots import plotted_points, relative_norm_histogram  # noqa: F401
    from universality.crosscoder.analysis import relative_decoder_norms

    cc = make_sae(crosscoder_config(WIDTHS, 16, k=4), seed=4)
    with torch.no_grad():
        cc.W_dec[:4, 8:] = 0  # four latents exclusive to source 0
    rel = relative_decoder_norms(cc)[:, 1]
    assert rel[:4].tolist() == [0.0] * 4
    out = relative_norm_histogram(pd.DataFrame({"relative_norm": rel.numpy()}), tmp_path / "h.png", "toy")
    assert out.exists() and out.stat().st_size > 1000
