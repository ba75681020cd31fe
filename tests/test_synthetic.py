from __future__ import annotations

import pytest
import torch

from universality import synthetic as syn
from universality.errors import ConfigError, DataError


def test_probabilities_decay_and_sum():
    p = syn.feature_probabilities(512, 5.0, decay=2.0)
    assert p.sum().item() == pytest.approx(5.0, rel=1e-5)
    assert (p[1:] <= p[:-1]).all()
    assert (p[0] / p[-1]).item() == pytest.approx(torch.e**2, rel=1e-4)
    with pytest.raises(ConfigError):
        syn.feature_probabilities(10, 0.0)


def test_codes_have_the_planted_sparsity_and_magnitudes():
    p = syn.feature_probabilities(512, 5.0)
    c = syn.sample_codes(4000, p, torch.Generator().manual_seed(0))
    assert (c > 0).sum(dim=1).double().mean().item() == pytest.approx(5.0, rel=0.05)
    assert c.max() < 1.0 and c.min() >= 0.0
    freq = (c > 0).double().mean(dim=0)
    assert freq[:50].mean() > 2 * freq[-50:].mean()


def test_dictionary_rows_are_unit_and_recovery_metric():
    D = syn.planted_dictionary(64, 32, seed=1)
    assert torch.allclose(D.norm(dim=1), torch.ones(64), atol=1e-6)
    assert syn.mean_max_cosine(D, D) == pytest.approx(1.0, abs=1e-6)
    perm = D[torch.randperm(64)] * 3.0
    assert syn.mean_max_cosine(perm, D) == pytest.approx(1.0, abs=1e-6)
    random = syn.planted_dictionary(64, 32, seed=2)
    assert syn.mean_max_cosine(random, D) < 0.7
    half = D[:32]
    assert syn.mean_max_cosine(half, D, over="learned") == pytest.approx(1.0, abs=1e-6)
    assert syn.mean_max_cosine(half, D, over="truth") < 0.9


def test_source_is_deterministic_and_resumable():
    D = syn.planted_dictionary(32, 16)
    p = syn.feature_probabilities(32, 3.0)
    a = syn.PlantedSource(D, p, 8, seed=3, n_batches=6)
    all_batches = list(a)
    assert len(all_batches) == 6
    b = syn.PlantedSource(D, p, 8, seed=3, n_batches=6)
    it = iter(b)
    next(it), next(it)
    state = b.state_dict()
    c = syn.PlantedSource(D, p, 8, seed=3, n_batches=6)
    c.load_state_dict(state)
    rest = list(c)
    assert len(rest) == 4 and all(torch.equal(x, y) for x, y in zip(rest, all_batches[2:]))
    with pytest.raises(DataError, match="seed"):
        syn.PlantedSource(D, p, 8, seed=4).load_state_dict(state)


def test_paired_worlds_share_codes():
    p = syn.feature_probabilities(32, 3.0)
    DA, DB = syn.planted_dictionary(32, 16, seed=0), syn.planted_dictionary(32, 16, seed=1)
    src = syn.PlantedSource({"a": DA, "b": DB}, p, 64, seed=0)
    codes, acts = src.batch(0)
    assert torch.allclose(acts["a"], codes @ DA) and torch.allclose(acts["b"], codes @ DB)
    first = next(iter(src))
    assert set(first) == {"a", "b"}


def test_noise_and_make_toy():
    D, src = syn.make_toy(syn.ToyConfig(d_in=16, n_features=32, mean_active=2.0, noise_std=0.1), batch_size=32, n_batches=1)
    codes, acts = src.batch(0)
    resid = acts["default"] - codes @ D
    assert resid.std().item() == pytest.approx(0.1, rel=0.2)
    with pytest.raises(ConfigError):
        syn.ToyConfig(noise_std=-1.0)
