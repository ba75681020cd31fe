import numpy as np
import pytest
import torch

from universality.match import compare
from universality.match.compare import COLUMNS
from universality.match.worlds import PairedWorldConfig, make_paired_world

from .helpers import ToySAE, unit


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small problems: one intra-op thread is fastest (and steady) on a crowded 2-core machine."""


def test_compare_reports_every_metric_with_baselines_in_one_basis():
    w = make_paired_world(PairedWorldConfig(n_features=32, d_a=24, d_b=24, shared_fraction=0.5, rotate=False))
    s = w.sample(2000)
    a, b = ToySAE(w.D_a, 0.3), ToySAE(w.D_b, 0.3)
    g = torch.Generator().manual_seed(0)
    sky_a = ToySAE(w.D_a + 0.05 * torch.randn(w.D_a.shape, generator=g), 0.3)
    sky_b = ToySAE(w.D_b + 0.05 * torch.randn(w.D_b.shape, generator=g), 0.3)
    df = compare(a, b, activations=(s.x_a, s.x_b), token_ids=s.token_ids, skyline=(sky_a, sky_b), n_perm=4)
    assert list(df.columns) == COLUMNS
    metrics = set(df.metric)
    for m in ("mean_matched_cosine", "mmcs", "mppc", "linear_cka", "svcca", "rsa", "mean_matched_correlation"):
        assert m in metrics
    assert {f"shared_fraction@{t:g}" for t in (0.5, 0.6, 0.7, 0.8, 0.9)} <= metrics
    row = df[df.metric == "shared_fraction@0.7"].iloc[0]
    assert row.value == pytest.approx(0.5, abs=0.1) and row.skyline_a > 0.9 and row.skyline_b > 0.9
    sfc = df[df.metric == "shared_fraction_corr@0.5"].iloc[0]
    assert sfc.value == pytest.approx(0.5, abs=0.1) and sfc.p_value <= 0.2
    ok = df[df.note == ""]
    sky = (ok.skyline_a + ok.skyline_b) / 2
    assert np.allclose(ok.normalised, (ok.value - ok.floor) / (sky - ok.floor))
    assert (df.source != "").all()


def test_compare_across_widths_refuses_weights_and_says_why():
    w = make_paired_world(PairedWorldConfig(n_features=24, d_a=16, d_b=24, shared_fraction=0.75))
    s = w.sample(1500)
    df = compare(ToySAE(w.D_a, 0.3), ToySAE(w.D_b, 0.3), activations=(s.x_a, s.x_b), token_ids=s.token_ids,
                 n_perm=3)
    weight = df[df.metric == "mean_matched_cosine"].iloc[0]
    assert np.isnan(weight.value) and "widths differ" in weight.note
    assert df[df.metric == "mppc"].value.notna().all()
    assert df[df.metric == "mppc"].note.str.contains("no skyline").all()  # no skyline: no ratio printed


def test_tiny_skyline_floor_gap_gives_nan_and_a_note():
    A = unit(torch.randn(16, 32, generator=torch.Generator().manual_seed(123)))  # not the floor's seed (0)
    df = compare(A, A, skyline=A.clone(), n_perm=2, floor="random")
    row = df[df.metric == "mmcs"].iloc[0]
    assert row.value == pytest.approx(1.0, abs=1e-5)
    # 16 random directions in 32 dimensions match a random dictionary far below 1 and the skyline is 1:
    # the gap is real, so a ratio is printed (1: the copy is as similar as the skyline)
    assert np.isfinite(row.normalised) and row.normalised == pytest.approx(1.0, abs=1e-4)
    # a skyline below the floor (the negated dictionary: matched cosine -1) leaves no gap to divide by
    df2 = compare(A, A, skyline=-A, n_perm=2, floor="random")
    r2 = df2[df2.metric == "mean_matched_cosine"].iloc[0]
    assert np.isnan(r2.normalised) and "too small" in r2.note


# ------------------------------------------------------------------ p-values that can be small, intervals
from universality.match.compare import ASSIGNMENT_NULLS, HEADLINE_SHARED_NOTE, N_PERM, NO_CI_WEIGHTS  # noqa: E402

_HEADLINE = [("mean_matched_cosine", "a<->b"), ("pw_mcc", "a<->b"), ("mmcs", "a->b"), ("mmcs", "b->a"),
             ("mppc", "a->b"), ("mppc", "b->a"), ("mean_matched_correlation", "a<->b"), ("linear_cka", "a<->b")]


def _planted(shared: float, seed: int = 0, n: int = 32, d: int = 24, T: int = 2000, **kw):
    w = make_paired_world(PairedWorldConfig(n_features=n, d_a=d, d_b=d, shared_fraction=shared, rotate=False,
                                            seed=seed))
    s = w.sample(T, seed=seed)
    return compare(ToySAE(w.D_a, 0.3), ToySAE(w.D_b, 0.3), activations=(s.x_a, s.x_b), token_ids=s.token_ids, **kw)


def test_new_columns_come_after_the_old_ones():
    old = ["metric", "view", "direction", "value", "floor", "skyline_a", "skyline_b", "normalised", "p_value",
           "note", "source"]
    assert COLUMNS[:len(old)] == old
    assert COLUMNS[len(old):] == ["p_method", "p_resolution", "ci_low", "ci_high", "ci_method"]


def test_a_strongly_shared_pair_gets_p_below_0001_with_the_defaults():
    df = _planted(0.8).set_index(["metric", "direction"])  # default n_perm and n_boot
    for key in _HEADLINE:
        row = df.loc[key]
        assert row.p_value <= 1e-3, key
        R = int(row.p_method.split()[3])  # "normal tail from R perms"
        assert row.p_method.startswith("normal tail from") and row.p_resolution == pytest.approx(1 / (R + 1))
    # the assignment statistics read fewer null samples, and say so
    assert df.loc[("mean_matched_correlation", "a<->b")].p_method == f"normal tail from {ASSIGNMENT_NULLS} perms"
    assert df.loc[("mppc", "a->b")].p_method == f"normal tail from {N_PERM} perms"


def test_independent_pairs_get_p_values_spread_over_0_1():
    ps = []
    for seed in range(5):
        df = _planted(0.0, seed=seed, n=16, d=12, T=500, n_boot=0).set_index(["metric", "direction"])
        ps += [df.loc[k].p_value for k in (("mppc", "a->b"), ("linear_cka", "a<->b"), ("mmcs", "a->b"))]
    ps = np.array(ps)
    # 15 p-values of true nulls: roughly uniform, none tiny (each is < 0.01 with probability ~0.01)
    assert ps.min() > 0.01 and 0.25 < ps.mean() < 0.75 and (ps < 0.05).sum() <= 2 and ps.max() > 0.5


def test_bootstrap_intervals_cover_the_value_and_say_how_they_were_made():
    df = _planted(0.5, n_boot=60, n_perm=5).set_index(["metric", "direction"])
    for key in (("mppc", "a->b"), ("mppc", "b->a"), ("mean_matched_correlation", "a<->b"),
                ("shared_fraction_corr@0.5", "a->b"), ("linear_cka", "a<->b")):
        row = df.loc[key]
        assert row.ci_low <= row.value <= row.ci_high, key
        assert "block bootstrap (60)" in row.ci_method
    assert "partners fixed" in df.loc[("mppc", "a->b")].ci_method
    assert df.loc[("linear_cka", "a<->b")].ci_method.startswith("basic")
    weights = df.loc[[("mean_matched_cosine", "a<->b"), ("shared_fraction@0.5", "a->b")]]
    assert weights.ci_low.isna().all() and (weights.ci_method == NO_CI_WEIGHTS).all()
    assert df.loc[("shared_fraction@0.5", "a->b")].note.endswith(HEADLINE_SHARED_NOTE)
    off = _planted(0.5, n_boot=0, n_perm=0).set_index(["metric", "direction"])
    assert off.loc[("mppc", "a->b")].ci_method == "none: n_boot=0" and np.isnan(off.loc[("mppc", "a->b")].ci_low)
    assert np.isnan(off.loc[("mppc", "a->b")].p_value) and off.loc[("mppc", "a->b")].p_method == ""


def test_intervals_cover_the_population_value_of_a_planted_pair_in_most_samples():
    w = make_paired_world(PairedWorldConfig(n_features=16, d_a=12, d_b=12, shared_fraction=0.5, rotate=False,
                                            noise_std=0.3, seed=1))
    a, b = ToySAE(w.D_a, 0.3), ToySAE(w.D_b, 0.3)

    def table(T, sample_seed, **kw):
        s = w.sample(T, seed=sample_seed)
        return compare(a, b, activations=(s.x_a, s.x_b), token_ids=s.token_ids, **kw).set_index(["metric", "direction"])

    keys = [("mppc", "a->b"), ("mppc", "b->a"), ("mean_matched_correlation", "a<->b"), ("linear_cka", "a<->b")]
    population = table(60_000, 999, n_perm=0, n_boot=0).loc[keys, "value"]  # large sample ~ population value
    hits = {k: 0 for k in keys}
    for rep in range(12):
        df = table(1500, rep, n_perm=0, n_boot=100, seed=rep)
        for k in keys:
            hits[k] += bool(df.loc[k].ci_low <= population[k] <= df.loc[k].ci_high)
    assert all(h >= 9 for h in hits.values()), hits  # nominal 95%: 11.4 of 12
