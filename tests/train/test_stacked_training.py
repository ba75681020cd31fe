"""Stacked training (RunConfig.stack): equal to unstacked training with the same seeds; resume; compile."""

from __future__ import annotations

import pytest
import torch

from universality import synthetic as syn
from universality.errors import ConfigError, TrainingDiverged
from universality.sae import SAE, sae_config
from universality.train import RunConfig, TrainConfig, Trainer
from universality.train.checkpoint import read_checkpoint
from universality.train.stacked_step import clip_grad_norm_per_dictionary_, group_keys, stacked_auxk_loss
from universality.train.dead import auxk_loss

D_IN, N_FEAT = 12, 24
SITES = ("a", "b")


def source(n_batches=None, batch=96):
    probs = syn.feature_probabilities(N_FEAT, 3.0)
    dicts = {s: syn.planted_dictionary(N_FEAT, D_IN, seed=i) for i, s in enumerate(SITES)}
    return syn.PlantedSource(dicts, probs, batch, seed=4, noise_std=0.05, n_batches=n_batches)


def seeds_by_sites(arch="topk", **train):
    """3 seeds x 2 sites of one architecture, 4x overcomplete so that latents die and AuxK acts."""
    return [TrainConfig(sae_config(arch, D_IN, 96, k=3), site=s, seed=seed, lr=4e-3, warmup_steps=2, **train)
            for s in SITES for seed in range(3)]


def _max_diff(a: Trainer, b: Trainer, key: str) -> float:
    sa, sb = a.saes[key].state_dict(), b.saes[key].state_dict()
    return max(float((sa[n] - sb[n]).abs().max()) for n in sa)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_stacked_training_equals_unstacked_training(arch):
    """Same init, same updates: AuxK on dead latents, decoder-gradient projection, unit rows, clipping."""
    run = dict(steps=30, dead_window=200, grad_clip=0.5)
    plain = Trainer(seeds_by_sites(arch), RunConfig(**run))
    plain_out = plain.fit(source(), progress=False)
    stacked = Trainer(seeds_by_sites(arch), RunConfig(**run, stack=True))
    stacked_out = stacked.fit(source(), progress=False)
    assert len(stacked.stacks) == 1 and stacked.stacks[0].module.n == 6 and stacked.solo_keys == []
    dead = sum(int(t.dead_mask().sum()) for t in plain.trackers.values())
    assert dead > 0  # AuxK was in play
    assert any(plain.last_losses[k]["auxk"] > 0 for k in plain.keys)
    for key in plain.keys:
        assert _max_diff(plain, stacked, key) < 1e-4, key
        for term, value in plain.last_losses[key].items():
            assert stacked.last_losses[key][term] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, term)
        assert torch.equal(plain.trackers[key].tokens_since_fired, stacked.trackers[key].tokens_since_fired)
        x = torch.randn(32, D_IN)
        assert torch.allclose(plain_out[key](x), stacked_out[key](x), atol=1e-4)
        assert stacked_out[key].meta["trained_steps"] == 30


def test_mixed_run_stacks_what_it_can(tmp_path):
    configs = seeds_by_sites() + [
        TrainConfig(sae_config("topk", D_IN, 96, k=3), site="a", seed=0, lr=1e-3, name="other-lr"),
        TrainConfig(sae_config("relu", D_IN, 48, sparsity_coeff=0.5), site="b", lr=3e-3),
        TrainConfig(sae_config("topk", D_IN, 48, k=3), site="b", remedy="resample", lr=3e-3),
    ]
    groups, solo = group_keys({c.key: c for c in configs})
    assert [len(g) for g in groups] == [6, 1] and groups[1] == ["other-lr"]
    assert solo == ["b/relu-48-s0", "b/topk-48-s0"]
    run = RunConfig(steps=8, dead_window=200, stack=True, out_dir=str(tmp_path / "out"))
    plain = Trainer(configs, RunConfig(steps=8, dead_window=200))
    plain.fit(source(), progress=False)
    trainer = Trainer(configs, run)
    trainer.fit(source(), progress=False)
    for c in configs:
        assert _max_diff(plain, trainer, c.key) < 1e-4
        loaded = SAE.load(tmp_path / "out" / c.key)  # one artifact folder per dictionary
        assert loaded.cfg == c.sae and loaded.meta["site"] == c.site


