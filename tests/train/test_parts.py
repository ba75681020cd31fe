"""Schedules, optimizer-state flattening, the firing tracker and the remedies' losses."""

from __future__ import annotations

import pytest
import torch

from universality.errors import ConfigError
from universality.sae import sae_config, make_sae
from universality.train import RunConfig, TrainConfig
from universality.train.dead import FiringTracker, auxk_loss, ghost_grads_loss, resample_dead_
from universality.train.optim import flatten_optimizer_state, make_optimizer, reset_latent_state_, unflatten_optimizer_state
from universality.train.schedules import lr_factor, warmup_factor


def test_schedules_known_values():
    assert warmup_factor(0, 0) == 1.0
    assert warmup_factor(0, 4) == 0.25 and warmup_factor(3, 4) == 1.0 and warmup_factor(10, 4) == 1.0
    # 100 steps, decay over the last 20%
    assert lr_factor(50, 100, 0, 0.8) == 1.0
    assert lr_factor(80, 100, 0, 0.8) == 1.0
    assert lr_factor(90, 100, 0, 0.8) == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, 0.8) == pytest.approx(0.05)
    assert lr_factor(1, 100, 10, 1.0) == pytest.approx(0.2)


def test_optimizer_state_round_trip_is_exact():
    sae = make_sae(sae_config("topk", 4, 8, k=2))
    opt = make_optimizer(sae, 1e-3)
    for _ in range(3):
        sae.forward_train(torch.randn(5, 4)).x_hat.pow(2).sum().backward()
        opt.step()
    tensors, meta = flatten_optimizer_state(opt)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    fresh = make_optimizer(make_sae(sae_config("topk", 4, 8, k=2)), 5.0)
    unflatten_optimizer_state(fresh, {k: v.clone() for k, v in tensors.items()}, meta)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"]
    for idx in a["state"]:
        for name in a["state"][idx]:
            assert torch.equal(a["state"][idx][name], b["state"][idx][name])


def test_reset_latent_state_zeroes_only_those_latents():
    sae = make_sae(sae_config("relu", 4, 8, sparsity_coeff=1.0))
    with torch.no_grad():
        sae.b_enc.fill_(5.0)  # every latent fires, so every latent has optimizer state
    opt = make_optimizer(sae, 1e-3)
    sae.forward_train(torch.randn(5, 4, generator=torch.Generator().manual_seed(0))).x_hat.pow(2).sum().backward()
    opt.step()
    reset_latent_state_(opt, sae, torch.tensor([1, 3]))
    m_enc = opt.state[sae.W_enc]["exp_avg"]
    assert (m_enc[:, [1, 3]] == 0).all() and (m_enc[:, 0] != 0).any()
    assert (opt.state[sae.W_dec]["exp_avg_sq"][[1, 3]] == 0).all()
    assert (opt.state[sae.b_dec]["exp_avg"] != 0).any()


def test_firing_tracker_dead_and_density():
    tr = FiringTracker(3, window=10)
    tr.update(torch.tensor([[1.0, 0, 0]] * 4))
    tr.update(torch.tensor([[1.0, 2.0, 0]] * 6))  # 10 tokens: window complete
    assert tr.dead_mask().tolist() == [False, False, True]
    assert torch.allclose(tr.density(), torch.tensor([1.0, 0.6, 0.0], dtype=torch.float64))
    tr.revive_(torch.tensor([2]))
    assert not tr.dead_mask().any()


def test_auxk_and_ghost_are_zero_without_dead_latents_and_give_dead_latents_gradient():
    sae = make_sae(sae_config("topk", 6, 12, k=2))
    x = torch.randn(16, 6)
    out = sae.forward_train(x)
    none = torch.zeros(12, dtype=torch.bool)
    assert float(auxk_loss(sae, x, out.x_hat, out.pre, none, 3)) == 0.0
    mse = (out.x_hat - x).pow(2).sum(dim=1).mean()
    assert float(ghost_grads_loss(sae, x, out.x_hat, out.pre, none, mse)) == 0.0
    dead = torch.zeros(12, dtype=torch.bool)
    dead[5:] = True
    for loss in (auxk_loss(sae, x, out.x_hat, out.pre, dead, 3), ghost_grads_loss(sae, x, out.x_hat, out.pre, dead, mse)):
        sae.zero_grad()
        loss.backward(retain_graph=True)
        g = sae.W_enc.grad
        assert g[:, 5:].abs().sum() > 0 and g[:, :5].abs().sum() == 0


def test_auxk_selects_among_dead_columns_exactly_as_masking_the_live_ones():
    """The dead-column selection with the k-sparse gradient (``TopKSAE.preactivations_at``) gives the value
    and the gradient of every parameter of the definition (live latents masked with -inf, the top k_aux of
    each row, the gradient through the dense pre-activations) with scattered dead latents."""
    sae = make_sae(sae_config("topk", 6, 40, k=2)).double()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[[1, 7, 8, 19, 23, 30, 39]] = True
    params = [sae.W_enc, sae.b_enc, sae.b_dec, sae.W_dec]

    def reference():
        out = sae.forward_train(x)
        vals, idx = out.pre.masked_fill(~dead, float("-inf")).topk(3, dim=-1, sorted=False)
        e_hat = torch.nn.functional.embedding_bag(idx, sae.W_dec, per_sample_weights=vals, mode="sum")
        e = (x - out.x_hat).detach()
        return (e - e_hat).pow(2).sum() / (e - e.mean(dim=0)).pow(2).sum()

    want = reference()
    g_want = torch.autograd.grad(want, params)
    out = sae.forward_train(x)
    got = auxk_loss(sae, x, out.x_hat, out.pre, dead, 3)
    g_got = torch.autograd.grad(got, params)
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert g_got[0][:, ~dead].abs().sum() == 0 and g_got[0][:, dead].abs().sum() > 0


