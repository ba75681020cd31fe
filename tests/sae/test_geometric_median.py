from __future__ import annotations

import pytest
import torch

from universality.errors import DataError
from universality.sae import geometric_median


def test_symmetric_cloud_has_its_centre_as_median():
    c = torch.tensor([1.0, -2.0, 3.0])
    eye = torch.eye(3)
    pts = torch.cat([c + eye, c - eye, c + 2 * eye, c - 2 * eye])
    assert torch.allclose(geometric_median(pts), c, atol=1e-5)


def test_one_dimensional_median_and_robustness():
    pts = torch.tensor([[0.0], [1.0], [10.0]])
    assert geometric_median(pts, max_iter=500, tol=1e-10).item() == pytest.approx(1.0, abs=1e-3)
    cloud = torch.cat([torch.randn(99, 4, generator=torch.Generator().manual_seed(0)) * 0.01, torch.full((1, 4), 1000.0)])
    med = geometric_median(cloud)
    assert med.norm() < 0.1 < cloud.mean(dim=0).norm()


def test_bad_samples():
    with pytest.raises(DataError):
        geometric_median(torch.zeros(0, 3))
    with pytest.raises(DataError, match="NaN"):
        geometric_median(torch.tensor([[float("nan"), 0.0]]))
