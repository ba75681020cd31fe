"""The training loop: many dictionaries per stream, artifacts, resume, divergence."""

from __future__ import annotations

import math

import pytest
import torch

from universality import synthetic as syn
from universality.errors import ConfigError, DataError, TrainingDiverged
from universality.sae import SAE, sae_config
from universality.train import RunConfig, TrainConfig, Trainer, train_saes
from universality.train.checkpoint import read_checkpoint

D_IN, N_FEAT = 16, 32


def toy_source(batch_size=128, n_batches=None, seed=0, sites=None):
    probs = syn.feature_probabilities(N_FEAT, 3.0)
    if sites:
        dicts = {s: syn.planted_dictionary(N_FEAT, D_IN, seed=i) for i, s in enumerate(sites)}
        return syn.PlantedSource(dicts, probs, batch_size, seed=seed, n_batches=n_batches)
    return syn.PlantedSource(syn.planted_dictionary(N_FEAT, D_IN), probs, batch_size, seed=seed, n_batches=n_batches)


def mixed_configs():
    return [
        TrainConfig(sae_config("topk", D_IN, 32, k=3), lr=3e-3, warmup_steps=3),
        TrainConfig(sae_config("batchtopk", D_IN, 32, k=3), lr=3e-3),
        TrainConfig(sae_config("relu", D_IN, 32, sparsity_coeff=0.5), lr=3e-3, remedy="resample", sparsity_warmup_steps=5),
        TrainConfig(sae_config("jumprelu", D_IN, 32, sparsity_coeff=1.0), lr=3e-3, remedy="ghost"),
        TrainConfig(sae_config("gated", D_IN, 32, sparsity_coeff=1.0), lr=3e-3),
    ]


def test_resume_equals_uninterrupted_run_bitwise(tmp_path):
    run_full = RunConfig(steps=24, dead_window=256, resample_every=5)
    full = Trainer(mixed_configs(), run_full)
    full.fit(toy_source(), progress=False)

    run_ck = RunConfig(steps=24, dead_window=256, resample_every=5, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=4)
    first = Trainer(mixed_configs(), run_ck)
    first.fit(toy_source(n_batches=10), progress=False)  # the stream stops early: "killed" at step 10
    assert first.step == 10
    _, doc = read_checkpoint(tmp_path / "ck")
    assert doc["step"] == 10 and doc["source_state"]["next_batch"] == 10
    second = Trainer(mixed_configs(), run_ck)
    second.fit(toy_source(), progress=False)  # resumes at step 10, batch 10
    assert second.step == 24
    for key in full.keys:
        a, b = full.saes[key].state_dict(), second.saes[key].state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
        sa, sb = full.optims[key].state_dict()["state"], second.optims[key].state_dict()["state"]
        for idx in sa:
            for name in sa[idx]:
                assert torch.equal(sa[idx][name], sb[idx][name])
        assert torch.equal(full.trackers[key].tokens_since_fired, second.trackers[key].tokens_since_fired)


def test_resume_with_other_configs_is_refused(tmp_path):
    run = RunConfig(steps=4, checkpoint_dir=str(tmp_path / "ck"))
    Trainer(mixed_configs()[:1], run).fit(toy_source(), progress=False)
    other = [TrainConfig(sae_config("topk", D_IN, 32, k=4), lr=3e-3)]
    with pytest.raises(ConfigError, match="other configs"):
        Trainer(other, run).fit(toy_source(), progress=False)


