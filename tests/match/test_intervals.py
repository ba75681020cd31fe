"""Block bootstrap weights, interval formulas, seed intervals and the weighted code moments, on hand cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from universality.errors import ConfigError, MatchError
from universality.match import intervals as iv
from universality.match.intervals import (
    WeightedCodes,
    block_bootstrap_weights,
    bootstrap_interval,
    interval_from_replicates,
    seed_interval,
)
from universality.match.similarity import dense_similarity
from universality.match.summary import linear_cka_codes
from universality.match.views import codes_from_dense


def _codes(T: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.relu(torch.randn(T, 6, generator=g)) * (torch.rand(T, 6, generator=g) < 0.3)
    y = torch.relu(torch.randn(T, 5, generator=g)) * (torch.rand(T, 5, generator=g) < 0.3) + 0.5 * z[:, :5]
    return z, y, codes_from_dense(z, torch.arange(T)), codes_from_dense(y, torch.arange(T))


def test_block_weights_count_tokens_of_contiguous_runs():
    W = block_bootstrap_weights(50, 40, block=7, seed=3)
    assert W.shape == (40, 50) and np.all(W.sum(1) == 50) and np.all(W >= 0)
    assert abs(W.mean() - 1.0) < 1e-12
    # one block as long as the sequence: every replicate is a rotation of it, each token drawn once
    assert np.all(block_bootstrap_weights(10, 5, block=10, seed=1) == 1)
    # the same seed gives the same weights, another seed others
    assert np.array_equal(W, block_bootstrap_weights(50, 40, block=7, seed=3))
    assert not np.array_equal(W, block_bootstrap_weights(50, 40, block=7, seed=4))
    # a replicate of 2 blocks of 5 in 10 tokens: two circular runs of 5 consecutive tokens
    w = block_bootstrap_weights(10, 1, block=5, seed=0)[0]
    starts = [s for s in range(10) if all(w[(s + k) % 10] >= 1 for k in range(5))]
    assert starts
    with pytest.raises(ConfigError):
        block_bootstrap_weights(10, 1, block=11)


def test_interval_formulas_on_known_replicates():
    reps = np.arange(101.0)  # quantiles 2.5 and 97.5 exactly
    ci = interval_from_replicates(reps, 50.0, 0.95, "percentile")
    assert (ci.low, ci.high) == pytest.approx((2.5, 97.5)) and ci.covers(50) and ci.n == 101
    basic = interval_from_replicates(reps, 60.0, 0.95, "basic")  # reflected about the value
    assert (basic.low, basic.high) == pytest.approx((2 * 60 - 97.5, 2 * 60 - 2.5))
    assert "basic" in basic.method and "percentile" in ci.method
    nan = interval_from_replicates([np.nan, np.nan], 1.0)
    assert np.isnan(nan.low) and nan.n == 0
    with pytest.raises(ConfigError):
        interval_from_replicates(reps, 1.0, method="bca")


def test_bootstrap_interval_of_a_mean_covers_the_true_mean_in_most_samples():
    rng = np.random.default_rng(0)
    hits = 0
    for rep in range(100):
        x = rng.normal(1.0, 2.0, size=200)
        W = block_bootstrap_weights(200, 200, block=1, seed=rep)
        ci = bootstrap_interval(lambda w: w @ x / w.sum(1), float(x.mean()), W)
        hits += ci.covers(1.0)
    assert 85 <= hits <= 100  # nominal 95


def test_seed_interval_is_the_student_t_interval():
    ci = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / np.sqrt(3)  # t_{2, 0.975} * sd 1 / sqrt 3
    assert (ci.low, ci.high) == pytest.approx((2 - half, 2 + half)) and ci.n == 3
    with pytest.raises(MatchError):
        seed_interval([1.0, 2.0, float("nan")])


def test_weighted_codes_equal_the_codes_with_tokens_repeated():
    z, y, ca, cb = _codes()
    wc = WeightedCodes(ca, cb)
    ones = np.ones((1, ca.n_tokens))
    full = dense_similarity(ca, cb, "pearson").numpy()
    assert wc.pair_correlations(ones, [0, 1, 4], [0, 1, 2])[0] == pytest.approx(full[[0, 1, 4], [0, 1, 2]], abs=1e-6)
    assert wc.cka(ones)[0] == pytest.approx(linear_cka_codes(ca, cb), abs=1e-10)
    W = block_bootstrap_weights(ca.n_tokens, 2, block=10, seed=5)
    idx = np.repeat(np.arange(ca.n_tokens), W[1].astype(int))  # replicate 1 as an explicit resample
    ra = codes_from_dense(z[idx])
    rb = codes_from_dense(y[idx], fingerprint=ra.fingerprint)
    want = dense_similarity(ra, rb, "pearson").numpy()
    assert wc.pair_correlations(W, [0, 2], [0, 1])[1] == pytest.approx(want[[0, 2], [0, 1]], abs=1e-6)
    assert wc.cka(W)[1] == pytest.approx(linear_cka_codes(ra, rb), abs=1e-10)


def test_dense_codes_beyond_the_cofire_limit_are_refused(monkeypatch):
    _, _, ca, cb = _codes()
    monkeypatch.setattr(iv, "COFIRE_LIMIT", 10)
    with pytest.raises(MatchError, match="n_boot=0"):
        WeightedCodes(ca, cb).cka(np.ones((1, ca.n_tokens)))
