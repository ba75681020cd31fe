import numpy as np
import pytest
import torch

from universality.match import compare
from universality.match.compare import COLUMNS
from universality.match.worlds import PairedWorldConfig, make_paired_world

from .helpers import ToySAE, unit


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
