"""StackedSAE: each stacked dictionary computes what its individual SAE computes; k-sparse backward."""

from __future__ import annotations

import pytest
import torch

from universality.errors import ConfigError
from universality.sae import SAE, sae_config, make_sae
from universality.sae import kernels
from universality.sae.kernels import stacked_preactivations_at
from universality.sae.stacked import StackedSAE, stacked_sparse_decode, stacked_topk_encoder


def _saes(arch, n=3, d_in=8, d_sae=32, k=3, device="cpu"):
    cfg = sae_config(arch, d_in, d_sae, k=k)
    saes = [make_sae(cfg, seed=10 + i, device=device) for i in range(n)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for s in saes:  # non-trivial biases, so every term of the maths is exercised
            s.b_dec.copy_(torch.randn(d_in, generator=g).to(device))
            s.b_enc.copy_(0.3 * torch.randn(d_sae, generator=g).to(device))
    return saes


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_stack_forward_and_gradients_equal_the_individual_saes(arch, device):
    saes = _saes(arch, device=device)
    stack = StackedSAE.from_saes(saes)
    x = torch.randn(3, 20, 8, device=device)
    out = stack.forward_train(x)
    # a loss that reads the reconstruction and the dense pre-activations (as AuxK does)
    (((out.x_hat - x) ** 2).sum() + 1e-2 * (out.pre ** 2).sum()).backward()
    for i, sae in enumerate(saes):
        o = sae.forward_train(x[i])
        (((o.x_hat - x[i]) ** 2).sum() + 1e-2 * (o.pre ** 2).sum()).backward()
        assert torch.allclose(out.x_hat[i], o.x_hat, atol=1e-5)
        assert torch.allclose(out.pre[i], o.pre, atol=1e-5)
        for name in ("W_dec", "W_enc", "b_enc", "b_dec"):
            assert torch.allclose(getattr(stack, name).grad[i], getattr(sae, name).grad, atol=1e-4), name
        if arch == "topk":
            idx, vals = out.active
            assert torch.equal(torch.sort(idx[i], dim=-1).values, torch.sort(o.active[0], dim=-1).values)
            assert torch.allclose(torch.sort(vals[i], dim=-1).values, torch.sort(o.active[1], dim=-1).values, atol=1e-5)
        else:
            assert float(stack.threshold[i]) == pytest.approx(float(sae.threshold), abs=1e-6)
    # inference (dense code) equals each SAE's encode / forward
    with torch.no_grad():
        z = stack.encode(x)
        for i, sae in enumerate(saes):
            assert torch.allclose(z[i], sae.encode(x[i]), atol=1e-5)
            assert torch.allclose(stack(x)[i], sae(x[i]), atol=1e-5)


@pytest.mark.parametrize("path", kernels.BACKWARD_PATHS)
def test_k_sparse_backward_passes_gradcheck(path, monkeypatch):
    """Every backward path (the CPU's sparse product, the CUDA index_add_ path and the dense scatter +
    bmm, each forced here on the CPU) agrees with finite differences in float64."""
    monkeypatch.setattr(kernels, "backward_path", lambda device: path)
    g = torch.Generator().manual_seed(1)
    N, B, D, F, K = 2, 5, 4, 7, 3
    x = torch.randn(N, B, D, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(N, D, F, dtype=torch.float64, generator=g, requires_grad=True)
    b = (0.5 + torch.rand(N, F, dtype=torch.float64, generator=g)).requires_grad_(True)  # positive: no ReLU kinks

    def enc(x, W, b):
        vals, idx, pre = stacked_topk_encoder(x, W, b, K)
        order = idx.argsort(dim=-1)  # values in a canonical order (topk's order is unspecified)
        return vals.gather(-1, order), pre

    assert torch.autograd.gradcheck(enc, (x, W, b), eps=1e-6, atol=1e-6)
    # centred inside the kernel on c (the decoder bias): the centre's gradient (-W times the summed
    # pre-activation gradient) agrees with finite differences too
    c = torch.randn(N, D, dtype=torch.float64, generator=g, requires_grad=True)

    def enc_centred(x, W, b, c):
        vals, idx, pre = stacked_topk_encoder(x, W, b, K, centre=c)
        return vals.gather(-1, idx.argsort(dim=-1)), pre

    assert torch.autograd.gradcheck(enc_centred, (x, W, b, c), eps=1e-6, atol=1e-6)
    idx = torch.stack([torch.randperm(F, generator=g)[:K] for _ in range(N * B)]).view(N, B, K)
    idx[0, 0, 1] = idx[0, 0, 0]  # a repeated row: every path must accumulate it
    vals = torch.randn(N, B, K, dtype=torch.float64, generator=g, requires_grad=True)
    Wd = torch.randn(N, F, D, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w: stacked_sparse_decode(idx, v, w), (vals, Wd), eps=1e-6, atol=1e-6)
    # and the decoder's forward is the dense product with the scattered code
    dense_code = torch.zeros(N, B, F, dtype=torch.float64).scatter_add_(2, idx, vals.detach())
    assert torch.allclose(stacked_sparse_decode(idx, vals, Wd), torch.bmm(dense_code, Wd))
    # AuxK's gathered pre-activations: the value is pre's, the gradient reaches x, W, b and c through the
    # gathered entries (a repeated index included) and agrees with finite differences

    def pre_at(x, W, b, c):
        pre = torch.baddbmm(b.unsqueeze(1), x - c.unsqueeze(1), W).detach()
        return stacked_preactivations_at(pre, idx, x, W, b, centre=c)

    assert torch.allclose(pre_at(x, W, b, c), (torch.baddbmm(b.unsqueeze(1), x - c.unsqueeze(1), W)).gather(2, idx))
    assert torch.autograd.gradcheck(pre_at, (x, W, b, c), eps=1e-6, atol=1e-6)


def test_sparse_decoder_touches_only_the_active_rows():
    N, B, F, D = 2, 4, 50, 6
    idx = torch.randint(0, 10, (N, B, 3))  # only rows 0..9 are ever active
    W = torch.randn(N, F, D, requires_grad=True)
    stacked_sparse_decode(idx, torch.randn(N, B, 3), W).pow(2).sum().backward()
    assert W.grad[:, 10:].abs().sum() == 0 and W.grad[:, :10].abs().sum() > 0


def test_conversion_round_trip_and_one_folder_per_dictionary(tmp_path):
    saes = _saes("batchtopk", n=2)
    for i, s in enumerate(saes):
        s.input_scale = 2.0 + i
        with torch.no_grad():
            s.threshold.fill_(0.1 * (i + 1))
    stack = StackedSAE.from_saes(saes)
    assert stack.W_enc.shape == (2, 8, 32) and stack.W_dec.shape == (2, 32, 8) and stack.threshold.shape == (2,)
    with torch.no_grad():
        stack.W_enc.mul_(1.5)
    back = stack.to_saes(metas=[{"site": "a"}, {"site": "b"}])
    for i, (orig, new) in enumerate(zip(saes, back)):
        assert type(new) is type(orig) and new.meta["site"] == "ab"[i] and new.input_scale == orig.input_scale
        assert torch.equal(new.W_enc, 1.5 * orig.W_enc) and torch.equal(new.W_dec, orig.W_dec)
        assert torch.equal(new.threshold, orig.threshold)
        new.save(tmp_path / f"d{i}")
        loaded = SAE.load(tmp_path / f"d{i}")
        x = torch.randn(7, 8)
        assert torch.allclose(loaded(x), new(x * new.input_scale) / new.input_scale, atol=1e-4)  # raw activations
    stack.copy_to_(saes)
    assert torch.equal(saes[1].W_enc, back[1].W_enc)


def test_stack_keeps_unit_rows_and_projects_decoder_gradients():
    stack = StackedSAE.from_saes(_saes("topk"))
    x = torch.randn(3, 16, 8)
    stack.forward_train(x).x_hat.pow(2).sum().backward()
    stack.remove_parallel_decoder_grad_()
    g = stack.W_dec.grad
    assert ((g * stack.W_dec).sum(-1).abs() <= 1e-5 * g.norm(dim=-1) + 1e-6).all()
    with torch.no_grad():
        stack.W_dec.mul_(3.0)
    stack.normalize_decoder_()
    assert torch.allclose(stack.W_dec.norm(dim=-1), torch.ones(3, 32), atol=1e-6)


def test_stack_errors():
    with pytest.raises(ConfigError, match="stack holds"):
        StackedSAE(sae_config("relu", 8, 16, sparsity_coeff=1.0), 2)
    with pytest.raises(ConfigError, match="different configs"):
        StackedSAE.from_saes([make_sae(sae_config("topk", 8, 16, k=2)), make_sae(sae_config("topk", 8, 16, k=3))])
    with pytest.raises(ConfigError, match="no SAEs"):
        StackedSAE.from_saes([])
    stack = StackedSAE.from_saes(_saes("topk", n=2))
    with pytest.raises(ConfigError, match=r"needs input \(n, batch, d_in\)"):
        stack.forward_train(torch.randn(3, 4, 8))
    with pytest.raises(ConfigError, match="one SAE per stacked dictionary"):
        stack.copy_to_(_saes("topk", n=3))


@pytest.mark.parametrize("path", kernels.BACKWARD_PATHS)
def test_bf16_compute_path_keeps_fp32_gradients(path, monkeypatch):
    """The bf16 autocast path (forced on the CPU): matmuls in bf16, gradients returned in the float32 of
    the master weights and close to the float32 ones."""
    saes = _saes("topk", n=2, d_in=16, d_sae=64, k=4)
    x = torch.randn(2, 32, 16)

    def grads(stack):
        out = stack.forward_train(x)
        (((out.x_hat.float() - x) ** 2).sum() + (1e-2 * out.pre.float().pow(2).sum() if path == "dense" else 0.0)).backward()
        return out, {n: getattr(stack, n).grad for n in ("W_dec", "W_enc", "b_enc", "b_dec")}

    ref_out, ref = grads(StackedSAE.from_saes(saes))
    monkeypatch.setattr(kernels, "backward_path", lambda device: path)
    monkeypatch.setattr(kernels, "compute_dtype", lambda t: torch.bfloat16)
    out, got = grads(StackedSAE.from_saes(saes))
    assert out.pre.dtype == torch.bfloat16
    for name, g in got.items():
        assert g.dtype == torch.float32, name
        assert float((g - ref[name]).norm() / ref[name].norm()) < 0.15, name  # bf16 rounding flips a few top-k picks
