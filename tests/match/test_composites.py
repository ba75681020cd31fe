"""Composite features (universality.match.composites): known answers on planted dictionaries."""

import numpy as np
import pytest
import torch

from universality.errors import ConfigError, DataError
from universality.match.composites import composite_features, composite_floor, random_rows


def _planted(noise: float, seed: int = 0, d: int = 64, n_b: int = 128):
    """W_b random unit rows; W_a = 40 normalised sums of two W_b rows (weights in [0.8, 1.2], so no single row reaches cosine 0.9), 30 copies of
    single W_b rows and 30 random rows, each perturbed by isotropic noise of norm about ``noise``."""
    gen = torch.Generator().manual_seed(seed)
    W_b = random_rows(n_b, d, seed=seed + 1)
    perm = torch.randperm(n_b, generator=gen)
    pairs = perm[:80].reshape(40, 2)
    w = 0.8 + 0.4 * torch.rand(40, 2, generator=gen, dtype=torch.float64)
    comps = w[:, :1] * W_b[pairs[:, 0]] + w[:, 1:] * W_b[pairs[:, 1]]
    singles = W_b[perm[80:110]]
    rand = random_rows(30, d, seed=seed + 2)
    W_a = torch.cat([comps / comps.norm(dim=1, keepdim=True), singles, rand])
    W_a = W_a + noise * torch.randn(W_a.shape, generator=gen, dtype=torch.float64) / d ** 0.5
    truth = np.zeros(len(W_a), dtype=bool)
    truth[:40] = True
    return W_a, W_b, truth, pairs.numpy()


def _precision_recall(called, truth):
    tp = int((called & truth).sum())
    return tp / max(int(called.sum()), 1), tp / int(truth.sum())


def test_noise_free_composites_recovered_exactly():
    W_a, W_b, truth, pairs = _planted(noise=0.0)
    res = composite_features(W_a, W_b, threshold=0.9)
    precision, recall = _precision_recall(res.is_composite, truth)
    assert (res.single_cosine[:40] < 0.9).all()  # the planted sums are composites by the definition
    assert precision == 1.0 and recall == 1.0
    # the right two parts, and a near-perfect fit
    assert all(set(res.parts[i]) == set(pairs[i]) for i in range(40))
    assert np.allclose(res.cosine[:40], 1.0, atol=1e-9)
    # singles: one part at cosine 1, not composite
    assert not res.is_composite[40:70].any() and np.allclose(res.single_cosine[40:70], 1.0)
    assert (res.parts[40:70, 1] == -1).all()
    # random rows: neither composite nor explained
    assert not res.is_composite[70:].any() and (res.cosine[70:] < 0.9).all()
    assert res.fraction == pytest.approx(0.4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_noise_keeps_precision_and_recall(seed):
    W_a, W_b, truth, _ = _planted(noise=0.1, seed=seed)
    res = composite_features(W_a, W_b, threshold=0.9)
    precision, recall = _precision_recall(res.is_composite, truth)
    assert precision >= 0.9 and recall >= 0.9
    assert not res.is_composite[40:70].any()


def test_single_part_mode_calls_nothing_composite():
    W_a, W_b, truth, _ = _planted(noise=0.0)
    res = composite_features(W_a, W_b, max_parts=1)
    assert not res.is_composite.any()
    assert np.allclose(res.cosine, np.clip(res.single_cosine, 0, None))


def test_random_floor_is_low_and_frame_has_one_row_per_feature():
    W_b = random_rows(128, 64, seed=5)
    floor = composite_floor(W_b, n=200, threshold=0.9, seed=3)
    assert floor.fraction == 0.0 and floor.explained_fraction == 0.0
    frame = floor.to_frame()
    assert len(frame) == 200 and {"part_1", "part_2", "cosine", "composite"} <= set(frame.columns)


def test_weights_are_non_negative_and_fit_cosine_is_consistent():
    W_a, W_b, _, _ = _planted(noise=0.2, seed=4)
    res = composite_features(W_a, W_b)
    assert (res.weights >= 0).all()
    A = W_a / W_a.norm(dim=1, keepdim=True)
    for i in np.flatnonzero(res.parts[:, 1] >= 0)[:20]:
        v = res.weights[i, 0] * W_b[res.parts[i, 0]] + res.weights[i, 1] * W_b[res.parts[i, 1]]
        assert float(A[i] @ v / v.norm()) == pytest.approx(res.cosine[i], abs=1e-9)


def test_bad_inputs_are_refused():
    W = random_rows(8, 4)
    with pytest.raises(ConfigError):
        composite_features(W, W, threshold=1.5)
    with pytest.raises(ConfigError):
        composite_features(W, W, max_parts=3)
    with pytest.raises(DataError):
        composite_features(W, random_rows(8, 5))
    with pytest.raises(DataError):
        composite_features(torch.zeros(2, 4), W)