def test_stacked_resume_equals_uninterrupted_run(tmp_path):
    full = Trainer(seeds_by_sites(), RunConfig(steps=16, dead_window=200, stack=True))
    full.fit(source(), progress=False)
    run = RunConfig(steps=16, dead_window=200, stack=True, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=4)
    Trainer(seeds_by_sites(), run).fit(source(n_batches=10), progress=False)  # "killed" at step 10
    tensors, doc = read_checkpoint(tmp_path / "ck")
    assert doc["step"] == 10 and len(doc["stack_optimizers"]) == 1
    assert any(k.startswith("stackopt/0/") for k in tensors)
    resumed = Trainer(seeds_by_sites(), run)
    resumed.fit(source(), progress=False)
    assert resumed.step == 16
    for key in full.keys:
        a, b = full.saes[key].state_dict(), resumed.saes[key].state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
    sa, sb = full.stacks[0].optim.state_dict()["state"], resumed.stacks[0].optim.state_dict()["state"]
    for idx in sa:
        for name in sa[idx]:
            assert torch.equal(torch.as_tensor(sa[idx][name]), torch.as_tensor(sb[idx][name]))
    # an unstacked run cannot resume a stacked checkpoint (different optimizer layout)
    with pytest.raises(ConfigError, match="other configs"):
        Trainer(seeds_by_sites(), RunConfig(steps=16, dead_window=200, checkpoint_dir=str(tmp_path / "ck"))).fit(source(), progress=False)


def test_stacked_auxk_equals_auxk_per_dictionary():
    torch.manual_seed(0)
    W = torch.nn.functional.normalize(torch.randn(3, 20, 6), dim=-1)
    x, x_hat, pre = torch.randn(3, 9, 6), torch.randn(3, 9, 6), torch.randn(3, 9, 20)
    dead = torch.zeros(3, 20, dtype=torch.bool)
    dead[0, :7] = True  # more dead than k_aux
    dead[1, 3:5] = True  # fewer dead than k_aux
    got = stacked_auxk_loss(W, x, x_hat, pre, dead, k_aux=4)

    class _One:
        def __init__(self, W_dec):
            self.W_dec = W_dec

        def preactivations_at(self, x, pre, idx):
            return pre.gather(1, idx)

    for i in range(3):
        assert float(got[i]) == pytest.approx(float(auxk_loss(_One(W[i]), x[i], x_hat[i], pre[i], dead[i], 4)), rel=1e-5, abs=1e-7)
    assert float(got[2]) == 0.0


def test_stacked_auxk_through_the_kernel_equals_the_gather_through_pre():
    """The trainer's AuxK values (``StackedSAE.preactivations_at``: the k-sparse backward) give the loss and
    every parameter's gradient of the same loss read through the dense pre-activations."""
    from universality.sae import make_sae, sae_config
    from universality.sae.stacked import StackedSAE

    cfg = sae_config("topk", 6, 30, k=2)
    stack = StackedSAE.from_saes([make_sae(cfg, seed=20 + i) for i in range(3)]).double()
    with torch.no_grad():
        stack.b_dec.copy_(torch.randn(3, 6, dtype=torch.float64))
    x = torch.randn(3, 16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dead = torch.zeros(3, 30, dtype=torch.bool)
    dead[0, ::3] = True
    dead[1, :2] = True  # fewer dead than k_aux
    params = [stack.W_enc, stack.b_enc, stack.b_dec, stack.W_dec]

    def loss(sparse):
        out = stack.forward_train(x)
        at = (lambda idx: stack.preactivations_at(x, out.pre, idx)) if sparse else None
        total = ((out.x_hat - x) ** 2).sum() + stacked_auxk_loss(stack.W_dec, x, out.x_hat, out.pre, dead, 4, values_at=at).sum()
        return total, torch.autograd.grad(total, params)

    (a, ga), (b, gb) = loss(True), loss(False)
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-12)


