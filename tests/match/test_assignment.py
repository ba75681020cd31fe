import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from universality.match.assignment import hungarian, many_to_one, mutual_nearest_neighbours, sparse_assignment
from universality.match.similarity import dense_similarity, topk_partners

from .helpers import permuted_noisy_copy, unit


@pytest.mark.parametrize("shape", [(30, 30), (20, 35), (35, 20)])
def test_hungarian_equals_scipy_on_random_cases(shape):
    rng = np.random.default_rng(sum(shape))
    S = rng.normal(size=shape)
    r = hungarian(torch.as_tensor(S))
    rows, cols = linear_sum_assignment(-S)
    assert r.value == pytest.approx(S[rows, cols].sum())
    assert len(r) == min(shape)


@pytest.mark.parametrize("shape,k", [((120, 120), 4), ((80, 140), 3), ((140, 80), 3), ((100, 100), 1)])
def test_sparse_assignment_is_one_to_one_and_near_optimal(shape, k):
    g = torch.Generator().manual_seed(shape[0] + k)
    A, B = unit(torch.randn(shape[0], 16, generator=g)), unit(torch.randn(shape[1], 16, generator=g))
    S = dense_similarity(A, B)
    tk = topk_partners(A, B, k=k, progress=False)
    r = sparse_assignment(tk, complete=lambda rr, cc: S[rr][:, cc], exact=S, gap_tol=None)  # one round
    assert len(r) == min(shape)
    assert len(np.unique(r.pairs[:, 0])) == len(r) == len(np.unique(r.pairs[:, 1]))
    assert np.allclose(r.scores, S.numpy()[r.pairs[:, 0], r.pairs[:, 1]], atol=1e-6)
    assert 0 <= r.meta["optimality_gap"] < 0.05
    assert r.meta["gap_bound"] >= r.meta["optimality_gap"] - 1e-7  # the certificate covers the true gap
    if k == 1:
        assert r.meta["n_completed"] > 0  # a top-1 graph cannot match everything: completion kicks in


def test_weight_matchers_recover_permuted_noisy_copy_exactly():
    A, B, perm = permuted_noisy_copy(n=80, noise=0.1)
    S = dense_similarity(A, B)
    for r in (hungarian(S), sparse_assignment(topk_partners(A, B, k=4, progress=False)),
              mutual_nearest_neighbours(topk_partners(A, B, k=4, progress=False))):
        assert len(r) == 80
        assert np.array_equal(perm.numpy()[r.pairs[:, 0]], r.pairs[:, 1])


def test_many_to_one_exposes_a_split():
    A = unit(torch.randn(10, 20))
    # b: features 0..9 copy a, plus two children of a[3] (a[3] split in two)
    kids = unit(A[3][None] + 0.4 * unit(torch.randn(2, 20)))
    B = torch.cat([A[[0, 1, 2, 4, 5, 6, 7, 8, 9]], kids])
    r = many_to_one(topk_partners(A, B, k=2, progress=False), threshold=0.6)
    assert r.meta["groups"] == {3: [9, 10]} and r.meta["n_split"] == 1
