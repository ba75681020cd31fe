import numpy as np
import pytest
import torch

import universality
from universality.errors import ConfigError, MatchError
from universality.match import METHODS, MatchResult, codes_from_dense, match

from .helpers import ToySAE, permuted_noisy_copy, rotated


def test_package_exports_match_compare_and_result():
    A, B, perm = permuted_noisy_copy(n=20)
    for _ in range(2):  # the package object and the function are both callable
        r = universality.match(A, B)
        assert np.array_equal(perm.numpy()[r.pairs[:, 0]], r.pairs[:, 1])
    assert universality.MatchResult is MatchResult and callable(universality.compare)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_a_described_result(method):
    A, B, perm = permuted_noisy_copy(n=24, d=12, noise=0.05)
    thresholded = {"threshold": 0.5} if method in ("mnn", "many_to_one") else {}  # others take no threshold
    r = match(A, B, method=method, view="decoder", **thresholded)
    assert isinstance(r, MatchResult)
    assert r.meta["method"] == method and r.meta["view"] == "decoder" and "params" in r.meta
    assert r.meta["n_a"] == 24 and r.meta["n_b"] == 24 and len(r) > 0
    # GW sees only within-dictionary geometry and is non-convex: it finds most, not all, of a noised copy
    assert (perm.numpy()[r.pairs[:, 0]] == r.pairs[:, 1]).mean() > (0.6 if method == "gw" else 0.9)


def test_sparse_reports_gap_against_exact():
    A, B, _ = permuted_noisy_copy(n=50, noise=0.5)
    r = match(A, B, method="sparse", k=3)
    assert "optimality_gap" in r.meta and r.meta["optimality_gap"] >= 0


def test_activation_matcher_recovers_a_rotated_dictionary():
    A, B, perm = permuted_noisy_copy(n=16, d=32, noise=0.0)
    Q = rotated(torch.eye(32), seed=5)
    sae_a, sae_b = ToySAE(A, bias=0.2), ToySAE(B @ Q, bias=0.2)  # b lives in a rotated basis
    g = torch.Generator().manual_seed(0)
    z = torch.rand(3000, 16, generator=g) * (torch.rand(3000, 16, generator=g) < 0.15)
    x_a, x_b = z @ A, (z @ A) @ Q
    ids = torch.arange(3000)
    wrong = match(sae_a, sae_b, view="decoder")  # cosines across bases mean nothing
    assert (perm.numpy()[wrong.pairs[:, 0]] == wrong.pairs[:, 1]).mean() < 0.5
    r = match(sae_a, sae_b, view="activations", activations=(x_a, x_b), token_ids=ids)
    assert np.array_equal(perm.numpy()[r.pairs[:, 0]], r.pairs[:, 1])
    assert r.meta["similarity"] == "pearson" and r.scores.min() > 0.9
    j = match(sae_a, sae_b, view="activations", activations=(x_a, x_b), token_ids=ids, similarity="jaccard")
    assert np.array_equal(perm.numpy()[j.pairs[:, 0]], j.pairs[:, 1])


def test_errors_name_the_problem_and_the_fix():
    A = torch.randn(10, 8)
    with pytest.raises(MatchError, match="view='activations'.*method='gw'"):
        match(A, torch.randn(10, 12), method="hungarian")
    assert len(match(A, torch.randn(12, 12), method="gw")) == 10  # GW needs no shared space
    z = torch.rand(30, 10)
    with pytest.raises(MatchError, match="different tokens"):
        match(codes_from_dense(z, torch.arange(30)), codes_from_dense(z, torch.arange(30) + 5), view="activations")
    with pytest.raises(MatchError, match="needs codes"):
        match(A, A, view="activations")
    with pytest.raises(MatchError, match="unknown method"):
        match(A, A, method="magic")
    with pytest.raises(MatchError, match="unknown view"):
        match(A, A, view="bias")
    with pytest.raises(ConfigError):
        match(A, A, method="sparse", k=0)
