import numpy as np
import pytest
import torch

from universality.match.baselines import (
    covariance_matched_dictionary,
    normalise,
    permutation_test,
    random_rotation,
    random_unit_dictionary,
    shuffle_tokens,
)
from universality.match.summary import mmcs, mppc
from universality.match.views import codes_from_dense

from .helpers import permuted_noisy_copy


def test_random_dictionaries_shapes_and_covariance():
    R = random_unit_dictionary(50, 8, seed=1)
    assert torch.allclose(R.norm(dim=1), torch.ones(50), atol=1e-6)
    x = torch.randn(5000, 3) * torch.tensor([10.0, 1.0, 0.1])
    C = covariance_matched_dictionary(2000, x, seed=0)
    assert (C[:, 0].abs().mean() > 0.8) and (C[:, 2].abs().mean() < 0.05)  # leans on the top variance axis
    Q = random_rotation(6, seed=2)
    assert torch.allclose(Q @ Q.T, torch.eye(6), atol=1e-5)


def test_permutation_p_values_detect_a_copy_and_not_noise():
    A, B, _ = permuted_noisy_copy(n=40, noise=0.1)
    rot = lambda D, s: D @ random_rotation(D.shape[1], s).T  # noqa: E731
    stat = lambda x, y: mmcs(x, y)[0]  # noqa: E731
    assert permutation_test(stat, A, B, rot, n_perm=19)["p_value"] == pytest.approx(0.05)
    R = random_unit_dictionary(40, A.shape[1], seed=9)
    assert permutation_test(stat, A, R, rot, n_perm=19)["p_value"] > 0.1


def test_token_shuffle_destroys_correlation_but_keeps_fingerprint():
    z = torch.relu(torch.randn(500, 6)) * (torch.rand(500, 6) < 0.3)
    c = codes_from_dense(z, torch.arange(500))
    s = shuffle_tokens(c, seed=3)
    assert s.fingerprint == c.fingerprint and torch.allclose(s.mean, c.mean, atol=1e-6)
    assert mppc(c, c)[0] == pytest.approx(1.0, abs=1e-5) and mppc(c, s)[0] < 0.3


def test_normalise_and_its_refusals():
    assert normalise(0.6, 0.2, 1.0) == (pytest.approx(0.5), "")
    v, note = normalise(0.6, 0.58, 0.6)
    assert np.isnan(v) and "too small" in note
    v, note = normalise(0.6, 0.2, None)
    assert np.isnan(v) and note == "no skyline given"


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_floor_is_not_the_initialisation_of_an_sae_of_the_same_seed(seed):
    from universality.sae import sae_config, make_sae

    sae = make_sae(sae_config("topk", d_in=16, d_sae=64, k=4), seed=seed)
    floor = random_unit_dictionary(64, 16, seed=seed)
    W = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    # a floor drawn from the init's own stream would give MMCS 1.0; independent draws stay far below
    assert max(mmcs(W, floor)) < 0.9


# ------------------------------------------------------------------ small p-values, shared shuffles
from universality.match.baselines import CodeShuffles, permutation_p_value  # noqa: E402
from universality.match.similarity import dense_similarity  # noqa: E402


def test_permutation_p_value_exact_inside_the_null_and_a_normal_tail_beyond():
    nulls = np.arange(10.0)  # 0..9
    assert permutation_p_value(5.0, nulls) == (pytest.approx(6 / 11), "perm(10)", pytest.approx(1 / 11))
    assert permutation_p_value(9.0, nulls)[0] == pytest.approx(2 / 11)
    # beyond every null sample: the upper tail of N(mean 4.5, sd 3.028) at 20, far below 1/11
    p, method, res = permutation_p_value(20.0, nulls)
    assert method == "normal tail from 10 perms" and res == pytest.approx(1 / 11)
    from scipy.stats import norm

    assert p == pytest.approx(norm.sf((20 - 4.5) / np.arange(10.0).std(ddof=1)))
    assert p < 1e-6
    # just beyond the last null sample the tail is capped at the permutation resolution
    assert permutation_p_value(9.0001, np.array([0.0, 9.0]))[0] <= 1 / 3
    constant = permutation_p_value(1.0, np.zeros(19))
    assert constant == (pytest.approx(0.05), "perm(19); null constant", pytest.approx(0.05))
    assert np.isnan(permutation_p_value(float("nan"), nulls)[0]) and np.isnan(permutation_p_value(1.0, [])[0])


def test_code_shuffles_give_the_correlations_of_the_shuffled_codes():
    g = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(300, 6, generator=g)) * (torch.rand(300, 6, generator=g) < 0.3)
    y = torch.relu(torch.randn(300, 5, generator=g)) * (torch.rand(300, 5, generator=g) < 0.3) + 0.5 * z[:, :5]
    y[:, 4] = 2.0  # a constant (dead) feature: correlation 0, as pearson_blocks
    ca, cb = codes_from_dense(z, torch.arange(300)), codes_from_dense(y, torch.arange(300))
    eng = CodeShuffles(ca, cb)
    for seed in (1, 7):
        want = dense_similarity(ca, shuffle_tokens(cb, seed), "pearson").numpy()
        assert np.abs(eng.correlation(eng.covariance(seed)) - want).max() < 1e-6
    assert np.abs(eng.correlation(eng.covariance(None)) - dense_similarity(ca, cb, "pearson").numpy()).max() < 1e-6
    faa, fbb = eng.self_frob2()
    assert faa == pytest.approx(float((torch.cov(z.T.double(), correction=0) ** 2).sum()), rel=1e-9)
    assert fbb == pytest.approx(float((torch.cov(y.T.double(), correction=0) ** 2).sum()), rel=1e-9)
