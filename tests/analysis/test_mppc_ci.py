"""The studies' MPPC intervals (``analysis.studies.common.mppc_ci``): they cover the full-sample value, shrink
with more tokens, and a pair with nothing shared sits near zero."""

from __future__ import annotations

import pytest

from analysis.studies.common import mppc_ci, per_feature_mppc
from universality.match.baselines import shuffle_tokens
from universality.match.views import codes_from_dense
from universality.match.worlds import PairedWorldConfig, make_paired_world


def _codes(T: int, fraction: float = 0.5):
    w = make_paired_world(PairedWorldConfig(n_features=48, d_a=24, d_b=24, shared_fraction=fraction, rotate=False,
                                            seed=2))
    s = w.sample(T, seed=5)
    return codes_from_dense(s.z_a, fingerprint="t"), codes_from_dense(s.z_b, fingerprint="t")


@pytest.mark.parametrize("direction", ["a->b", "b->a", "both"])
def test_interval_covers_the_value_in_each_direction(direction):
    ca, cb = _codes(3000)
    fa, fb = per_feature_mppc(ca, cb)
    value = {"a->b": fa.mean(), "b->a": fb.mean(), "both": (fa.mean() + fb.mean()) / 2}[direction]
    ci = mppc_ci(ca, cb, direction)
    assert ci["ci_low"] <= value <= ci["ci_high"]
    assert 0 < ci["ci_high"] - ci["ci_low"] < 0.1
    assert "partners fixed" in ci["ci_method"]


def test_interval_shrinks_with_tokens_and_sits_low_for_a_null_pair():
    small, large = mppc_ci(*_codes(1000)), mppc_ci(*_codes(8000))
    assert large["ci_high"] - large["ci_low"] < small["ci_high"] - small["ci_low"]
    ca, cb = _codes(3000)
    null = mppc_ci(ca, shuffle_tokens(cb, seed=1))
    assert null["ci_high"] < 0.2
