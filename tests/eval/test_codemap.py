"""Known answers for sparse code maps between dictionaries (universality.eval.codemap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from universality.errors import ConfigError, DataError
from universality.eval.codemap import (
    CodeMapConfig,
    agreement,
    correlation_pairs,
    fit_code_map,
    matching_map_ev,
    shuffled_floor_ev,
    split_tokens,
)
from universality.match.views import codes_from_dense

T = 3000


def sparse_codes(T: int, d: int, seed: int, dead: int = 0) -> torch.Tensor:
    """Non-negative sparse codes with skewed firing rates (30% down to 1%) and ``dead`` silent last columns."""
    g = torch.Generator().manual_seed(seed)
    p = torch.logspace(-0.5, -2, d)
    z = (torch.rand(T, d, generator=g) < p) * (torch.rand(T, d, generator=g) + 0.5)
    if dead:
        z[:, d - dead:] = 0
    return z


def planted(seed: int = 0, d_src: int = 40, d_tgt: int = 24, dead: int = 4):
    """z_tgt = relu(z_src @ W_true + noise), W_true with 3 positive non-zeros per target on live sources."""
    g = torch.Generator().manual_seed(seed + 100)
    zs = sparse_codes(T, d_src, seed, dead)
    W = torch.zeros(d_src, d_tgt)
    for j in range(d_tgt):
        W[torch.randperm(d_src - dead, generator=g)[:3], j] = torch.rand(3, generator=g) + 0.5
    zt = torch.relu(zs @ W + 0.02 * torch.randn(T, d_tgt, generator=g))
    return zs, zt, W


def test_planted_sparse_map_is_recovered():
    zs, zt, W = planted()
    cfg = CodeMapConfig()
    m = fit_code_map(zs, zt, cfg)
    floor = shuffled_floor_ev(zs, zt, cfg)
    assert m.ev > 0.9 and floor < 0.1
    assert m.dead_sources == 4 and m.dead_targets == 0 and m.n_test == T // 4
    assert (m.weights[-4:] == 0).all()  # dead sources get no weight
    true = set(zip(*np.nonzero(W.numpy())))
    top = m.top_sources(3)
    found = set(zip(top["source"], top["target"]))
    tp = len(found & true)
    assert tp / len(found) > 0.8 and tp / len(true) > 0.8
    assert m.density == pytest.approx(3 / 40, abs=0.03)
    edges = m.edges(0.05)
    assert list(edges.columns) == ["source", "target", "weight"]
    assert (edges["weight"].abs().diff().dropna() <= 0).all()  # strongest first
    # R^2 per target agrees with the pooled EV
    assert np.isfinite(m.r2).all() and m.r2.min() > 0.8


def test_unrelated_codes_explain_nothing_held_out():
    zs, zt = sparse_codes(T, 32, 1), sparse_codes(T, 24, 2)
    m = fit_code_map(zs, zt)
    assert abs(m.ev) < 0.1
    assert m.density < 0.5


def test_permuted_copy_maps_to_a_permutation():
    zs = sparse_codes(T, 32, 3, dead=2)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(7))
    zt = zs[:, perm] * 2.0  # target latent j is source perm[j], rescaled
    m = fit_code_map(zs, zt)
    pairs = correlation_pairs(zs, zt)
    assert m.ev > 0.99 and m.dead_targets == 2
    live = np.asarray(m.live_targets)
    best = m.weights.abs().argmax(0).numpy()
    assert (best[live] == perm.numpy()[live]).all()
    assert agreement(m, pairs) == 1.0
    assert matching_map_ev(zs, zt, pairs) == pytest.approx(m.ev, abs=0.01)
    # FeatureCodes on shared tokens give the same fit as dense matrices
    tok = torch.arange(T)
    m2 = fit_code_map(codes_from_dense(zs, tok), codes_from_dense(zt, tok))
    assert m2.ev == pytest.approx(m.ev, abs=1e-6)


def test_unequal_widths_with_duplicated_targets():
    zs = sparse_codes(T, 16, 4)
    origin = torch.cat([torch.arange(16), torch.arange(8)])  # 24 targets: the first 8 sources twice
    zt = zs[:, origin]
    m = fit_code_map(zs, zt)
    assert m.weights.shape == (16, 24) and m.ev > 0.99
    assert (m.weights.abs().argmax(0) == origin).all()
    pairs = correlation_pairs(zs, zt)
    assert len(pairs.pairs) == 16  # one-to-one: 8 duplicates stay unmatched
    assert agreement(m, pairs) == 1.0
    # the matching baseline predicts the 8 unmatched duplicates by their mean only
    assert matching_map_ev(zs, zt, pairs) < m.ev - 0.1


@pytest.mark.parametrize("kw", [{"l1": -1.0}, {"l1": float("nan")}, {"steps": 0}, {"steps": 2.5}, {"lr": 0.0},
                                {"batch_size": 0}, {"holdout": 0.0}, {"holdout": 1.0}, {"seed": "a"}])
def test_config_validation(kw):
    with pytest.raises(ConfigError, match="; "):
        CodeMapConfig(**kw)


def test_bad_inputs():
    with pytest.raises(DataError, match="different tokens"):
        fit_code_map(torch.zeros(10, 3), torch.zeros(11, 3))
    with pytest.raises(DataError, match="too few"):
        split_tokens(3, 0.25)
    with pytest.raises(DataError, match="outside"):
        matching_map_ev(torch.rand(20, 3), torch.rand(20, 3), [(5, 0)])


def test_deterministic_for_a_fixed_seed():
    zs, zt, _ = planted(seed=5, d_src=20, d_tgt=12, dead=0)
    cfg = CodeMapConfig(steps=60, batch_size=256, seed=3)
    a, b = fit_code_map(zs, zt, cfg), fit_code_map(zs, zt, cfg)
    assert torch.equal(a.weights, b.weights) and a.ev == b.ev
    assert shuffled_floor_ev(zs, zt, cfg) == shuffled_floor_ev(zs, zt, cfg)
    c = fit_code_map(zs, zt, CodeMapConfig(steps=60, batch_size=256, seed=4))
    assert not torch.equal(a.weights, c.weights)  # the seed drives the minibatches
