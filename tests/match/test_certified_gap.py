"""Certified optimality gaps of the sparse one-to-one route (LP-duality upper bounds), known answers.

The dense optimum is computable at these sizes, so every certificate is checked against the true gap.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from universality.errors import ConfigError
from universality.match import match
from universality.match.assignment import (
    column_prices,
    dual_upper_bound,
    gap_bound,
    hungarian,
    optimality_gap,
    sparse_assignment,
)
from universality.match.baselines import random_rotation
from universality.match.similarity import dense_similarity, topk_partners
from universality.match.summary import one_to_one

from .helpers import unit


def anisotropic_pair(n: int, m: int, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent dictionaries whose directions have a power-law covariance (spectrum ``1/i``), the
    second in a rotated basis: strongly non-identity, and hub columns crowd the top-k lists."""
    g = torch.Generator().manual_seed(seed)
    spec = torch.arange(1, d + 1, dtype=torch.float32) ** -1.0
    A = unit(torch.randn(n, d, generator=g) * spec)
    B = unit((torch.randn(m, d, generator=g) * spec) @ random_rotation(d, seed + 3).T)
    return A, B


def _sparse(A: torch.Tensor, B: torch.Tensor, k: int, **kw):
    tk = topk_partners(A, B, k=k, progress=False)
    return sparse_assignment(tk, complete=lambda r, c: dense_similarity(A[r], B[c]), **kw)


def test_any_nonnegative_prices_bound_the_optimum_and_optimal_prices_are_tight():
    rng = np.random.default_rng(0)
    S = rng.uniform(-1, 1, size=(30, 45))
    opt = hungarian(torch.as_tensor(S))
    for _ in range(5):  # weak duality: every v >= 0 gives an upper bound
        assert dual_upper_bound(torch.as_tensor(S), rng.uniform(0, 1, 45)) >= opt.value - 1e-9
    rows, cols = np.nonzero(np.ones_like(S, bool))  # the complete graph
    match_col = np.full(30, -1)
    match_col[opt.pairs[:, 0]] = opt.pairs[:, 1]
    v, iters, converged = column_prices(rows, cols, S[rows, cols], match_col, 45)
    assert converged and iters >= 1 and (v >= 0).all()
    unmatched = np.setdiff1d(np.arange(45), opt.pairs[:, 1])
    assert np.all(v[unmatched] == 0)  # complementary slackness
    assert dual_upper_bound(torch.as_tensor(S), v) == pytest.approx(opt.value, abs=1e-9)  # strong duality
    # transposed input (more rows than columns): the same bound
    assert dual_upper_bound(torch.as_tensor(S.T), v) == pytest.approx(opt.value, abs=1e-9)


def test_gap_bound_is_relative_and_never_negative():
    assert gap_bound(9.0, 10.0) == pytest.approx(0.1)
    assert gap_bound(10.0, 10.0) == 0.0 and gap_bound(10.5, 10.0) == 0.0


@pytest.mark.parametrize("shape", [(300, 450), (450, 300)])
def test_certified_bound_covers_the_true_gap_of_a_thin_graph(shape):
    A, B = anisotropic_pair(*shape)
    exact = hungarian(dense_similarity(A, B)).value
    r = _sparse(A, B, k=2, gap_tol=None)  # one round on a top-2 graph: a real gap
    true = optimality_gap(r.value, exact)
    assert true > 1e-3  # the case is not trivial
    assert r.meta["gap_bound"] >= true - 1e-7
    assert r.meta["upper_bound"] >= exact - 1e-5
    assert r.meta["rounds"] == 1 and r.meta["solver"] == "sparse"
    assert r.meta["n_a"] == shape[0] and r.meta["n_b"] == shape[1] and len(r) == min(shape)


@pytest.mark.parametrize("shape", [(300, 450), (450, 300)])
def test_refinement_reaches_the_tolerance_and_stays_certified(shape):
    A, B = anisotropic_pair(*shape, seed=1)
    exact = hungarian(dense_similarity(A, B)).value
    r = _sparse(A, B, k=2, gap_tol=1e-3)
    true = optimality_gap(r.value, exact)
    assert r.meta["solver"] == "sparse" and r.meta["rounds"] > 1
    assert true <= r.meta["gap_bound"] + 1e-7 and r.meta["gap_bound"] <= 1e-3
    assert r.meta["upper_bound"] >= exact - 1e-5
    pairs = r.pairs
    assert len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1])) == min(shape)
    S = dense_similarity(A, B).numpy()
    assert np.allclose(r.scores, S[pairs[:, 0], pairs[:, 1]], atol=1e-6)


