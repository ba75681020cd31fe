from __future__ import annotations

import pytest
import torch

from universality import synthetic as syn
from universality.errors import ConfigError
from universality.eval.metrics import evaluate
from universality.eval.postprocess import finetune_decoder, latent_stats, prune, prune_mask
from universality.sae import sae_config, make_sae
from universality.train import RunConfig, TrainConfig, train_saes


def test_prune_criteria_and_exactness():
    sae = make_sae(sae_config("relu", 8, 16, sparsity_coeff=1.0, decoder_norm="free"), seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(0.5)
        sae.b_enc[[0, 1]] = -1e3  # never fire
        sae.W_enc[:, 2] = 0.0
        sae.b_enc[2] = 0.2  # always fires, max activation 0.2 < 1
        sae.W_dec[3] *= 0.5  # free decoder norm 0.5 < 0.99
    sae.meta["normalisation"] = {"scale": 2.0, "folded_into_weights": True}
    x = [torch.randn(100, 8) * 3 for _ in range(2)]
    stats = latent_stats(sae, x)
    assert stats["max_act"][2].item() == pytest.approx(0.4)  # 0.2 raw = 0.4 normalised units
    keep, report = prune_mask(sae, stats, max_act_below=0.5)
    assert not keep[[0, 1, 2, 3]].any() and report["density"] == 2 and report["decoder_norm"] == 1
    assert report["pruned"] == 16 - int(keep.sum())
    small = prune(sae, keep)
    assert small.d_sae == int(keep.sum()) and small.meta["pruned"]["of"] == 16
    kept_only = sae.encode(x[0]) * keep
    with torch.no_grad():
        assert torch.allclose(small(x[0]), sae.decode(kept_only), atol=1e-5)
    with pytest.raises(ConfigError):
        prune(sae, torch.zeros(16, dtype=torch.bool))


def test_finetune_undoes_feature_suppression():
    D, src = syn.make_toy(syn.ToyConfig(d_in=16, n_features=32, mean_active=3.0), batch_size=256)
    cfg = TrainConfig(sae_config("relu", 16, 32, sparsity_coeff=4.0), lr=3e-3, name="l1")
    sae = train_saes(src, cfg, RunConfig(steps=150), progress=False)["l1"]
    data = [src.batch(1000 + i)[1]["default"] for i in range(4)]
    evals = [src.batch(2000)[1]["default"]]
    tuned, report = finetune_decoder(sae, data, steps=150, eval_batches=evals)
    assert report["l2_ratio_before"] < 0.9  # strong L1 shrinks the reconstruction
    assert report["l2_ratio_after"] > report["l2_ratio_before"] + 0.15  # measured 0.637 -> 0.865
    assert report["explained_variance_after"] > report["explained_variance_before"] + 0.2  # 0.367 -> 0.780
    # the returned SAE is the fine-tuned model with the scale folded in, on raw activations
    m = evaluate(tuned, evals)
    assert m["l2_ratio"] == pytest.approx(report["l2_ratio_after"], rel=1e-4)
    assert m["explained_variance"] == pytest.approx(report["explained_variance_after"], rel=1e-4)
    assert torch.equal((tuned.encode(evals[0]) > 0), (sae.encode(evals[0]) > 0))  # sparsity pattern kept
    assert torch.allclose(tuned.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    with pytest.raises(ConfigError):
        finetune_decoder(make_sae(sae_config("topk", 16, 32, k=2)), data, steps=1)
