import numpy as np
import pytest
import torch

from universality.match import MatchResult


def test_result_normalises_types_and_is_frozen():
    r = MatchResult(torch.tensor([[0, 1], [1, 0]]), torch.tensor([0.9, 0.2]), None, 1.1, {"n_a": 4})
    assert r.pairs.dtype == np.int64 and r.scores.dtype == np.float64
    assert len(r) == 2 and r.mean_score == pytest.approx(0.55)
    assert r.as_dict() == {0: 1, 1: 0}
    assert r.fraction_above(0.5) == pytest.approx(0.25)  # one of n_a=4 latents above 0.5
    with pytest.raises(AttributeError):
        r.value = 3.0  # type: ignore[misc]


def test_result_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        MatchResult(np.zeros((3, 2)), np.zeros(2))
