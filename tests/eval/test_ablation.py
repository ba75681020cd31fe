"""Ablation agreement on known answers: a latent against itself and against its permuted copy agrees
exactly, random pairs do not, a latent that never fires has no effect, other tokenizers are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from universality.errors import MatchError
from universality.eval.ablation import ablation_effects, agreement_rows, check_same_tokens, pair_agreement
from universality.sae import make_sae, sae_config

SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def batch(adapter):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, adapter.model.config.vocab_size, (2, 16), generator=g)
    return ids, torch.ones_like(ids)


def _sae(d: int, seed: int = 0):
    sae = make_sae(sae_config("relu", d, 12, sparsity_coeff=1.0), seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)  # most latents fire somewhere on the batch
        sae.W_dec.mul_(3.0)  # and their ablation moves the logits visibly
    return sae


def _permuted(sae, perm: torch.Tensor):
    out = make_sae(sae.cfg, seed=99)
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc[:, perm])
        out.b_enc.copy_(sae.b_enc[perm])
        out.W_dec.copy_(sae.W_dec[perm])
        out.b_dec.copy_(sae.b_dec)
    return out


def test_a_permuted_copy_agrees_exactly_and_random_pairs_do_not(adapter, batch):
    sae = _sae(adapter.d_model)
    latents = list(range(8))
    ea = ablation_effects(adapter, sae, SITE, latents, *batch, progress=False)
    assert ea.abs().sum(1).gt(0).all()  # every ablation changes something
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    inv = torch.argsort(perm)
    eb = ablation_effects(adapter, _permuted(sae, perm), SITE, [int(inv[f]) for f in latents], *batch, progress=False)
    assert torch.allclose(ea, eb, atol=1e-8)
    rows = agreement_rows(ea, eb, sky_a=ea, sky_b=ea, n_random=100)
    assert rows["value"] == pytest.approx(1.0) and rows["skyline"] == pytest.approx(1.0)
    assert rows["floor"] < 0.9
    assert rows["n_pairs"] == 8


def test_a_latent_that_never_fires_has_no_effect(adapter, batch):
    sae = _sae(adapter.d_model)
    with torch.no_grad():
        sae.b_enc[5] = -1e6
    e = ablation_effects(adapter, sae, SITE, [5, 0], *batch, progress=False)
    assert float(e[0].abs().max()) == 0.0
    assert np.isnan(pair_agreement(e[:1], e[:1])[0])


def test_other_tokenizers_are_refused():
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    check_same_tokens(Tok({"a": 0}), Tok({"a": 0}))
    with pytest.raises(MatchError, match="different tokenizers"):
        check_same_tokens(Tok({"a": 0}), Tok({"b": 0}))


def test_blocks_of_latents_give_the_same_effects_as_one_at_a_time(adapter, batch):
    sae = _sae(adapter.d_model)
    one = ablation_effects(adapter, sae, SITE, range(7), *batch, progress=False, batch_features=1)
    many = ablation_effects(adapter, sae, SITE, range(7), *batch, progress=False, batch_features=3)
    torch.testing.assert_close(one, many, atol=1e-9, rtol=0)


def test_compare_reports_ablation_agreement_with_floor_and_skyline(adapter, batch):
    from universality.eval.ablation import AblationInputs
    from universality.match import compare

    ids, mask = batch
    x = adapter.capture(ids, [SITE])[SITE].reshape(-1, adapter.d_model).float()
    sae = _sae(adapter.d_model)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    inputs = AblationInputs(adapter, SITE, adapter, SITE, ids, mask, n_pairs=6, batch_features=4)
    own = compare(sae, _permuted(sae, perm), activations=x, skyline=_sae(adapter.d_model, seed=7), n_perm=0, n_boot=0,
                  ablation=inputs)
    row = own.set_index("metric").loc["ablation_agreement"]
    assert row["value"] == pytest.approx(1.0) and row["floor"] < 0.9 and np.isfinite(row["skyline_a"])
    assert row["source"].startswith("Cunningham")
    other = compare(sae, _sae(adapter.d_model, seed=21), activations=x, n_perm=0, n_boot=0, ablation=inputs)
    unrelated = other.set_index("metric").loc["ablation_agreement"]
    assert unrelated["value"] < row["value"] and "no skyline" in unrelated["note"]
    no_acts = compare(sae, sae, n_perm=0, ablation=inputs).set_index("metric").loc["ablation_agreement"]
    assert np.isnan(no_acts["value"]) and "needs activations" in no_acts["note"]