def test_many_sites_seeds_widths_in_one_pass(tmp_path):
    sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    configs = [TrainConfig(sae_config("topk", D_IN, w, k=3), site=s, seed=seed, lr=3e-3)
               for s in sites for seed in (0, 1) for w in (32, 64)]
    meta = {"model": "toy", "revision": "step0", "dataset": "planted", "subset_hash": "h0"}
    out = train_saes(toy_source(sites=sites), configs, RunConfig(steps=5, out_dir=str(tmp_path / "out")), meta=meta, progress=False)
    assert len(out) == 8
    assert "blocks.1.hook_resid_post/topk-64-s1" in out
    a, b = out["blocks.0.hook_resid_post/topk-32-s0"], out["blocks.0.hook_resid_post/topk-32-s1"]
    assert not torch.equal(a.W_dec, b.W_dec)  # seeds differ
    loaded = SAE.load(tmp_path / "out" / "blocks.1.hook_resid_post" / "topk-64-s1")
    x = torch.randn(8, D_IN)
    assert torch.allclose(loaded(x), out["blocks.1.hook_resid_post/topk-64-s1"](x), atol=1e-6)
    m = loaded.meta
    assert m["model"] == "toy" and m["subset_hash"] == "h0" and m["site"] == "blocks.1.hook_resid_post"
    assert m["normalisation"]["folded_into_weights"] and m["normalisation"]["scale"] > 0
    assert {"explained_variance", "l0", "mse", "dead_fraction"} <= set(m["metrics"])
    assert m["train"]["lr"] == 3e-3 and m["trained_steps"] == 5


def test_normalisation_scale_gives_target_mean_squared_norm():
    src = toy_source()
    tr = Trainer([TrainConfig(sae_config("topk", D_IN, 32, k=3))], RunConfig(steps=1))
    batch = next(iter(toy_source()))
    tr.initialise({"default": batch})
    s = tr.scales["default"]
    assert float((batch * s).pow(2).sum(dim=1).mean()) == pytest.approx(D_IN, rel=1e-5)
    from universality.sae import geometric_median

    assert torch.allclose(tr.saes["default/topk-32-s0"].b_dec.detach(), geometric_median(batch * s), atol=1e-6)
    del src


class _Poisoned:
    """A source whose batch ``bad_at`` holds Inf (or huge values that overflow after scaling)."""

    def __init__(self, bad_at: int, value: float):
        self.inner, self.bad_at, self.value = toy_source(), bad_at, value

    def __iter__(self):
        for i, x in enumerate(self.inner):
            yield torch.full_like(x, self.value) if i == self.bad_at else x

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, s):
        self.inner.load_state_dict(s)


@pytest.mark.parametrize("value, match", [(math.inf, "activations of site"), (3e38, "loss of")])
def test_divergence_stops_with_the_step_and_keeps_last_checkpoint(tmp_path, value, match):
    run = RunConfig(steps=20, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=f"{match}.*at step 5"):
        Trainer(mixed_configs()[:1], run).fit(_Poisoned(5, value), progress=False)
    tensors, doc = read_checkpoint(tmp_path / "ck")
    assert doc["step"] == 4
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_bad_sources_and_sites():
    with pytest.raises(DataError, match="no site"):
        train_saes(toy_source(), TrainConfig(sae_config("topk", D_IN, 32, k=3), site="blocks.0.hook_mlp_out"), steps=2, progress=False)
    with pytest.raises(DataError, match="expects d_in"):
        train_saes(toy_source(), TrainConfig(sae_config("topk", 8, 32, k=3)), steps=2, progress=False)
    with pytest.raises(DataError, match="yielded"):
        train_saes([[1, 2]], TrainConfig(sae_config("topk", D_IN, 32, k=3)), steps=2, progress=False)
    with pytest.raises(ConfigError, match="share the key"):
        Trainer([TrainConfig(sae_config("topk", D_IN, 32, k=3))] * 2, RunConfig(steps=1))
    with pytest.raises(ConfigError, match="steps="):
        train_saes(toy_source(), TrainConfig(sae_config("topk", D_IN, 32, k=3)))


def test_plain_tensor_list_is_a_source():
    batches = [torch.randn(64, D_IN) for _ in range(3)]
    out = train_saes(batches, TrainConfig(sae_config("topk", D_IN, 32, k=3), name="mine"), steps=10, progress=False)
    assert list(out) == ["mine"] and out["mine"].meta["trained_steps"] == 3


@pytest.mark.gpu
def test_bf16_autocast_training_on_cuda(tmp_path):
    run = RunConfig(steps=20, device="cuda", dead_window=256, resample_every=5, checkpoint_dir=str(tmp_path / "ck"))
    out = train_saes(toy_source(), mixed_configs(), run, progress=False)
    for sae in out.values():
        assert sae.W_dec.device.type == "cuda" and torch.isfinite(sae.W_dec).all()
        assert sae.meta["metrics"]["explained_variance"] > 0.0
