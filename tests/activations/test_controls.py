"""Control sources (universality.activations.controls): Gaussian rows with a store's moments, token embeddings."""

import itertools

import pytest
import torch

from activation_helpers import SITES

from universality.activations.controls import EmbeddingSource, GaussianSource, fit_gaussian, store_token_ids
from universality.errors import ConfigError, DataError


def test_fit_gaussian_matches_the_store_rows(small_store):
    x = small_store.rows(fields=(), sites=[SITES[0]])[SITES[0]].double()
    fit = fit_gaussian(small_store, SITES[0])
    assert fit.n_rows == small_store.n_rows
    assert torch.allclose(fit.mean, x.mean(0), atol=1e-8)
    assert torch.allclose(fit.cov, torch.cov(x.T), atol=1e-6)
    part = fit_gaussian(small_store, SITES[0], max_rows=500)
    assert part.n_rows == 500 and torch.allclose(part.mean, x[:500].mean(0), atol=1e-8)


def test_gaussian_source_has_the_fitted_moments_and_resumes(small_store):
    fit = fit_gaussian(small_store, SITES[0])
    src = GaussianSource({SITES[0]: fit}, batch_size=4096, seed=3)
    x = torch.cat([b[SITES[0]] for b in itertools.islice(iter(src), 8)]).double()
    scale = fit.cov.diagonal().mean()
    assert (x.mean(0) - fit.mean).abs().max() < 0.1 * scale.sqrt()
    assert (torch.cov(x.T) - fit.cov).abs().max() < 0.1 * scale
    # same seed, same batches; resuming from a state gives the next batch exactly
    a = GaussianSource({SITES[0]: fit}, batch_size=64, seed=3)
    it = iter(a)
    next(it)
    state = a.state_dict()
    expected = next(it)[SITES[0]]
    b = GaussianSource({SITES[0]: fit}, batch_size=64, seed=3)
    b.load_state_dict(state)
    assert torch.equal(next(iter(b))[SITES[0]], expected)
    assert not torch.equal(GaussianSource({SITES[0]: fit}, 64, seed=4).batch(1)[SITES[0]], expected)
    with pytest.raises(DataError):
        GaussianSource({SITES[0]: fit}, 64, seed=5).load_state_dict(state)


def test_embedding_source_reads_embedding_rows_and_resumes(small_store):
    ids = store_token_ids(small_store)
    assert ids.shape == (small_store.n_rows,)
    E = torch.randn(int(ids.max()) + 1, 16)
    src = EmbeddingSource(E, ids, sites=["a", "b"], batch_size=100, seed=1, epochs=1)
    batches = list(src)
    assert len(batches) == ids.numel() // 100
    rows = torch.cat([b["a"] for b in batches])
    assert torch.equal(batches[0]["a"], batches[0]["b"])
    # one epoch visits each token once: the rows are the embedding rows of the ids, in some order
    counts = torch.bincount(torch.cdist(rows, E).argmin(1), minlength=E.shape[0])
    assert (counts <= torch.bincount(ids, minlength=E.shape[0])).all()
    # endless: crossing epochs, then resume mid-way
    a = EmbeddingSource(E, ids, sites=["a"], batch_size=333, seed=2)
    it = iter(a)
    for _ in range(ids.numel() // 333 + 2):
        next(it)
    state = a.state_dict()
    expected = next(it)["a"]
    b = EmbeddingSource(E, ids, sites=["a"], batch_size=333, seed=2)
    b.load_state_dict(state)
    assert state["epoch"] >= 1 and torch.equal(next(iter(b))["a"], expected)


def test_control_sources_refuse_bad_input(small_store):
    ids = store_token_ids(small_store)
    with pytest.raises(DataError):
        EmbeddingSource(torch.randn(4, 8), ids, sites=["a"], batch_size=10)
    with pytest.raises(ConfigError):
        GaussianSource({}, batch_size=10)
    with pytest.raises(ConfigError):
        GaussianSource({SITES[0]: fit_gaussian(small_store, SITES[0], max_rows=50)}, batch_size=0)
