import numpy as np
import pytest
import torch

from universality.errors import ConfigError
from universality.match import codes_from_dense, match
from universality.match.summary import mppc
from universality.match.worlds import PairedWorldConfig, make_paired_world, seed_like_pair


def test_world_ground_truth_is_consistent():
    w = make_paired_world(PairedWorldConfig(n_features=40, d_a=16, d_b=24, shared_fraction=0.25))
    assert w.true_shared_fraction == pytest.approx(0.25) and w.shared_pairs.shape == (10, 2)
    ia, ib = w.shared_pairs[:, 0], w.shared_pairs[:, 1]
    assert torch.allclose(w.D_a[ia] @ w.embedding, w.D_b[ib], atol=1e-6)  # shared rows: rotated, embedded
    assert torch.allclose(w.D_a @ w.D_a.T, (w.D_a @ w.embedding) @ (w.D_a @ w.embedding).T, atol=1e-5)
    s = w.sample(100, seed=3)
    assert torch.equal(s.z_a[:, ia], s.z_b[:, ib])
    assert torch.allclose(s.x_a, s.z_a @ w.D_a) and s.x_b.shape == (100, 24)
    assert torch.equal(w.sample(100, seed=3).x_b, s.x_b)  # a pure function of the seed
    src = w.source(8, seed=1, n_batches=3)
    first = [b["a"] for b in src]
    src2 = w.source(8, seed=1, n_batches=3)
    src2.load_state_dict({"next_batch": 2, "seed": 1})
    assert torch.equal(next(iter(src2))["a"], first[2])
    with pytest.raises(ConfigError):
        PairedWorldConfig(d_a=32, d_b=16)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.75])
def test_true_codes_give_the_true_shared_fraction(fraction):
    w = make_paired_world(PairedWorldConfig(n_features=48, shared_fraction=fraction, seed=2))
    s = w.sample(3000)
    ca, cb = codes_from_dense(s.z_a, s.token_ids), codes_from_dense(s.z_b, s.token_ids)
    r = match(ca, cb, view="activations")
    assert r.fraction_above(0.5) == pytest.approx(fraction, abs=1 / 48)
    assert mppc(ca, cb)[0] == pytest.approx(fraction, abs=0.1)


def test_seed_like_pair_counterparts():
    D1, D2, perm = seed_like_pair(200, 32, noise=0.1, replaced=0.0, seed=1)
    cos = (D1 * D2[perm]).sum(1)
    assert cos.min() > 0.95
    D1, D2, perm = seed_like_pair(200, 32, noise=0.1, replaced=0.5, seed=1)
    assert 0.15 < ((D1 * D2[perm]).sum(1) > 0.9).float().mean() < 0.4  # both copies keep a row ~ 25%
    assert np.isclose(D2.norm(dim=1).numpy(), 1, atol=1e-5).all()


def test_unequal_world_sizes_and_zipf_frequencies():
    from universality.match.fractions import shared_fraction_readings
    from universality.match.worlds import zipf_probabilities

    p = zipf_probabilities(50, mean_active=3.0, exponent=1.0)
    assert float(p.sum()) == pytest.approx(3.0, rel=1e-5)
    assert float(p[0] / p[9]) == pytest.approx(10.0, rel=1e-4)  # p_i ~ 1 / (i + 1)
    cfg = PairedWorldConfig(n_features=40, n_features_b=64, d_a=16, d_b=24, shared_fraction=0.75, zipf=1.0, seed=4)
    w = make_paired_world(cfg)
    assert w.D_b.shape == (64, 24) and w.probs_b.shape == (64,) and w.shared_pairs.shape == (30, 2)
    assert w.true_shared_fraction == pytest.approx(0.75) and w.true_fraction_of_b == pytest.approx(30 / 64)
    assert sorted(w.probs_a.tolist()) == pytest.approx(sorted(zipf_probabilities(40, 3.0, 1.0).tolist()))
    # world A does not depend on B's size or on the shared fraction: one skyline serves them all
    w2 = make_paired_world(PairedWorldConfig(n_features=40, d_a=16, d_b=24, shared_fraction=0.0, zipf=1.0, seed=4))
    assert torch.equal(w2.D_a, w.D_a) and torch.equal(w2.probs_a, w.probs_a)
    assert torch.equal(w2.sample(50, seed=1).x_a, w.sample(50, seed=1).x_a)
    s = w.sample(4000, seed=2)
    ia, ib = w.shared_pairs[:, 0], w.shared_pairs[:, 1]
    assert torch.equal(s.z_a[:, ia], s.z_b[:, ib]) and s.z_b.shape == (4000, 64)
    r = shared_fraction_readings(codes_from_dense(s.z_a, s.token_ids), codes_from_dense(s.z_b, s.token_ids))
    assert r["headline"]["fraction_of_a"] == pytest.approx(0.75)
    assert r["headline"]["fraction_of_b"] == pytest.approx(30 / 64)
    with pytest.raises(ConfigError):
        PairedWorldConfig(n_features=40, n_features_b=20, shared_fraction=0.75)  # 30 shared do not fit in 20
