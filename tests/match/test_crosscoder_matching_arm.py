"""The matching arm scored on planted N-source worlds (known answers without training: oracle dictionaries
whose decoder rows are the planted directions), and the calibration script's core on a tiny run."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from universality.crosscoder.known_answer import birth_report, matching_report
from universality.crosscoder.worlds import CrossWorldConfig, make_cross_world
from universality.errors import DataError
from universality.sae import make_sae, sae_config


def oracle(directions: torch.Tensor, rows: list[int], seed: int):
    """A tied ReLU dictionary whose latents are the planted ``directions[rows]`` (unit rows, small threshold)."""
    D = torch.nn.functional.normalize(directions[rows], dim=1)
    sae = make_sae(sae_config("relu", D.shape[1], len(rows), tied=True), seed=seed)
    with torch.no_grad():
        sae.W_dec.copy_(D)
        sae.b_enc.fill_(-0.05)
        sae.b_dec.zero_()
    return sae


def _world(**kw):
    # few features in a wide space: the planted directions are nearly orthogonal, so the oracle encodes cleanly
    return make_cross_world(CrossWorldConfig(widths=(64, 64), n_shared=4, n_exclusive=2, rotate=False, mean_active=2.0, seed=3, **kw))


def _present(world, s):
    return [i for i in range(world.amplitude.shape[1]) if bool(world.present()[s, i])]


def test_oracle_dictionaries_score_perfectly():
    world = _world()
    xs, _ = world.sample(4096, seed=1)
    dicts = tuple(oracle(world.directions[s], _present(world, s), seed=s) for s in range(2))
    r = matching_report(world, dicts, tuple(xs))
    assert r["shared_pairs"] == 4
    for cls in ("shared", "exclusive"):
        assert r[cls]["recall"] == 1.0 and r[cls]["precision"] == 1.0, (cls, r[cls])
    assert r["false_exclusive_rate"] == 0.0 and r["false_exclusive_rate_latent_scaling"] is None


def test_a_duplicate_latent_is_a_false_exclusive_of_matching():
    # the overcomplete failure: a second copy of shared feature 0 in source 0 has no partner left (one-to-one)
    world = _world()
    xs, _ = world.sample(4096, seed=1)
    rows0 = _present(world, 0)
    dicts = (oracle(world.directions[0], rows0 + [0], seed=0), oracle(world.directions[1], _present(world, 1), seed=1))
    r = matching_report(world, dicts, tuple(xs))
    assert r["shared"]["recall"] == 1.0 and r["shared"]["precision"] == 1.0
    assert r["exclusive"]["predicted"] == 5 and r["exclusive"]["precision"] == pytest.approx(4 / 5)
    assert r["false_exclusive_rate"] == pytest.approx(1 / 5)  # the duplicate's feature lives in both sources


def test_born_features_are_dated_by_matching_chains():
    world = make_cross_world(CrossWorldConfig(widths=(64,) * 3, n_shared=3, n_exclusive=0, births=(1, 2), rotate=False,
                                              mean_active=2.0, seed=4))
    xs, _ = world.sample(4096, seed=2)
    dicts = tuple(oracle(world.directions[s], _present(world, s), seed=s) for s in range(3))
    r = birth_report(world, dictionaries=dicts, xs=tuple(xs))["matching"]
    assert r["planted"] == [1, 2] and r["read"] == [1, 2]
    assert r["exact"] == 1.0 and r["false_birth_rate"] == 0.0


def test_bad_inputs_are_refused():
    world = _world()
    xs, _ = world.sample(64, seed=1)
    d = oracle(world.directions[0], _present(world, 0), seed=0)
    with pytest.raises(DataError, match="two-source"):
        matching_report(world, (d,), (xs[0],))
    with pytest.raises(DataError, match="born"):
        birth_report(world, dictionaries=(d, d), xs=tuple(xs))


def test_calibration_script_core_runs_both_arms():
    path = Path(__file__).parents[2] / "benchmarks" / "calibrate_crosscoder.py"
    spec = importlib.util.spec_from_file_location("calibrate_crosscoder", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.run(["same_basis"], steps=30, seeds=1)
    summary = result["scenarios"]["same_basis"]["summary"]
    assert set(summary) == {"batchtopk", "l1", "matching"}
    for arm, rows in summary.items():
        for name, v in rows.items():
            if v["mean"] is not None:
                assert 0.0 <= v["mean"] <= 1.0 and not math.isnan(v["mean"]), (arm, name, v)
    assert summary["matching"]["false-exclusive rate after Latent Scaling"]["mean"] is None  # not defined for matching
    assert summary["batchtopk"]["false-exclusive rate after Latent Scaling"]["mean"] is not None or \
        result["scenarios"]["same_basis"]["reports"]["batchtopk"][0]["false_exclusive_n"] == 0
    table = mod.markdown(result)
    assert "`matching`" in table and "shared recall" in table
