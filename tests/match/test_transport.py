import numpy as np
import ot
import pytest
import torch

from universality.errors import ConfigError
from universality.match import match
from universality.match.similarity import dense_similarity
from universality.match.transport import (
    calibrated_mass,
    emd_match,
    partial_match,
    partial_shared_fraction,
    reduce_features,
    sinkhorn_match,
    unbalanced_match,
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
