"""PW-MCC (Song et al. 2025): mean cosine of Hungarian-matched decoder atoms, signed, as the authors' code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from universality.match import compare
from universality.match.summary import pw_mcc

from .helpers import permuted_noisy_copy


def test_pw_mcc_hand_case_uses_signed_cosines_and_the_optimal_assignment():
    e = torch.eye(3)
    B = torch.stack([e[1], -e[0], e[2]])  # a permuted copy with one atom flipped
    # pairs e0<->-e0 (cos -1), e1<->e1, e2<->e2: (1 + 1 - 1) / 3; absolute cosines would give 1
    assert pw_mcc(e, B) == pytest.approx(1 / 3)
    # the assignment, not each row's best partner: cosines a0.b0 = 0.9, a0.b1 = 0.8, a1.b0 = 0.72 + 0.6 sqrt(0.19),
    # a1.b1 = 0.28; pairing a0 with its best b0 leaves a1 with b1 (mean 0.59), the optimum swaps them
    A = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    B2 = torch.tensor([[0.9, float(np.sqrt(0.19))], [0.8, -0.6]])
    assert pw_mcc(A, B2) == pytest.approx((0.8 + 0.72 + 0.6 * np.sqrt(0.19)) / 2, abs=1e-6)

def test_pw_mcc_is_the_reference_formula_and_the_compare_row():
    A, B, _ = permuted_noisy_copy(n=20, d=10, noise=0.5, seed=2)
    An, Bn = A.numpy().astype(np.float64), B.numpy().astype(np.float64)
    cost = 1 - An @ Bn.T  # the authors' MCC: cost 1 - cos on unit rows, 1 - mean matched cost
    r, c = linear_sum_assignment(cost)
    assert pw_mcc(A, B) == pytest.approx(1 - cost[r, c].sum() / len(r), abs=1e-6)
    df = compare(A, B, n_perm=3, n_boot=0, floor="random")
    row = df[df.metric == "pw_mcc"].iloc[0]
    mmc = df[df.metric == "mean_matched_cosine"].iloc[0]
    assert row.view == "decoder" and row.value == pytest.approx(pw_mcc(A, B)) and row.value == mmc.value
    assert row.p_value == mmc.p_value and "Song et al. 2025" in row.source
