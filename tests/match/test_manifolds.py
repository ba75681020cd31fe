"""Feature manifolds: grouping, irreducibility (Engels et al. 2024) and group matching, with a planted circle."""

import math

import numpy as np
import pytest
import torch

from universality.errors import ConfigError, DataError
from universality.match import manifolds as mf
from universality.match.circle_world import CircleWorldConfig, make_circle_world

RNG_N = 2000


def _circle(n=RNG_N, days=7, seed=0):
    rng = np.random.default_rng(seed)
    k = rng.integers(days, size=n)
    th = 2 * np.pi * k / days + 0.05 * rng.standard_normal(n)
    r = 1 + 0.1 * rng.standard_normal(n)
    return np.c_[r * np.cos(th), r * np.sin(th)]


def _cooccurring_pair(n=RNG_N, seed=0):
    """Two independent 1-D features (independent magnitudes) that fire alone or together."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    on = np.c_[u < 0.6, (u < 0.2) | (u >= 0.6)]
    return on * rng.random((n, 2))


# ---------------------------------------------------------------- hand cases: principal angles, CCA


def test_subspace_similarity_hand_cases():
    e = torch.eye(6)
    plane = e[:2]
    assert mf.subspace_similarity(plane, plane) == pytest.approx(1.0)
    assert mf.subspace_similarity(plane, e[2:4]) == pytest.approx(0.0, abs=1e-12)
    th = torch.tensor([0.3, 1.4, 2.2, 3.9])  # other rows inside the same plane: one subspace
    inside = torch.stack([th.cos(), th.sin()], 1) @ plane
    assert mf.subspace_similarity(plane, inside) == pytest.approx(1.0)
    # half the dimensions shared: a 2-D plane against a 4-D span holding it
    assert mf.subspace_similarity(plane, e[:4]) == pytest.approx(0.5)
    tilt = torch.stack([e[0], math.cos(0.5) * e[1] + math.sin(0.5) * e[2]])
    assert mf.subspace_similarity(plane, tilt) == pytest.approx((1 + math.cos(0.5)) / 2)


def test_code_similarity_hand_cases():
    g = torch.Generator().manual_seed(0)
    za = torch.rand(500, 3, generator=g)
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0], [0.3, 0.0, 1.0]])
    assert mf.code_similarity(za, za @ mix) == pytest.approx(1.0)  # any invertible mix: same code space
    zb = torch.rand(500, 3, generator=torch.Generator().manual_seed(1))
    assert mf.code_similarity(za, zb) < 0.15  # independent codes: chance correlations only
    assert mf.code_similarity(za, torch.zeros(500, 2)) == 0.0


# ---------------------------------------------------------------- hand cases: irreducibility indices


def test_separability_and_mixture_circle_vs_axes():
    circle, pair = _circle(), _cooccurring_pair()
    rng = np.random.default_rng(3)
    square = rng.random((RNG_N, 2))  # two independent features that always co-occur
    axes = np.zeros((RNG_N, 2))
    pick = rng.random(RNG_N) < 0.5
    axes[pick, 0], axes[~pick, 1] = rng.random(pick.sum()), rng.random((~pick).sum())  # never co-occur
    s = {name: mf.separability_index(P) for name, P in
         (("circle", circle), ("pair", pair), ("square", square), ("axes", axes))}
    m = {name: mf.mixture_index(P) for name, P in (("circle", circle), ("pair", pair), ("axes", axes))}
    # measured: separability circle 0.53, pair 0.10, square 0.01; mixture circle 0.29, pair 0.84, axes 1.0
    assert s["circle"] > 0.4 and s["pair"] < 0.2 and s["square"] < 0.05
    assert m["circle"] < 0.4 and m["pair"] > 0.75 and m["axes"] > 0.99
    # a rotation and a rescaling of the plane change neither index much (the search covers rotations)
    rot = np.array([[math.cos(0.7), -math.sin(0.7)], [math.sin(0.7), math.cos(0.7)]])
    assert mf.separability_index(3.0 * square @ rot) < 0.05
    assert mf.mixture_index(3.0 * axes @ rot) > 0.99


def test_irreducibility_of_planted_groups_through_a_dictionary():
    """Reconstructions through decoder rows: circle latents score high, a co-occurring pair low."""
    g = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(12, 4, generator=g))
    plane, pair = Q.T[:2], Q.T[2:]
    ang = 2 * math.pi * torch.arange(7) / 7
    W = torch.cat([torch.stack([ang.cos(), ang.sin()], 1) @ plane, pair])  # 7 day latents + 2 pair latents
    c = torch.from_numpy(_circle(seed=1)).float()
    day = torch.atan2(c[:, 1], c[:, 0]).div(2 * math.pi / 7).round().remainder(7).long()
    z = torch.zeros(2 * RNG_N, 9)
    z[torch.arange(RNG_N), day] = c.norm(dim=1)
    z[RNG_N:, 7:] = torch.from_numpy(_cooccurring_pair(seed=2)).float()
    circle = mf.irreducibility(W, z, range(7))
    negative = mf.irreducibility(W, z, (7, 8))
    # measured: circle 0.63 (separability 0.63, mixture 0.31); pair 0.17 (separability 0.22, mixture 0.83)
    assert circle.score > 0.4 and negative.score < 0.25 and circle.score > 2 * negative.score
    assert circle.n_points == RNG_N and circle.explained > 0.99


# ---------------------------------------------------------------- errors and determinism


def test_errors_are_one_line_with_a_fix():
    W, z = torch.eye(4), torch.rand(30, 4)
    cases = [
        (ConfigError, lambda: mf.GroupingConfig(decoder_weight=1.5)),
        (ConfigError, lambda: mf.GroupingConfig(max_size=1)),
        (ConfigError, lambda: mf.IrreducibilityConfig(epsilon=0.0)),
        (ConfigError, lambda: mf.subspace_similarity(torch.eye(3)[:2], torch.eye(4)[:2])),
        (ConfigError, lambda: mf.project_group(W, z, (0, 0))),
        (ConfigError, lambda: mf.random_group_floor(lambda g, h: 0.0, (0,), [1, 2], size=3)),
        (ConfigError, lambda: CircleWorldConfig(n_days=2)),
        (ConfigError, lambda: CircleWorldConfig(rotate=False, d_a=8, d_b=12)),
        (DataError, lambda: mf.group_features(W, torch.rand(30, 5))),
        (DataError, lambda: mf.group_features(W, torch.zeros(30, 4))),
        (DataError, lambda: mf.separability_index(np.zeros((5, 3)))),
        (DataError, lambda: mf.code_similarity(torch.rand(10, 2), torch.rand(11, 2))),
        (DataError, lambda: mf.match_groups([], [(0, 1)], lambda g, h: 0.0, [0, 1])),
        (DataError, lambda: mf.affinity(W, torch.full((30, 4), float("nan")))),
    ]
    for kind, call in cases:
        with pytest.raises(kind) as info:
            call()
        assert "\n" not in str(info.value) and info.value.fix, str(info.value)


def test_deterministic():
    w = make_circle_world(CircleWorldConfig(d_a=12, d_b=12, n_features=8, seed=3))
    s1, s2 = w.sample(300, seed=4), w.sample(300, seed=4)
    assert torch.equal(s1.x_a, s2.x_a) and torch.equal(s1.x_b, s2.x_b) and torch.equal(s1.day, s2.day)
    assert not torch.equal(w.sample(300, seed=5).x_a, s1.x_a)
    W, _ = w.directions("a")
    z = torch.relu(s1.x_a @ W.T - 0.3)
    assert mf.group_features(W, z) == mf.group_features(W, z)
    f = lambda g, h: mf.subspace_similarity(W[list(g)], W[list(h)])  # noqa: E731
    assert mf.random_group_floor(f, (0, 1, 2), list(range(len(W))), 3, 20, seed=1) == \
        mf.random_group_floor(f, (0, 1, 2), list(range(len(W))), 3, 20, seed=1)


def test_circle_world_plants_what_it_says():
    w = make_circle_world(CircleWorldConfig(d_a=16, d_b=20, rotate=True, seed=1))
    s = w.sample(2000, seed=0)
    assert ((s.day >= -1) & (s.day < 7)).all() and 0.2 < (s.day >= 0).float().mean() < 0.4
    days = w.days("a")
    assert torch.allclose(days.norm(dim=1), torch.ones(7), atol=1e-5)
    assert float(days[0] @ days[1]) == pytest.approx(math.cos(2 * math.pi / 7), abs=1e-5)
    # B's circle is A's embedded: the same plane's geometry, in another basis
    assert torch.allclose(w.days("b") @ w.days("b").T, w.days("a") @ w.days("a").T, atol=1e-4)
    assert torch.allclose(w.plane_b @ w.plane_b.T, torch.eye(2), atol=1e-5)
    assert float((w.plane_b @ w.D_b.T).abs().max()) < 1.0  # B's private features are not the circle


# ---------------------------------------------------------------- planted positive: trained SAEs


#: SAE seed pairs of the planted positive. One trained pair is one draw of the method: tiny SAEs trained for 150
#: steps land differently on different CPUs (the same seed split the circle of one side on an AMD EPYC and not
#: on the machine the numbers were first measured on), so the known answer must hold for most pairs, not one.
PAIRS = (0, 10, 20, 30, 40)
MOST = 3


@pytest.fixture(scope="module")
def trained():
    from universality.sae import sae_config
    from universality.train import TrainConfig, train_saes

    world = make_circle_world(CircleWorldConfig(d_a=32, d_b=32, n_features=24, p_day=0.4, seed=0))
    s = world.sample(4000, seed=99)  # held-out tokens, shared by both worlds
    out = []
    for base in PAIRS:
        # different seeds: the two dictionaries never share an initialisation
        cfgs = [TrainConfig(sae_config("topk", d_in=32, d_sae=48, k=3), site=side, seed=base + i, lr=1e-2, name=side)
                for i, side in enumerate("ab")]
        saes = train_saes(world.source(512, seed=base, n_batches=150), cfgs, steps=150, progress=False)
        pair = {}
        for side, x in (("a", s.x_a), ("b", s.x_b)):
            with torch.no_grad():
                z = saes[side].encode(x)
            W = saes[side].W_dec.detach().clone()
            dirs, kinds = world.directions(side)
            best = (torch.nn.functional.normalize(W, dim=1) @ dirs.T).abs().argmax(1)
            live = mf.live_latents(z)
            pair[side] = dict(W=W, z=z, live=live, groups=mf.group_features(W, z),
                              family={i for i in live if kinds[best[i]] == "day"},
                              pair=[i for i in live if kinds[best[i]] == "pair"])
        out.append(pair)
    return out


def _circle_group(t):
    return max(t["groups"], key=lambda g: len(t["family"] & set(g)))


def _circle_found(t) -> tuple[bool, str]:
    """The circle is one group (purity >= 0.75, recall >= 0.8) and the most irreducible one (score > 0.2); two
    co-occurring independent 1-D features are not irreducible (the negative)."""
    fam = t["family"]
    if len(fam) < 4:  # the SAE splits the circle into several latents
        return False, f"family of {len(fam)} latents"
    circle = _circle_group(t)
    purity, recall = len(fam & set(circle)) / len(circle), len(fam & set(circle)) / len(fam)
    scores = {g: mf.irreducibility(t["W"], t["z"], g).score for g in t["groups"]}
    others = [v for g, v in scores.items() if g != circle and not math.isnan(v)]
    pair = mf.irreducibility(t["W"], t["z"], t["pair"])
    ok = (purity >= 0.75 and recall >= 0.8 and scores[circle] > 0.2 and scores[circle] > max(others, default=0.0)
          and len(t["pair"]) >= 2 and pair.score < 0.15 and pair.score < scores[circle] / 2)
    return ok, (f"purity {purity:.2f} recall {recall:.2f} circle {scores[circle]:.2f} best other "
                f"{max(others, default=0.0):.2f} pair {pair.score:.2f}")


@pytest.mark.parametrize("side", ["a", "b"])
def test_circle_is_one_group_and_the_most_irreducible(trained, side):
    # measured on an AMD EPYC (seed pairs 0 / 10 / 20): purity 1.0 / 1.0 / 0.86 (A), recall 0.88 / 1.0 / 0.86;
    # circle 0.28 / 0.38 / 0.27 against best other groups 0.17 / 0.16 / 0.01; side B's circle split at pair 0
    got = [_circle_found(p[side]) for p in trained]
    assert sum(ok for ok, _ in got) >= MOST, got


@pytest.mark.parametrize("view", ["decoder", "codes"])
def test_circle_groups_match_across_worlds_above_floor(trained, view):
    results = []
    for p in trained:
        a, b = p["a"], p["b"]
        if not (_circle_found(a)[0] and _circle_found(b)[0]):
            results.append((False, "circle not found on both sides"))
            continue
        if view == "decoder":  # one basis (B's days are turned inside the same plane)
            sim = lambda g, h: mf.subspace_similarity(a["W"][list(g)], b["W"][list(h)])  # noqa: E731
        else:  # codes on shared tokens: works across bases
            sim = lambda g, h: mf.code_similarity(a["z"][:, list(g)], b["z"][:, list(h)])  # noqa: E731
        m = mf.match_groups(a["groups"], b["groups"], sim, b["live"], n_draws=20, seed=0)
        assert m.matrix.shape == (len(a["groups"]), len(b["groups"]))
        table = m.table()
        row = table[table["group_a"] == _circle_group(a)].iloc[0]
        # first measured (decoder): similarity 0.98, floor mean 0.27, p95 0.37; (codes): 0.91 vs 0.21, 0.40
        # on an AMD EPYC (codes): 0.89, 0.63, 0.71, 0.83 against floor p95 0.43, 0.32, 0.36, 0.37
        ok = row["group_b"] == _circle_group(b) and row["similarity"] > 0.6 and row["similarity"] > row["floor_p95"] + 0.25
        results.append((bool(ok), f"similarity {row['similarity']:.2f} floor p95 {row['floor_p95']:.2f}"))
    assert sum(ok for ok, _ in results) >= MOST, results


def test_group_projection_plot(trained, tmp_path):
    from analysis import plots

    t = next(p["a"] for p in trained if _circle_found(p["a"])[0])
    circle = _circle_group(t)
    proj = mf.project_group(t["W"], t["z"], circle)
    df = proj.frame()
    assert set(df["latent"]) <= set(circle) and len(set(df["latent"])) == len(circle)
    path = plots.group_projection(df, tmp_path / "circle.png", "circle group")
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DataError):
        plots.group_projection(df.drop(columns="latent"), tmp_path / "bad.png", "t")
