"""Guards against silent confounds (issue "Numbers that cannot mislead"): every number that would mislead
carries a note - SVCCA/RSA with too few pairs, normalised values above 1, decoder metrics across different
bases, dead latents left out of MPPC, a dictionary matched with itself - and ``MatchResult.value`` says what
it is."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from universality.match import METHODS, compare, match
from universality.match.compare import ABOVE_SKYLINE_NOTE, SELF_NOTE, basis_mismatch, metric_row
from universality.match.result import SELF_MATCH_NOTE, VALUE_MEANINGS, MatchResult
from universality.match.summary import MIN_PAIRS_RATIO, rsa, svcca, too_few_pairs
from universality.match.views import codes_from_dense
from universality.match.worlds import PairedWorldConfig, make_paired_world

from .helpers import ToySAE, permuted_noisy_copy, unit


# ------------------------------------------------------------------------------------------ SVCCA / RSA
def test_svcca_rsa_of_four_pairs_in_64_dimensions_are_nan_with_a_reason():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(4, 64, generator=g), torch.randn(4, 64, generator=g)  # independent
    assert math.isnan(svcca(X, Y)) and math.isnan(rsa(X, Y))  # unguarded SVCCA read 1.000 here
    why = too_few_pairs(X, Y)
    assert why is not None and "4 pairs for 3 + 3 dimensions" in why and ">= 2 x (r_a + r_b) = 12" in why


def test_independent_data_with_fewer_pairs_than_dimensions_is_refused_and_with_enough_scores_low():
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(40, 64, generator=g), torch.randn(40, 64, generator=g)
    assert math.isnan(svcca(X, Y))  # 40 independent pairs in 64 dimensions read SVCCA 0.945 unguarded
    X, Y = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    assert too_few_pairs(X, Y) is None  # 400 >= 2 (16 + 16)
    assert svcca(X, Y) < 0.35 and abs(rsa(X, Y)) < 0.1


def test_the_pair_rule_is_k_at_least_twice_the_reduced_dimensions():
    g = torch.Generator().manual_seed(2)
    Z = torch.randn(200, 5, generator=g)
    d = 5 + 5
    assert MIN_PAIRS_RATIO == 2.0
    assert too_few_pairs(Z[: 2 * d], Z[: 2 * d] * 3) is None
    assert too_few_pairs(Z[: 2 * d - 1], Z[: 2 * d - 1] * 3) is not None
    assert svcca(Z[: 2 * d], Z[: 2 * d] * 3) == pytest.approx(1.0, abs=1e-9)


def test_compare_rows_carry_the_too_few_pairs_reason():
    w = make_paired_world(PairedWorldConfig(n_features=32, d_a=24, d_b=24, shared_fraction=0.5, rotate=False))
    s = w.sample(2000)
    df = compare(ToySAE(w.D_a, 0.3), ToySAE(w.D_b, 0.3), activations=(s.x_a, s.x_b), token_ids=s.token_ids, n_perm=2)
    for name in ("svcca", "rsa"):
        row = df[df.metric == name].iloc[0]
        assert np.isnan(row.value) and np.isnan(row.floor) and "SVCCA/RSA need" in row.note


def test_compare_scores_svcca_when_there_are_enough_pairs():
    w = make_paired_world(PairedWorldConfig(n_features=96, d_a=6, d_b=6, shared_fraction=1.0, rotate=False))
    s = w.sample(4000)
    df = compare(ToySAE(w.D_a, 0.3), ToySAE(w.D_b, 0.3), activations=(s.x_a, s.x_b), token_ids=s.token_ids, n_perm=2)
    row = df[df.metric == "svcca"].iloc[0]
    assert np.isfinite(row.value) and "SVCCA/RSA need" not in row.note


# ------------------------------------------------------------------------------------------ notes
def test_normalised_above_one_carries_a_note():
    above = metric_row("mmcs", "decoder", "a->b", 0.9, 0.1, 0.5, float("nan"), 0.5, float("nan"))
    assert above["normalised"] == pytest.approx(2.0) and ABOVE_SKYLINE_NOTE in above["note"]
    below = metric_row("mmcs", "decoder", "a->b", 0.4, 0.1, 0.5, float("nan"), 0.5, float("nan"))
    assert below["normalised"] == pytest.approx(0.75) and below["note"] == ""


class _Recorded(ToySAE):
    def __init__(self, D: torch.Tensor, **meta: str) -> None:
        super().__init__(D, 0.3)
        self.meta = dict(meta)


def test_decoder_metrics_across_different_bases_are_marked_not_meaningful():
    A, B, _ = permuted_noisy_copy(n=16, d=12)
    a = _Recorded(A, model="pythia-70m", site="blocks.3.hook_resid_post")
    b = _Recorded(B, model="gpt2", site="blocks.3.hook_resid_post")
    assert basis_mismatch(a, b) == "model 'pythia-70m' vs 'gpt2'"
    df = compare(a, b, n_perm=1, floor="random")
    assert df.note.str.contains("not meaningful: different bases").all()
    same = _Recorded(B, model="pythia-70m", site="blocks.3.hook_resid_post")
    assert basis_mismatch(a, same) is None and basis_mismatch(a, ToySAE(B)) is None
    assert not compare(a, same, n_perm=1, floor="random").note.str.contains("different bases").any()


class _HalfDead(ToySAE):
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = super().encode(x)
        z[:, :3] = 0  # three latents never fire
        return z


def test_compare_mppc_rows_say_how_many_latents_were_dead():
    w = make_paired_world(PairedWorldConfig(n_features=16, d_a=12, d_b=12, shared_fraction=1.0, rotate=False))
    s = w.sample(1500)
    df = compare(_HalfDead(w.D_a, 0.3), ToySAE(w.D_b, 0.3), activations=(s.x_a, s.x_b), token_ids=s.token_ids,
                 n_perm=1)
    ab = df[(df.metric == "mppc") & (df.direction == "a->b")].iloc[0]
    ba = df[(df.metric == "mppc") & (df.direction == "b->a")].iloc[0]
    assert "3 of 16 latents of a dead" in ab.note and "0 of 16 latents of b dead" in ba.note


# ------------------------------------------------------------------------------------------ self-match
def test_matching_a_dictionary_with_itself_says_so():
    A, B, _ = permuted_noisy_copy(n=12, d=8)
    assert match(A, A).meta["note"] == SELF_MATCH_NOTE
    assert match(A, A.clone(), method="emd").meta["note"] == SELF_MATCH_NOTE  # identical weights
    assert "note" not in match(A, B).meta
    ids = torch.arange(300)
    z = torch.relu(torch.randn(300, 12, generator=torch.Generator().manual_seed(0)))
    c = codes_from_dense(z, ids)
    assert match(c, codes_from_dense(z, ids), view="activations").meta["note"] == SELF_MATCH_NOTE
    assert "note" not in match(c, codes_from_dense(z.flip(1), ids), view="activations").meta
    df = compare(A, A, n_perm=1, floor="random")
    assert df.note.str.contains(SELF_NOTE).all()
    assert not compare(A, B, n_perm=1, floor="random").note.str.contains(SELF_NOTE).any()


# ------------------------------------------------------------------------------------------ value
def test_value_says_what_it_is_for_every_method():
    A, B, _ = permuted_noisy_copy(n=12, d=8)
    for method in METHODS:
        res = match(A, B, method=method)
        assert res.value_meaning == VALUE_MEANINGS[method]
    hung = match(A, B)
    assert hung.value == pytest.approx(hung.scores.sum()) and "sum" in hung.value_meaning
    emd = match(A, B, method="emd")
    S = (unit(A) @ unit(B).T).double().numpy()
    assert emd.value == pytest.approx(float((emd.plan * (1 - S)).sum()), abs=1e-6) and "cost" in emd.value_meaning
    assert "'custom'" in MatchResult(np.zeros((0, 2)), np.zeros(0), meta={"method": "custom"}).value_meaning
