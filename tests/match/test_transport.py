import numpy as np
import ot
import pytest
import torch

from universality.errors import ConfigError, MatchError
from universality.match import match
from universality.match.similarity import dense_similarity
from universality.match.transport import (
    calibrated_mass,
    comparable_skyline,
    emd_match,
    partial_match,
    partial_shared_fraction,
    reduce_features,
    sinkhorn_match,
    unbalanced_match,
    uot_marginal_violation,
)

from .helpers import permuted_noisy_copy, rotated, unit


def test_emd_equals_pot():
    g = torch.Generator().manual_seed(1)
    A, B = unit(torch.randn(25, 8, generator=g)), unit(torch.randn(17, 8, generator=g))
    S = dense_similarity(A, B).double().numpy()
    r = emd_match(torch.as_tensor(S))
    P = ot.emd(np.full(25, 1 / 25), np.full(17, 1 / 17), 1 - S)
    assert np.allclose(r.plan, P) and r.value == pytest.approx(float((P * (1 - S)).sum()))
    assert r.meta["mass"] == pytest.approx(1.0)


def test_entropic_and_partial_plans_have_expected_mass_and_recover_copy():
    A, B, perm = permuted_noisy_copy(n=40, noise=0.05)
    S = dense_similarity(A, B)
    for r in (sinkhorn_match(S, reg=0.01), emd_match(S)):
        assert np.array_equal(perm.numpy()[r.pairs[:, 0]], r.pairs[:, 1])
    assert partial_match(S, mass=0.3).meta["mass"] == pytest.approx(0.3, abs=1e-6)
    lo = unbalanced_match(S, reg=0.01, reg_m=0.01).meta["mass"]
    hi = unbalanced_match(S, reg=0.01, reg_m=1.0).meta["mass"]
    assert lo < hi  # mass grows with the marginal relaxation: it must be calibrated before it is read
    with pytest.raises(ConfigError):
        partial_match(S, mass=1.5)


def test_mass_calibration_reads_shared_fraction_between_anchors():
    g = torch.Generator().manual_seed(3)
    A = unit(torch.randn(60, 32, generator=g))
    half = torch.cat([A[:30] + 0.02 * torch.randn(30, 32, generator=g), torch.randn(30, 32, generator=g)])
    S = dense_similarity(A, unit(half))
    S_sky = dense_similarity(A, unit(A + 0.02 * torch.randn(60, 32, generator=g)))
    S_null = dense_similarity(A, unit(torch.randn(60, 32, generator=g)))
    cal = calibrated_mass(S, S_sky, S_null, reg_m_grid=(0.01, 0.05, 0.2))
    assert 0.3 < cal["shared_fraction"] < 0.7
    psf = partial_shared_fraction(S, threshold=0.6, grid=20)
    assert psf["shared_fraction"] == pytest.approx(0.5, abs=0.06)


def test_gw_recovers_rotated_copy_across_widths_and_kmeans_reduction():
    A, B, perm = permuted_noisy_copy(n=48, d=16, noise=0.0)
    B_wide = torch.cat([rotated(B), torch.zeros(48, 8)], 1)  # another basis, another width
    r = match(A, B_wide, method="gw", view="decoder")
    assert np.array_equal(perm.numpy()[r.pairs[:, 0]], r.pairs[:, 1])
    idx, labels = reduce_features(A, 10, "kmeans")
    assert len(idx) <= 10 and labels.shape == (48,) and (labels >= 0).all()
    assert torch.equal(labels[idx], torch.arange(len(idx)))
    r2 = match(A, B_wide, method="gw", n_max=12)
    assert r2.meta["reduced"] and len(r2) <= 12


def test_fgw_runs_on_shared_space():
    A, B, perm = permuted_noisy_copy(n=30, d=12, noise=0.05)
    r = match(A, B, method="fgw", alpha=0.3)
    assert np.array_equal(perm.numpy()[r.pairs[:, 0]], r.pairs[:, 1])


def planted_similarity(n_a: int, n_b: int, n_shared: int, seed: int, sim: float = 0.9) -> torch.Tensor:
    """A known similarity: ``n_shared`` one-to-one pairs at ``sim`` (+- 0.03), everything else N(0, 0.05)."""
    rng = np.random.default_rng(seed)
    S = rng.normal(0, 0.05, (n_a, n_b))
    ia, ib = rng.permutation(n_a)[:n_shared], rng.permutation(n_b)[:n_shared]
    S[ia, ib] = sim + rng.normal(0, 0.03, n_shared)
    return torch.as_tensor(np.clip(S, -1, 1))


