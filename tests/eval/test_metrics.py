from __future__ import annotations

import math

import pytest
import torch

from universality.errors import DataError
from universality.eval import metrics as M
from universality.sae import sae_config, make_sae


def test_explained_variance_known_answers():
    x = torch.randn(200, 7) * torch.arange(1, 8) + 3.0
    assert M.explained_variance(x, x) == pytest.approx(1.0)
    assert M.fvu(x, x) == pytest.approx(0.0, abs=1e-12)
    mean = x.mean(dim=0, keepdim=True).expand_as(x)
    assert M.explained_variance(x, mean) == pytest.approx(0.0, abs=1e-10)
    # halving the centred signal leaves 1/4 of the variance unexplained
    half = mean + 0.5 * (x - mean)
    assert M.explained_variance(x, half) == pytest.approx(0.75)
    # pooled over dimensions (not the mean of per-dimension R^2)
    x2 = torch.tensor([[0.0, 0.0], [2.0, 20.0]])
    xh = torch.tensor([[1.0, 0.0], [1.0, 20.0]])
    assert M.explained_variance(x2, xh) == pytest.approx(1 - 2 / (2 + 200))


def test_reconstruction_metrics_known_values():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    xh = torch.tensor([[6.0, 8.0], [0.0, 1.0], [0.0, 0.0]])
    assert M.mse(x, xh) == pytest.approx((9 + 16 + 1 + 1) / 6)
    assert M.l2_ratio(x, xh) == pytest.approx((2.0 + 1.0) / 2)  # the zero row is skipped
    assert M.cosine(x[:2], xh[:2]) == pytest.approx(0.5)


def test_sparsity_metrics_and_histogram():
    z = torch.tensor([[1.0, 0.0, -2.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    assert M.l0(z) == pytest.approx(1.5)
    assert M.l1(z) == pytest.approx(3.0)
    dens = M.firing_density(z)
    assert dens.tolist() == [0.5, 0.0, 1.0, 0.0]
    assert M.dead_fraction(dens) == 0.5
    assert M.dense_fraction(dens, 0.6) == 0.25
    h = M.density_histogram(torch.tensor([0.0, 1e-3, 1e-3, 0.5, 1.0]), bins=8, lo=-8, hi=0)
    assert h["n_dead"] == 1 and sum(h["counts"]) == 4 and len(h["edges"]) == 9
    assert h["counts"][5] == 2  # log10(1e-3) = -3 falls in [-3, -2)


def test_streaming_stats_equal_one_shot():
    sae = make_sae(sae_config("topk", 6, 12, k=2), seed=1)
    xs = [torch.randn(50, 6) + 1 for _ in range(4)]
    streamed = M.evaluate(sae, xs)
    x = torch.cat(xs)
    with torch.no_grad():
        xh = sae(x)
    assert streamed["explained_variance"] == pytest.approx(M.explained_variance(x, xh), rel=1e-9)
    assert streamed["l0"] <= 2.0
    assert math.isclose(streamed["fvu"], 1 - streamed["explained_variance"])


def test_bad_inputs():
    with pytest.raises(DataError):
        M.explained_variance(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(DataError, match="NaN"):
        M.mse(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