def test_auxk_with_the_training_loss_keeps_the_k_sparse_backward_and_its_gradient(monkeypatch):
    """mse + AuxK through ``preactivations_at`` equals the same loss with AuxK read from the dense
    pre-activations (which sends the encoder's backward down the dense path), for every parameter."""
    from universality.sae import kernels
    from universality.sae.base import SAE

    sae = make_sae(sae_config("topk", 8, 48, k=3)).double()
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::5] = True
    params = list(sae.parameters())

    def grads():
        out = sae.forward_train(x)
        loss = (out.x_hat - x).pow(2).sum(dim=1).mean() + auxk_loss(sae, x, out.x_hat, out.pre, dead, 4) / 32
        return loss, torch.autograd.grad(loss, params)

    paths = []
    real = kernels._sparse_encoder_grads
    monkeypatch.setattr(kernels, "_sparse_encoder_grads", lambda *a: paths.append(a[-1]) or real(*a))
    loss, g_sparse = grads()
    assert paths == ["sparse", "sparse"]  # AuxK's entries, then the encoder's own: no dense pre gradient
    monkeypatch.setattr(type(sae), "preactivations_at", SAE.preactivations_at)  # the gather through pre
    paths.clear()
    loss_dense, g_dense = grads()
    assert paths == []  # the dense path
    assert float(loss) == pytest.approx(float(loss_dense), rel=1e-12)
    for a, b in zip(g_sparse, g_dense):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_ghost_loss_is_rescaled_to_the_mse():
    sae = make_sae(sae_config("relu", 6, 12, sparsity_coeff=1.0))
    x = torch.randn(16, 6)
    out = sae.forward_train(x)
    mse = (out.x_hat - x).pow(2).sum(dim=1).mean()
    dead = torch.ones(12, dtype=torch.bool)
    assert float(ghost_grads_loss(sae, x, out.x_hat, out.pre, dead, mse).detach()) == pytest.approx(float(mse.detach()), rel=1e-5)


def test_resample_points_dead_latents_at_inputs():
    sae = make_sae(sae_config("relu", 6, 12, sparsity_coeff=1.0))
    x = torch.randn(32, 6)
    dead = torch.zeros(12, dtype=torch.bool)
    dead[[2, 7]] = True
    idx = resample_dead_(sae, x, dead, torch.Generator().manual_seed(0))
    assert idx.tolist() == [2, 7]
    rows = sae.W_dec[[2, 7]].detach()
    assert torch.allclose(rows.norm(dim=1), torch.ones(2), atol=1e-6)
    centred = (x - sae.b_dec.detach())
    cos = (rows @ (centred / centred.norm(dim=1, keepdim=True)).T).max(dim=1).values
    assert torch.allclose(cos, torch.ones(2), atol=1e-5)
    assert (sae.b_enc[[2, 7]] == 0).all()


def test_train_config_validation():
    with pytest.raises(ConfigError, match="sparsity_coeff must be a finite number in \\(0.0"):
        TrainConfig(sae_config("relu", 4, 8, sparsity_coeff=0.0))
    with pytest.raises(ConfigError, match="remedy"):
        TrainConfig(sae_config("topk", 4, 8, k=2), remedy="magic")
    with pytest.raises(ConfigError):
        TrainConfig(sae_config("topk", 4, 8, k=2), lr=0)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        RunConfig(steps=10, checkpoint_every=5)
    with pytest.raises(ConfigError):
        RunConfig(steps=0)
    cfg = TrainConfig(sae_config("topk", 4, 8, k=2), site="blocks.0.hook_resid_post", seed=3)
    assert cfg.key == "blocks.0.hook_resid_post/topk-8-s3" and cfg.effective_remedy == "auxk"
    assert TrainConfig(sae_config("relu", 4, 8, sparsity_coeff=1), name="x").key == "x"


def test_configs_from_yaml_like_mappings_and_hydra_registration():
    from omegaconf import OmegaConf

    from universality.train.config import register_configs

    cfg = TrainConfig.from_dict({"sae": {"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2}, "seed": 3})
    assert cfg.sae.k == 2 and cfg.key == "default/topk-8-s3"
    with pytest.raises(ConfigError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"sae": {"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2}, "lr0": 1})
    round_trip = TrainConfig.from_dict(OmegaConf.to_container(OmegaConf.structured(cfg)))
    assert round_trip == cfg
    register_configs()
    from hydra.core.config_store import ConfigStore

    assert "train_schema.yaml" in ConfigStore.instance().repo["sae"]


def test_sparse_tracker_update_equals_dense():
    g = torch.Generator().manual_seed(0)
    a, b = FiringTracker(10, window=30), FiringTracker(10, window=30)
    for _ in range(5):
        idx = torch.stack([torch.randperm(10, generator=g)[:3] for _ in range(8)])
        vals = torch.rand(8, 3, generator=g) - 0.2  # some selected values are not positive
        dense = torch.zeros(8, 10).scatter(1, idx, vals)
        a.update(dense)
        b.update_sparse(idx, vals)
        assert torch.equal(a.tokens_since_fired, b.tokens_since_fired) and torch.equal(a.count, b.count)
    assert torch.equal(a.density(), b.density())