@pytest.mark.parametrize("n_b", [40, 60, 80])
def test_ot_readings_are_fractions_of_a_for_unequal_sizes(n_b):
    # 90% of A's 40 latents are planted as shared, whatever B's width: both OT readings must say 0.9 of A
    # (before: uniform masses 1/n_a, 1/n_b capped the mass at 36/n_b -> 0.9 / 0.6 / 0.45)
    S = planted_similarity(40, n_b, 36, seed=1)
    psf = partial_shared_fraction(S, threshold=0.5)
    assert psf["fraction_of_a"] == pytest.approx(0.9, abs=1e-9) and psf["shared_fraction"] == psf["fraction_of_a"]
    assert psf["fraction_of_b"] == pytest.approx(36 / n_b, abs=1e-9)
    exact = partial_shared_fraction(S, threshold=0.5, grid=None)
    assert exact["n_matched"] == 36 and exact["fraction_of_b"] == pytest.approx(36 / n_b)
    old = partial_shared_fraction(S, threshold=0.5, reference="uniform")["shared_fraction"]
    assert old == pytest.approx(36 / n_b, abs=1e-9)  # the uniform-mass reading measures the wrong thing
    # the calibrated unbalanced reading: the skyline is 40 x 40 (A vs its second seed), the pair 40 x n_b
    cal = calibrated_mass(S, planted_similarity(40, 40, 40, seed=3), planted_similarity(40, n_b, 0, seed=2),
                          reg_m_grid=(0.03, 0.1, 0.3))
    assert cal["skyline_shape"] == [40, n_b] and cal["skyline_fraction_of_a"] == 1.0
    assert cal["fraction_of_a"] == pytest.approx(0.9, abs=0.05)
    assert cal["fraction_of_b"] == pytest.approx(cal["fraction_of_a"] * 40 / n_b)
    assert all(c["marginal_violation"] < 1e-3 for runs in cal["convergence"].values() for c in runs)


def test_ot_readings_when_b_is_narrower_than_a():
    S = planted_similarity(40, 30, 28, seed=4)  # 28 of A's 40 latents shared: 0.7 of A, 0.93 of B
    exact = partial_shared_fraction(S, threshold=0.5, grid=None)
    assert (exact["fraction_of_a"], exact["fraction_of_b"]) == pytest.approx((0.7, 28 / 30))
    cal = calibrated_mass(S, planted_similarity(40, 40, 40, seed=3), planted_similarity(40, 30, 0, seed=2),
                          reg_m_grid=(0.03, 0.1, 0.3))
    assert cal["skyline_shape"] == [40, 30] and cal["skyline_fraction_of_a"] == pytest.approx(0.75)
    assert cal["fraction_of_a"] == pytest.approx(0.7, abs=0.05)


def test_exact_partial_reading_equals_pot_partial_wasserstein_curve():
    # grid = n_a makes POT's masses k/n_a, where the exact matching reading must agree
    S = planted_similarity(12, 17, 7, seed=5, sim=0.7)
    S[0, :] = 0.55  # a row just above the threshold everywhere
    for theta in (0.3, 0.5, 0.6, 0.8):
        on_grid = partial_shared_fraction(S, threshold=theta, grid=12)["fraction_of_a"]
        assert partial_shared_fraction(S, threshold=theta, grid=None)["fraction_of_a"] == pytest.approx(on_grid)
    with pytest.raises(ConfigError):
        partial_shared_fraction(S, threshold=0.5, grid=None, reg=0.1)


def test_unbalanced_non_convergence_is_detected_retried_or_refused():
    S = planted_similarity(30, 45, 20, seed=6)
    with pytest.raises(MatchError, match="did not converge"):
        unbalanced_match(S, reg=0.02, reg_m=0.3, numItermax=3, retry=False, reference="a")
    ref = unbalanced_match(S, reg=0.02, reg_m=0.3, reference="a")
    assert not ref.meta["convergence"]["retried"] and ref.meta["convergence"]["marginal_violation"] <= 1e-3
    # 10 iterations: not converged; the log-domain retry (100 iterations) solves the same problem
    r = unbalanced_match(S, reg=0.02, reg_m=0.3, numItermax=10, reference="a")
    conv = r.meta["convergence"]
    assert conv["retried"] and not conv["attempts"][0]["converged"] and conv["attempts"][-1]["converged"]
    assert conv["attempts"][0]["marginal_violation"] > 1e-3 >= conv["marginal_violation"]
    assert conv["reg"] == 0.02 and r.meta["mass"] == pytest.approx(ref.meta["mass"], abs=2e-3)
    # 3 iterations (30 on retry): only the larger entropic reg converges, and the result says so
    r3 = unbalanced_match(S, reg=0.02, reg_m=0.3, numItermax=3, reference="a")
    assert r3.meta["convergence"]["reg"] == 0.04 and len(r3.meta["convergence"]["attempts"]) == 3
    # the marginal violation is 0 at the fixed point and large for an arbitrary pair of potentials
    a = torch.full((30,), 1 / 30, dtype=torch.float64)
    b = torch.full((45,), 1 / 30, dtype=torch.float64)
    assert uot_marginal_violation(torch.zeros(30, dtype=torch.float64), torch.zeros(45, dtype=torch.float64),
                                  a, b, 1 - S, 0.02, 0.3) > 0.1


def test_comparable_skyline_pads_with_null_columns_or_subsamples():
    sky, null = planted_similarity(10, 10, 10, seed=7), planted_similarity(10, 16, 0, seed=8)
    padded, f = comparable_skyline(sky, null, seed=0)
    assert padded.shape == (10, 16) and f == 1.0
    assert torch.equal(padded[:, :10], sky.double())
    assert all(any(torch.equal(padded[:, j], null[:, k].double()) for k in range(16)) for j in range(10, 16))
    cut, f2 = comparable_skyline(sky, planted_similarity(10, 6, 0, seed=8))
    assert cut.shape == (10, 6) and f2 == pytest.approx(0.6)
    with pytest.raises(MatchError):
        comparable_skyline(sky, planted_similarity(9, 6, 0, seed=8))
