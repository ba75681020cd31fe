from __future__ import annotations

import dataclasses

import math

import pytest
import torch

from universality.errors import ConfigError
from universality.sae import (
    SAE,
    BatchTopKConfig,
    GatedConfig,
    JumpReLUConfig,
    ReLUConfig,
    SAEConfig,
    TopKConfig,
    architectures,
    get_architecture,
    make_sae,
    register,
    sae_config,
)
from universality.sae.config import option_fields
from universality.sae.jumprelu import jumprelu, step

from sae_cases import ARCH_CFGS, cfg_for

@pytest.mark.parametrize("name", sorted(ARCH_CFGS))
def test_shapes_layout_and_gradients(name, device):
    sae = make_sae(cfg_for(name), seed=1, device=device)
    assert sae.W_enc.shape == (8, 32) and sae.W_dec.shape == (32, 8)
    assert sae.b_enc.shape == (32,) and sae.b_dec.shape == (8,)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32, device=device), atol=1e-5)
    x = torch.randn(16, 8, device=device)
    z = sae.encode(x)
    assert z.shape == (16, 32) and (z >= 0).all()
    assert sae(x).shape == (16, 8)
    out = sae.forward_train(x)
    loss = (out.x_hat - x).pow(2).sum() + out.sparsity + sum(out.extra.values(), torch.zeros((), device=device))
    loss.backward()
    assert sae.W_dec.grad is not None and torch.isfinite(sae.W_dec.grad).all()


def test_topk_keeps_exactly_k_per_row():
    sae = make_sae(cfg_for("topk"), seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive
    z = sae.encode(torch.randn(20, 8))
    assert ((z > 0).sum(dim=1) == 3).all()
    out = sae.forward_train(torch.randn(20, 8))
    assert ((out.acts > 0).sum(dim=1) == 3).all()


def test_batchtopk_keeps_k_per_row_on_average_and_learns_threshold():
    sae = make_sae(cfg_for("batchtopk"), seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)
    x = torch.randn(20, 8)
    out = sae.forward_train(x)
    assert int((out.acts > 0).sum()) == 3 * 20
    assert float(sae.threshold) == pytest.approx(float(out.acts.detach()[out.acts.detach() > 0].min()))
    z = sae.encode(x)  # inference: threshold, not batch selection
    pre = torch.relu(sae.pre_acts(x))
    assert torch.equal(z, pre * (pre > sae.threshold))


def test_jumprelu_forward_and_straight_through_gradients():
    pre = torch.tensor([[0.05, 0.30, 0.52, 1.0]], requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    eps = 0.1
    out = jumprelu(pre, theta, eps)
    assert torch.equal(out.detach(), torch.tensor([[0.0, 0.0, 0.52, 1.0]]))
    out.sum().backward()
    # d/dtheta pre*H(pre-theta) = -(theta/eps) K((pre-theta)/eps): only |pre - theta| < eps/2 contributes
    assert torch.allclose(theta.grad, torch.tensor([0.0, 0.0, -5.0, 0.0]))
    assert torch.equal(pre.grad, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    pre2 = pre.detach().clone().requires_grad_(True)
    theta2 = theta.detach().clone().requires_grad_(True)
    step(pre2, theta2, eps).sum().backward()
    assert torch.allclose(theta2.grad, torch.tensor([0.0, 0.0, -10.0, 0.0]))
    assert torch.equal(pre2.grad, torch.zeros_like(pre2))


def test_jumprelu_encode_zeroes_below_threshold():
    sae = make_sae(cfg_for("jumprelu"), seed=0)
    x = torch.randn(64, 8)
    pre, z = sae.pre_acts(x), sae.encode(x)
    assert torch.equal(z, pre * (pre > 0.2))


def test_gated_gate_and_magnitude_paths():
    sae = make_sae(cfg_for("gated"), seed=0)
    with torch.no_grad():
        sae.r_mag.fill_(math.log(2.0))
        sae.b_mag.fill_(0.1)
    x = torch.randn(32, 8)
    xc = x - sae.b_dec
    gate = (xc @ sae.W_enc + sae.b_enc) > 0
    mag = torch.relu(xc @ sae.W_enc * 2.0 + 0.1)
    assert torch.allclose(sae.encode(x), gate * mag, atol=1e-6)
    assert "gate_aux" in sae.forward_train(x).extra


def test_tied_relu_uses_decoder_transpose():
    sae = make_sae(cfg_for("relu_tied"), seed=0)
    assert "W_enc" not in dict(sae.named_parameters())
    assert torch.equal(sae.W_enc, sae.W_dec.T)


def test_free_decoder_penalty_is_weighted_by_row_norms():
    sae = make_sae(cfg_for("relu_free"), seed=0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 32)[:, None])
        sae.b_enc.fill_(1.0)
    x = torch.randn(4, 8)
    out = sae.forward_train(x)
    expected = (out.acts * sae.W_dec.norm(dim=1)).sum(dim=1).mean()
    assert torch.allclose(out.sparsity, expected)


def test_decoder_gradient_projection_and_renormalisation():
    sae = make_sae(cfg_for("topk"), seed=0)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_decoder_grad_()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(dim=1), torch.zeros(32), atol=1e-5)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder_()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)


