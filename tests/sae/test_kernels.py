"""One TopK kernel: the single dictionary runs the stacked kernel as a stack of one.

The old single-dictionary encoder (``legacy_topk.py``, the code as it was) and the new path must
give the same values, indices and gradients; a TopK SAE and the one-dictionary stack built from it
must train identically.
"""

from __future__ import annotations

import pytest
import torch

from universality.sae import StackedSAE, make_sae, sae_config
from universality.sae.kernels import sparse_decode, topk_encoder

from legacy_topk import legacy_topk_encoder


def _grads(fn, x, W, b, gv, gp):
    xs, Ws, bs = (t.clone().requires_grad_(True) for t in (x, W, b))
    vals, idx, pre = fn(xs, Ws, bs)
    loss = (vals * gv).sum() + (0.0 if gp is None else (pre * gp).sum())
    loss.backward()
    return vals.detach(), idx, pre.detach(), xs.grad, Ws.grad, bs.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_pre_grad", [False, True])
def test_new_topk_encoder_matches_the_old_one(dtype, with_pre_grad):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 16, generator=g).to(dtype)
    W = torch.randn(16, 96, generator=g).to(dtype)
    b = (torch.randn(96, generator=g) - 1.0).to(dtype)  # some rows have fewer than k positive latents
    gv = torch.randn(64, 8, generator=g).to(dtype)
    gp = torch.randn(64, 96, generator=g).to(dtype) if with_pre_grad else None
    old = _grads(lambda *t: legacy_topk_encoder(*t, 8), x, W, b, gv, gp)
    new = _grads(lambda *t: topk_encoder(*t, 8), x, W, b, gv, gp)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name, a, c in zip(["vals", "idx", "pre", "grad_x", "grad_W", "grad_b"], old, new):
        if name == "idx":  # unsorted top-k: compare as sets per row
            assert torch.equal(a.sort(dim=-1).values, c.sort(dim=-1).values)
        elif name == "vals":
            assert torch.allclose(a.sort(dim=-1).values, c.sort(dim=-1).values, atol=tol, rtol=tol)
        else:
            assert torch.allclose(a, c, atol=tol, rtol=tol), name


@pytest.mark.parametrize("path", ["sparse", "index", "dense"])
def test_centring_inside_the_kernel_equals_centring_the_input(path, monkeypatch):
    """``topk_encoder(x, W, b, k, centre=c)`` gives the values, indices and gradients of
    ``topk_encoder(x - c, W, b, k)``; the centre's gradient is minus the summed input gradient."""
    from universality.sae import kernels

    monkeypatch.setattr(kernels, "backward_path", lambda device: path)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 16, generator=g, dtype=torch.float64)
    W = torch.randn(16, 96, generator=g, dtype=torch.float64, requires_grad=True)
    b = (torch.randn(96, generator=g, dtype=torch.float64) - 1.0).requires_grad_(True)
    c = torch.randn(16, generator=g, dtype=torch.float64, requires_grad=True)
    gv = torch.randn(64, 8, generator=g, dtype=torch.float64)
    gp = torch.randn(64, 96, generator=g, dtype=torch.float64) if path == "dense" else None

    def run(centred_inside: bool):
        for t in (W, b, c):
            t.grad = None
        vals, idx, pre = topk_encoder(x, W, b, 8, centre=c) if centred_inside else topk_encoder(x - c, W, b, 8)
        loss = (vals * gv).sum() + (0.0 if gp is None else (pre * gp).sum())
        loss.backward()
        return vals.detach(), idx, pre.detach(), W.grad.clone(), b.grad.clone(), c.grad.clone()

    outside, inside = run(False), run(True)
    assert torch.equal(outside[1], inside[1])
    for name, a, z in zip(["vals", "idx", "pre", "grad_W", "grad_b", "grad_c"], outside, inside):
        if name != "idx":
            assert torch.allclose(a, z, atol=1e-12, rtol=1e-12), name
    assert float(inside[5].abs().max()) > 0


def test_sparse_decode_is_the_dense_product():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(40, 12, generator=g, dtype=torch.float64, requires_grad=True)
    vals = torch.rand(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 40, (9, 5), generator=g)
    out = sparse_decode(idx, vals, W)
    dense = torch.zeros(9, 40, dtype=torch.float64).scatter_add(1, idx, vals) @ W
    assert torch.allclose(out, dense)
    (gW_s, gv_s) = torch.autograd.grad(out.sum(), (W, vals))
    (gW_d, gv_d) = torch.autograd.grad(dense.sum(), (W, vals))
    assert torch.allclose(gW_s, gW_d) and torch.allclose(gv_s, gv_d)


def test_a_topk_sae_and_its_stack_of_one_give_the_same_step():
    sae = make_sae(sae_config("topk", 16, 64, k=4), seed=5)
    stack = StackedSAE.from_saes([sae])
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    single = sae.forward_train(x)
    stacked = stack.forward_train(x.unsqueeze(0))
    assert torch.allclose(single.x_hat, stacked.x_hat[0], atol=1e-6)
    single.x_hat.pow(2).sum().backward()
    stacked.x_hat.pow(2).sum().backward()
    assert torch.allclose(sae.W_enc.grad, stack.W_enc.grad[0], atol=1e-5)
    assert torch.allclose(sae.W_dec.grad, stack.W_dec.grad[0], atol=1e-5)
