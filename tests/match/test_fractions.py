"""Shared-fraction readings on codes built from planted truth: dead latents, duplicates, Zipf-like
firing frequencies and unequal sizes, where the true feature-level fraction is known."""

import json

import numpy as np
import pytest
import torch

from universality.errors import ConfigError, MatchError
from universality.match import codes_from_dense
from universality.match.fractions import (
    HEADLINE,
    HEADLINE_WITH_SKYLINE,
    calibrated_ot_fraction,
    feature_groups,
    group_similarity,
    matched_count,
    shared_fraction_readings,
    shared_threshold,
)


def zipf_probs(n: int, mean_active: float, s: float = 1.1, p_min: float = 0.004) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return np.clip(p * mean_active / p.sum(), p_min, 0.9)


class Planted:
    """True features with Zipf-like frequencies; ``n_shared`` of them belong to both A and B. A dictionary
    over a feature set has one latent per feature plus ``n_dup`` duplicates (a feature's codes scaled by
    0.5-2 and noised by 5%) and ``n_dead`` constant-zero latents, columns shuffled."""

    def __init__(self, f_a: int, f_b: int, n_shared: int, T: int = 3000, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        n_true = f_a + f_b - n_shared
        p = self.rng.permutation(zipf_probs(n_true, 4.0))
        self.Z = (self.rng.random((T, n_true)) < p) * self.rng.uniform(0.1, 1.0, (T, n_true))
        feats = self.rng.permutation(n_true)
        self.a_feats = np.concatenate([feats[:n_shared], feats[n_shared:f_a]])
        self.b_feats = np.concatenate([feats[:n_shared], feats[f_a:f_a + f_b - n_shared]])
        self.ids = torch.arange(T)

    def dictionary(self, feats: np.ndarray, n_dup: int, n_dead: int):
        T = self.Z.shape[0]
        src = self.rng.choice(len(feats), n_dup, replace=False)
        noise = 1 + 0.05 * self.rng.standard_normal((T, n_dup))
        dup = self.Z[:, feats[src]] * self.rng.uniform(0.5, 2.0, n_dup) * noise
        C = np.concatenate([self.Z[:, feats], dup, np.zeros((T, n_dead))], 1)
        return codes_from_dense(torch.as_tensor(C[:, self.rng.permutation(C.shape[1])], dtype=torch.float32), self.ids)


@pytest.mark.parametrize(
    "f_a, f_b, n_shared, dup_a, dead_a, dup_b, dead_b",
    [
        (40, 30, 24, 10, 6, 20, 10),  # unequal sizes: true 0.6 of A's features, 0.8 of B's
        (40, 40, 36, 25, 15, 25, 15),  # 2x-wide dictionaries that recover every feature: true 0.9
    ],
)
def test_feature_level_reading_recovers_planted_fraction(f_a, f_b, n_shared, dup_a, dead_a, dup_b, dead_b):
    w = Planted(f_a, f_b, n_shared, seed=f_a + f_b)
    ca, cb = w.dictionary(w.a_feats, dup_a, dead_a), w.dictionary(w.b_feats, dup_b, dead_b)
    r = shared_fraction_readings(ca, cb)
    assert r["counts"]["a"] == {"latents": f_a + dup_a + dead_a, "dead": dead_a, "duplicates": dup_a, "features": f_a}
    assert r["counts"]["b"] == {"latents": f_b + dup_b + dead_b, "dead": dead_b, "duplicates": dup_b, "features": f_b}
    for est in ("activation_hungarian", "partial_ot"):
        feat = r["feature_level"][est]
        assert feat["n_matched"] == n_shared
        assert (feat["fraction_of_a"], feat["fraction_of_b"]) == pytest.approx((n_shared / f_a, n_shared / f_b))
        # per latent, dead and duplicate latents sit in the denominator: the reading is far below the truth
        # (a duplicate of a shared feature on both sides can add a pair, never more than min(dup_a, dup_b))
        lat = r["per_latent"][est]
        assert n_shared <= lat["n_matched"] <= n_shared + min(dup_a, dup_b)
        assert lat["fraction_of_a"] == pytest.approx(lat["n_matched"] / ca.n)
        assert lat["fraction_of_a"] < feat["fraction_of_a"] - 0.05
    assert r["headline"]["estimator"] == HEADLINE == "feature_level.activation_hungarian"
    assert r["headline"]["value"] == pytest.approx(n_shared / f_a) and r["headline"]["why"]
    assert r["threshold"] == 0.5 and r["threshold_rule"] == "fixed"
    assert r["per_latent"]["calibrated_unbalanced_ot"] is None  # no skyline, no calibrated OT
    json.dumps(r)  # plain data


def test_feature_groups_hand_case():
    T = 200
    rng = np.random.default_rng(0)
    base = (rng.random(T) < 0.3) * rng.uniform(0.2, 1.0, T)
    other = (rng.random(T) < 0.2) * rng.uniform(0.2, 1.0, T)
    sub = base * (np.arange(T) % 20 != 0)  # fires on 95% of base's tokens: a less frequent duplicate
    z = np.stack([sub, other, 3.0 * base, np.zeros(T), np.full(T, 0.7), base + other], 1)
    g = feature_groups(codes_from_dense(torch.as_tensor(z, dtype=torch.float32)))
    assert g.dead.tolist() == [False, False, False, True, True, False]  # zero and constant latents are dead
    assert g.group[0] == g.group[2] and g.group[3] == g.group[4] == -1
    assert len({int(g.group[i]) for i in (0, 1, 5)}) == 3  # base+other correlates < 0.9 with either part
    assert 2 in g.representatives.tolist() and 0 not in g.representatives.tolist()  # the frequent one stays
    assert g.counts() == {"latents": 6, "dead": 2, "duplicates": 1, "features": 3}
    # a stricter duplicate threshold keeps the noisy copy separate
    assert feature_groups(codes_from_dense(torch.as_tensor(z, dtype=torch.float32)), 0.99).n_features == 4


def test_group_similarity_is_max_over_members():
    S = torch.tensor([[0.1, 0.9, 0.2], [0.3, 0.0, 0.8], [0.5, 0.4, 0.6]])
    z = torch.zeros(10, 3)
    ga = feature_groups(codes_from_dense(z))  # all dead: no groups
    assert group_similarity(torch.zeros(3, 3), ga, ga).shape == (0, 0)
    T = 300
    rng = np.random.default_rng(1)
    f = (rng.random((T, 2)) < 0.3) * rng.uniform(0.2, 1, (T, 2))
    za = np.stack([f[:, 0], 2 * f[:, 0], f[:, 1]], 1)  # groups {0, 1}, {2}
    zb = np.stack([f[:, 0], f[:, 1], 1.5 * f[:, 1]], 1)  # groups {0}, {1, 2}
    ga = feature_groups(codes_from_dense(torch.as_tensor(za)))
    gb = feature_groups(codes_from_dense(torch.as_tensor(zb)))
    G = group_similarity(S, ga, gb)
    expect = np.empty((2, 2))
    for i, rows in enumerate(([0, 1], [2])):
        for j, cols in enumerate(([0], [1, 2])):
            expect[ga.group[rows[0]], gb.group[cols[0]]] = S[rows][:, cols].max()
    assert np.allclose(G, expect)
    with pytest.raises(MatchError):
        group_similarity(torch.zeros(2, 3), ga, gb)


def test_hungarian_and_partial_ot_counts_differ_as_documented():
    # both take (0,1)+(1,0): Hungarian for the total 1.8, partial OT for the margin 0.4+0.4 above 0.5
    S = np.array([[0.95, 0.9], [0.9, 0.1]])
    assert matched_count(S, 0.5) == 2 == matched_count(S, 0.5, "partial_ot")
    # here the total-maximising assignment sacrifices an above-threshold pair: (0,0)+(1,1) = 0.55+0.55 = 1.1
    # beats (0,1)+(1,0) = 1.0+0.0 = 1.0, but only (0,1) is above 0.6; partial OT counts it
    S2 = np.array([[0.55, 1.0], [0.0, 0.55]])
    assert matched_count(S2, 0.6) == 0 and matched_count(S2, 0.6, "partial_ot") == 1
    with pytest.raises(ConfigError):
        matched_count(S2, 0.6, "greedy")


def test_shared_threshold_rules():
    w = Planted(30, 30, 15, T=3000, seed=5)
    ca, cb = w.dictionary(w.a_feats, 0, 0), w.dictionary(w.b_feats, 0, 0)
    assert shared_threshold(ca, cb)["threshold"] == 0.5
    null = shared_threshold(ca, cb, "null_percentile", percentile=99, n_null=2, seed=3)
    assert null["rule"] == "null_percentile" and null["n_null"] == 2
    assert 0 < null["threshold"] <= null["null_matched_max"] < 0.2  # chance correlations on 3000 tokens
    r = shared_fraction_readings(ca, cb, threshold_rule="null_percentile", n_null=2, seed=3)
    assert r["threshold"] == pytest.approx(null["threshold"])
    assert r["feature_level"]["activation_hungarian"]["n_matched"] >= 15
    with pytest.raises(ConfigError):
        shared_threshold(ca, cb, "median")


def test_calibrated_ot_fraction_with_a_second_seed_skyline():
    w = Planted(40, 60, 30, T=3000, seed=7)  # 0.75 of A's features shared; B wider than A
    ca, cb = w.dictionary(w.a_feats, 8, 4), w.dictionary(w.b_feats, 12, 8)
    sky = w.dictionary(w.a_feats, 6, 6)  # "second seed": the same features, other duplicates and dead latents
    r = calibrated_ot_fraction(ca, cb, sky, reg_m_grid=(0.03, 0.1, 0.3), seed=1)
    assert r["skyline"] == "second seed" and r["threshold_rule"] == "fixed" and r["threshold"] == 0.5
    assert r["skyline_shape"] == [ca.n, cb.n]
    assert set(r["anchor_mass"]) == {"pair", "skyline", "null", "reg_m_grid"} and r["reg_m"] in (0.03, 0.1, 0.3)
    assert all(c["marginal_violation"] <= 1e-3 for runs in r["convergence"].values() for c in runs)
    feat = r["feature_level"]
    assert feat["value"] == pytest.approx(0.75, abs=0.1) and feat["plan_fraction_of_a"] == pytest.approx(0.75)
    assert feat["fraction_of_b"] == pytest.approx(feat["fraction_of_a"] * 40 / 60)
    # per latent, dead and duplicate latents sit in the denominator of the plan's count
    assert r["plan_fraction_of_a"] < feat["plan_fraction_of_a"] - 0.1 and 0 <= r["value"] <= 1
    full = shared_fraction_readings(ca, cb, skyline_a=sky, reg_m_grid=(0.03, 0.1, 0.3), seed=1)
    assert full["feature_level"]["calibrated_unbalanced_ot"]["value"] == pytest.approx(feat["value"])
    # seed-stable reading: the skyline shares every feature of A, so it equals the plain feature-level one
    stable = full["feature_level"]["seed_stable_hungarian"]
    assert stable["n_seed_stable"] == 40 and stable["n_matched"] == 30 and stable["fraction_of_a"] == 0.75
    json.dumps(full)


def test_seed_stable_reading_drops_latents_no_other_seed_reproduces():
    # A has 10 "mixture" latents (sums of two private features) that neither B nor the second seed has:
    # they are live, not duplicates, so the feature-level denominator counts them; the seed-stable one does not
    w = Planted(40, 40, 30, T=3000, seed=9)
    ca0 = w.dictionary(w.a_feats, 0, 0)
    z = ca0.rows(0, ca0.n).T
    mix = torch.stack([z[:, 2 * i] + z[:, 2 * i + 1] for i in range(10)], 1) * 0.7
    ca = codes_from_dense(torch.cat([z, mix], 1), w.ids)
    cb, sky = w.dictionary(w.b_feats, 0, 0), w.dictionary(w.a_feats, 0, 0)
    r = shared_fraction_readings(ca, cb, skyline_a=sky, reg_m_grid=(0.1, 0.3))
    n_groups = r["counts"]["a"]["features"]  # a mixture dominated by one frequent part is its duplicate
    assert n_groups == 50 - r["counts"]["a"]["duplicates"] and n_groups >= 45
    assert r["feature_level"]["activation_hungarian"]["fraction_of_a"] == pytest.approx(30 / n_groups)
    stable = r["feature_level"]["seed_stable_hungarian"]
    assert stable["n_seed_stable"] == 40 and stable["fraction_of_a"] == pytest.approx(30 / 40)
    assert r["headline"]["estimator"] == HEADLINE_WITH_SKYLINE and r["headline"]["value"] == pytest.approx(0.75)