@pytest.mark.parametrize("shape", [(300, 450), (450, 300), (300, 300)])
def test_a_permuted_noised_copy_is_certified_optimal(shape):
    n = min(shape)
    A, _ = anisotropic_pair(max(shape), max(shape), seed=2)
    g = torch.Generator().manual_seed(7)
    perm = torch.randperm(max(shape), generator=g)
    B = torch.empty_like(A)
    B[perm] = unit(A + 0.05 * torch.randn(A.shape, generator=g) / A.shape[1] ** 0.5)
    A = A[:shape[0]]
    B = B[torch.sort(perm[:shape[1]]).values] if shape[1] < shape[0] else B
    if shape[0] < shape[1]:  # rows of A all have their copy in B
        r = _sparse(A, B, k=4)
        assert np.array_equal(perm.numpy()[r.pairs[:, 0]], r.pairs[:, 1])
    else:
        r = _sparse(A, B, k=4)
    assert r.meta["gap_bound"] < 1e-6 and r.meta["rounds"] == 1 and len(r) == n


def test_dense_fallback_when_rounds_run_out_and_a_note_when_it_does_not_fit():
    A, B = anisotropic_pair(200, 260, seed=3)
    exact = hungarian(dense_similarity(A, B))
    fb = _sparse(A, B, k=1, gap_tol=1e-9, max_rounds=1)
    assert fb.meta["solver"] == "dense" and fb.meta["gap_bound"] == 0.0
    assert fb.value == pytest.approx(exact.value, abs=1e-9)
    kept = _sparse(A, B, k=1, gap_tol=1e-9, max_rounds=1, dense_bytes=0)
    assert kept.meta["solver"] == "sparse" and kept.meta["gap_bound"] > 1e-9 and "note" in kept.meta
    assert kept.meta["gap_bound"] >= optimality_gap(kept.value, exact.value) - 1e-7


def test_bound_from_the_topk_alone_without_a_similarity_oracle():
    A, B = anisotropic_pair(120, 150, seed=4)
    exact = hungarian(dense_similarity(A, B)).value
    r = sparse_assignment(topk_partners(A, B, k=3, progress=False))  # no completion, no streaming
    assert r.meta["n_streamed_rows"] == 0 and r.meta["rounds"] == 1
    assert r.meta["upper_bound"] >= exact - 1e-5
    if len(r) == 120:
        assert r.meta["gap_bound"] >= optimality_gap(r.value, exact) - 1e-7


def test_exact_routes_report_zero_gap_and_the_sparse_routes_a_certificate():
    A, B = anisotropic_pair(150, 180, seed=5)
    h = hungarian(dense_similarity(A, B))
    assert h.meta["gap_bound"] == 0.0 and h.meta["upper_bound"] == h.value and h.meta["solver"] == "dense"
    assert one_to_one(A, B).meta["gap_bound"] == 0.0
    s = one_to_one(A, B, k=2, exact_limit=0)
    assert s.meta["method"] == "sparse" and s.meta["gap_bound"] <= 1e-3
    assert optimality_gap(s.value, h.value) <= s.meta["gap_bound"] + 1e-7
    m = match(A, B, method="sparse", k=2, exact_limit=0, device="cpu")
    assert m.meta["gap_bound"] <= 1e-3 and m.meta["upper_bound"] >= h.value - 1e-5


@pytest.mark.parametrize("kw", [{"gap_tol": -1.0}, {"gap_tol": float("nan")}, {"gap_tol": "small"}, {"max_rounds": 0}])
def test_bad_refinement_settings_are_refused_on_one_line(kw):
    from universality.errors import ConfigError

    A, B = anisotropic_pair(20, 30)
    with pytest.raises(ConfigError) as e:
        _sparse(A, B, k=2, **kw)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_the_reported_case_2048_by_3000_is_refined_from_percent_to_certified_tolerance():
    """Issue 17 item 7: anisotropic 2048 x 3000 dictionaries, where one round of the k=16 graph is ~1-4% off."""
    A, B = anisotropic_pair(2048, 3000, d=64, seed=0)
    exact = hungarian(dense_similarity(A, B)).value
    one = _sparse(A, B, k=16, gap_tol=None)
    true_one = optimality_gap(one.value, exact)
    assert true_one > 1e-3 and one.meta["gap_bound"] >= true_one - 1e-7
    r = _sparse(A, B, k=16)
    assert optimality_gap(r.value, exact) <= r.meta["gap_bound"] + 1e-7 and r.meta["gap_bound"] <= 1e-3


def test_match_passes_the_gap_options_through():
    g = torch.Generator().manual_seed(5)
    A = torch.nn.functional.normalize(torch.randn(60, 16, generator=g), dim=1)
    B = torch.nn.functional.normalize(torch.randn(80, 16, generator=g), dim=1)
    one = match(A, B, "sparse", k=1, gap_tol=None, exact_limit=0, device="cpu")
    assert one.meta["rounds"] == 1 and one.meta["gap_bound"] >= 0
    refined = match(A, B, "sparse", k=1, gap_tol=1e-9, max_rounds=20, exact_limit=0, device="cpu")
    assert refined.meta["gap_bound"] <= max(one.meta["gap_bound"], 1e-9)
    with pytest.raises(ConfigError, match="max_rounds"):
        match(A, B, "sparse", max_rounds=0, device="cpu")
