"""GPU fast paths (skipped without CUDA): bf16 autocast with fp32 master weights, stacked training,
the k-sparse decoder and encoder backward on CUDA, pinned asynchronous prefetching."""

from __future__ import annotations

import pytest
import torch

from universality import synthetic as syn
from universality.activations.readers import DevicePrefetcher
from universality.sae import sae_config, make_sae
from universality.sae.stacked import StackedSAE, stacked_sparse_decode, stacked_topk_encoder
from universality.train import RunConfig, TrainConfig, Trainer

pytestmark = pytest.mark.gpu

D_IN = 32


def _source(n_batches=None):
    probs = syn.feature_probabilities(64, 4.0)
    dicts = {s: syn.planted_dictionary(64, D_IN, seed=i) for i, s in enumerate("ab")}
    return syn.PlantedSource(dicts, probs, 256, seed=0, noise_std=0.05, n_batches=n_batches)


def _configs():
    return [TrainConfig(sae_config("topk", D_IN, 256, k=4), site=s, seed=seed, lr=2e-3) for s in "ab" for seed in range(3)]


@pytest.mark.parametrize("stack", [False, True])
def test_bf16_autocast_keeps_fp32_master_weights(stack):
    run = RunConfig(steps=20, device="cuda", autocast=True, stack=stack, dead_window=2000)
    trainer = Trainer(_configs(), run)
    trainer.fit(_source(), progress=False)
    modules = [g.module for g in trainer.stacks] if stack else list(trainer.saes.values())
    for m in modules:
        assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in m.parameters())
    opts = [g.optim for g in trainer.stacks] if stack else list(trainer.optims.values())
    for opt in opts:
        for state in opt.state.values():
            assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    if stack:
        assert trainer.stacks[0].optim.defaults["fused"] is True
    assert all(torch.isfinite(torch.tensor(v["loss"])) for v in trainer.last_losses.values())


def test_stacked_training_on_cuda_equals_unstacked_in_fp32():
    run = dict(steps=15, device="cuda", autocast=False, dead_window=1000)
    plain = Trainer(_configs(), RunConfig(**run))
    plain.fit(_source(), progress=False)
    stacked = Trainer(_configs(), RunConfig(**run, stack=True))
    stacked.fit(_source(), progress=False)
    for key in plain.keys:
        a, b = plain.saes[key].state_dict(), stacked.saes[key].state_dict()
        for name in a:
            assert torch.allclose(a[name], b[name], atol=2e-4), (key, name)


@pytest.mark.parametrize("with_pre", [False, True], ids=["index-add", "dense-with-auxk-gradient"])
def test_sparse_paths_on_cuda_match_the_cpu(with_pre):
    g = torch.Generator().manual_seed(0)
    N, B, D, F, K = 3, 64, 16, 128, 8
    x = torch.randn(N, B, D, generator=g)
    W = torch.randn(N, D, F, generator=g) / 4
    b = torch.randn(N, F, generator=g) / 4
    Wd = torch.randn(N, F, D, generator=g)
    grads = {}
    for dev in ("cpu", "cuda"):
        xs, Ws, bs, Wds = (t.to(dev).requires_grad_(True) for t in (x, W, b, Wd))
        vals, idx, pre = stacked_topk_encoder(xs, Ws, bs, K)
        out = stacked_sparse_decode(idx, vals, Wds)
        loss = out.pow(2).sum() + (1e-3 * pre.pow(2).sum() if with_pre else 0.0)
        loss.backward()
        grads[dev] = [t.grad.cpu() for t in (xs, Ws, bs, Wds)]
    for a, c in zip(grads["cpu"], grads["cuda"]):
        assert torch.allclose(a, c, atol=1e-3, rtol=1e-3)


def test_stacked_forward_under_bf16_autocast_is_close_to_fp32():
    saes = [make_sae(sae_config("topk", 64, 512, k=16), seed=i, device="cuda") for i in range(2)]
    stack = StackedSAE.from_saes(saes)
    x = torch.randn(2, 1024, 64, device="cuda")
    ref = stack.forward_train(x).x_hat
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = stack.forward_train(x)
        loss = (out.x_hat.float() - x).pow(2).sum()
    loss.backward()
    assert stack.W_dec.grad.dtype == torch.float32 and stack.W_enc.grad.dtype == torch.float32
    rel = (out.x_hat.float() - ref).norm() / ref.norm()
    assert float(rel) < 0.05


def test_prefetcher_pins_and_copies_asynchronously():
    src = _source(n_batches=6)
    plain = list(_source(n_batches=6))
    got = list(DevicePrefetcher(src, device="cuda", depth=2))
    assert len(got) == 6
    for g, p in zip(got, plain):
        assert all(v.device.type == "cuda" for v in g.values())
        assert all(torch.equal(g[k].cpu(), p[k]) for k in p)
