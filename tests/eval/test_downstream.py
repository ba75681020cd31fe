"""CE loss recovered and KL by splicing into a tiny GPT-2 (known answers: identity and zero SAEs)."""

from __future__ import annotations

import pytest
import torch

from universality.eval.downstream import ce_loss_recovered, kl_divergence, next_token_ce, splice_metrics
from universality.sae import sae_config, make_sae

SITE = "blocks.0.hook_resid_post"


def identity_sae(d: int):
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x exactly."""
    sae = make_sae(sae_config("relu", d, 2 * d, sparsity_coeff=1.0))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_formulas_known_values():
    assert ce_loss_recovered(2.0, 2.0, 5.0) == 1.0
    assert ce_loss_recovered(2.0, 5.0, 5.0) == 0.0
    assert ce_loss_recovered(2.0, 3.5, 5.0) == 0.5
    logits = torch.zeros(1, 3, 4)
    ids = torch.tensor([[0, 1, 2]])
    assert next_token_ce(logits, ids) == pytest.approx(torch.log(torch.tensor(4.0)).item())
    other = torch.randn(1, 3, 4)
    assert kl_divergence(other, other, ids) == pytest.approx(0.0, abs=1e-12)
    mask = torch.tensor([[1, 1, 0]])
    sharp = torch.zeros(1, 3, 4)
    sharp[0, 1] = torch.tensor([0.0, 0.0, 100.0, 0.0])  # position 1 predicts token 2, masked out
    assert next_token_ce(sharp, ids, mask) == pytest.approx(torch.log(torch.tensor(4.0)).item())


def test_identity_sae_recovers_everything_and_dead_sae_nothing(adapter):
    ids = torch.randint(0, 300, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    d = adapter.sites[SITE]
    ident = splice_metrics(adapter, identity_sae(d), SITE, ids, mask)
    assert ident["ce_sae"] == pytest.approx(ident["ce_clean"], abs=1e-5)
    assert ident["kl_sae"] == pytest.approx(0.0, abs=1e-6)
    assert ident["ce_loss_recovered_zero"] == pytest.approx(1.0, abs=1e-3)
    assert ident["ce_loss_recovered_mean"] == pytest.approx(1.0, abs=1e-3)
    dead = identity_sae(d)
    with torch.no_grad():
        dead.b_enc.fill_(-1e4)  # never fires: reconstruction = b_dec = 0 = zero ablation
    res = splice_metrics(adapter, dead, SITE, ids, mask, ablations=("zero",))
    assert res["ce_loss_recovered_zero"] == pytest.approx(0.0, abs=1e-6)
    assert res["kl_sae"] == pytest.approx(res["kl_zero_ablation"], rel=1e-6)
    assert res["kl_sae"] > 0