def test_registry_and_config_validation():
    assert set(architectures()) >= {"relu", "topk", "batchtopk", "jumprelu", "gated"}
    assert get_architecture("topk").architecture == "topk"
    with pytest.raises(ConfigError, match="unknown SAE architecture"):
        sae_config("nope", 4, 8)
    with pytest.raises(ConfigError, match="k=32 is larger than d_sae=8; choose k between 1 and 8"):
        sae_config("topk", 4, 8)  # the default k does not fit: the fix names the valid range, not the rejected k
    with pytest.raises(ConfigError, match="relu architecture has no field.*k.*its fields are"):
        sae_config("relu", 4, 8, k=2)
    with pytest.raises(ConfigError, match="gated architecture has no field.*tied"):
        sae_config("gated", 4, 8, tied=True)
    with pytest.raises(ConfigError, match="topk architecture has no field.*decoder_norm"):
        sae_config("topk", 4, 8, k=2, decoder_norm="free")
    with pytest.raises(ConfigError, match="integer >= 1"):
        sae_config("relu", 0, 8)
    with pytest.raises(ConfigError, match="sparsity_coeff"):
        sae_config("jumprelu", 4, 8, sparsity_coeff=0.0)
    with pytest.raises(ConfigError, match="tied relu SAEs need decoder_norm='unit'"):
        sae_config("relu", 4, 8, tied=True, decoder_norm="free")
    with pytest.raises(ConfigError):
        sae_config("relu", 4, 8, dtype="int8")
    with pytest.raises(ConfigError, match="cannot be built alone"):
        SAEConfig(4, 8)


@pytest.mark.parametrize("arch, cls, fields", [
    ("topk", TopKConfig, {"k"}),
    ("batchtopk", BatchTopKConfig, {"k"}),
    ("relu", ReLUConfig, {"sparsity_coeff", "decoder_norm", "tied"}),
    ("jumprelu", JumpReLUConfig, {"sparsity_coeff", "decoder_norm", "bandwidth", "init_threshold"}),
    ("gated", GatedConfig, {"sparsity_coeff", "decoder_norm"}),
])
def test_each_architecture_has_its_own_config_class_with_valid_defaults(arch, cls, fields):
    cfg = sae_config(arch, 8, 64)  # every default is valid for a wide enough dictionary
    assert type(cfg) is cls and cfg.architecture == arch
    assert set(option_fields(cls)) == fields
    assert get_architecture(arch).config_class is cls
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    assert (getattr(cfg, "sparsity_coeff", 1.0) > 0) and cfg.uses_penalty == ("sparsity_coeff" in fields)
    make_sae(cfg)  # builds


def test_configs_saved_by_the_flat_layout_still_load():
    flat = {"architecture": "jumprelu", "d_in": 4, "d_sae": 8, "k": None, "sparsity_coeff": 2.0, "decoder_norm": "unit",
            "tied": False, "jumprelu_bandwidth": 0.1, "jumprelu_threshold": 0.2, "dtype": "float32"}
    cfg = SAEConfig.from_dict(flat)
    assert cfg == JumpReLUConfig(4, 8, sparsity_coeff=2.0, bandwidth=0.1, init_threshold=0.2)
    topk = SAEConfig.from_dict({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2, "sparsity_coeff": 0.0,
                                "decoder_norm": "unit", "tied": False, "jumprelu_bandwidth": 0.05,
                                "jumprelu_threshold": 0.01, "dtype": "float32"})
    assert topk == TopKConfig(4, 8, k=2)
    with pytest.raises(ConfigError, match="topk architecture has no field sparsity_coeff"):
        SAEConfig.from_dict({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2, "sparsity_coeff": 3.0})


def test_registering_a_new_architecture_makes_it_loadable(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class ScaledReLUConfig(ReLUConfig):
        architecture: str = dataclasses.field(default="test_scaled_relu", init=False)

    @register("test_scaled_relu")
    class ScaledReLU(get_architecture("relu")):
        config_class = ScaledReLUConfig

    sae = make_sae(sae_config("test_scaled_relu", 4, 8, sparsity_coeff=1.0))
    sae.save(tmp_path / "d")
    loaded = SAE.load(tmp_path / "d")
    assert type(loaded).__name__ == "ScaledReLU"
    with pytest.raises(ConfigError, match="config class for 'relu'"):
        @register("test_without_config")
        class NoConfig(get_architecture("relu")):
            pass


@pytest.mark.parametrize("with_pre_grad", [False, True])
def test_sparse_topk_backward_equals_dense_autograd(with_pre_grad):
    from universality.sae.topk import topk_encoder

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, dtype=torch.float64, generator=g)
    W = torch.randn(8, 32, dtype=torch.float64, generator=g)
    b = torch.randn(32, dtype=torch.float64, generator=g) - 1.0  # some rows have < k positive latents
    gv = torch.randn(16, 4, dtype=torch.float64, generator=g)
    gp = torch.randn(16, 32, dtype=torch.float64, generator=g)

    def grads(fn):
        xs, Ws, bs = (t.clone().requires_grad_(True) for t in (x, W, b))
        vals, _, pre = fn(xs, Ws, bs)
        loss = (vals * gv).sum() + ((pre * gp).sum() if with_pre_grad else 0.0)
        loss.backward()
        return xs.grad, Ws.grad, bs.grad

    def dense(xs, Ws, bs):
        pre = xs @ Ws + bs
        vals, idx = torch.relu(pre).topk(4, dim=-1, sorted=False)
        return vals, idx, pre

    for a, c in zip(grads(lambda *t: topk_encoder(*t, 4)), grads(dense)):
        assert torch.allclose(a, c)