def test_per_dictionary_clipping_matches_torch():
    torch.manual_seed(1)
    grads = [torch.randn(4, 5, 3) * 3, torch.randn(4, 5)]
    ref = [[g[i].clone() for g in grads] for i in range(4)]
    norms = clip_grad_norm_per_dictionary_(grads, 2.0)
    for i in range(4):
        params = [torch.zeros_like(g, requires_grad=True) for g in ref[i]]
        for p, g in zip(params, ref[i]):
            p.grad = g
        total = torch.nn.utils.clip_grad_norm_(params, 2.0)
        assert float(norms[i]) == pytest.approx(float(total), rel=1e-5)
        for p, g in zip(params, grads):
            assert torch.allclose(p.grad, g[i], atol=1e-6)


def test_stacked_optimizer_and_config_checks():
    trainer = Trainer(seeds_by_sites(), RunConfig(steps=1, stack=True))
    opt = trainer.stacks[0].optim
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    assert all(p.dtype == torch.float32 for p in trainer.stacks[0].module.parameters())
    with pytest.raises(ConfigError, match="stack=True"):
        RunConfig(steps=1, compile=True)

    class _OwnForward(Trainer):  # e.g. a data-parallel trainer: its forward must not be bypassed
        def _forward_train(self, key, sae, x):
            return sae.forward_train(x)

    with pytest.raises(ConfigError, match="overrides the training forward"):
        _OwnForward(seeds_by_sites(), RunConfig(steps=1, stack=True))


def test_stacked_divergence_names_the_dictionary():
    trainer = Trainer(seeds_by_sites(), RunConfig(steps=3, stack=True))
    with torch.no_grad():
        trainer.saes["b/topk-96-s1"].W_enc.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="b/topk-96-s1"):
        trainer.fit(source(), progress=False)


@pytest.mark.slow
def test_compiled_stacked_step_matches_eager():
    pytest.importorskip("torch._inductor")
    configs = seeds_by_sites()[:4]
    eager = Trainer(configs, RunConfig(steps=6, dead_window=200, stack=True))
    eager.fit(source(), progress=False)
    try:
        compiled = Trainer(configs, RunConfig(steps=6, dead_window=200, stack=True, compile=True))
        compiled.fit(source(), progress=False)
    except Exception as exc:  # no C++ compiler for the inductor here
        if "compiler" in str(exc).lower() or "InductorError" in type(exc).__name__:
            pytest.skip(f"torch.compile cannot build kernels here: {type(exc).__name__}")
        raise
    for key in eager.keys:
        assert _max_diff(eager, compiled, key) < 1e-4


def test_new_run_fields_leave_unstacked_checkpoint_hashes_unchanged():
    """Checkpoints written before ``stack``/``compile`` existed still resume: those fields enter the
    config hash only when stacking is on."""
    from universality.io import stable_hash

    configs = seeds_by_sites()[:2]
    old_run = {k: v for k, v in RunConfig(steps=3).to_dict().items()
               if k not in ("checkpoint_dir", "checkpoint_every", "out_dir", "device", "autocast", "stack", "compile",
                            "log_to", "log_dir")}  # fields added later, left out of the hash
    expected = stable_hash({"configs": [c.to_dict() for c in configs], "run": old_run})
    assert Trainer(configs, RunConfig(steps=3)).config_hash == expected
    assert Trainer(configs, RunConfig(steps=3, stack=True)).config_hash != expected
    assert Trainer(configs, RunConfig(steps=3, stack=True, compile=True)).config_hash == \
        Trainer(configs, RunConfig(steps=3, stack=True)).config_hash
    assert Trainer(configs, RunConfig(steps=3, log_dir="x")).config_hash == expected  # log_to: tests/train/test_tracking.py
