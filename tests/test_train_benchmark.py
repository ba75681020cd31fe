"""``benchmarks/train.py``'s time-to-target arithmetic (hand curves) and its zoo-site mode on a tiny run:
CE loss recovered rides on every curve point and becomes a target."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pt(step, ev, ce=None):
    p = {"step": step, "tokens": step * 10, "wall_s": step / 10, "explained_variance": ev}
    if ce is not None:
        p["ce_loss_recovered"] = ce
    return p


def test_time_to_is_the_first_point_from_which_the_curve_stays_above():
    train = _load("train")
    curve = [_pt(0, 0.6), _pt(5, 0.4), _pt(10, 0.55), _pt(15, 0.5), _pt(20, 0.7)]
    got = train.time_to(curve, 0.5)
    assert (got["step"], got["tokens"], got["wall_s"]) == (10, 100, 1.0)  # starts above, dips, counts from its return
    assert got["first"]["step"] == 0
    missed = train.time_to(curve, 0.8)
    assert missed["step"] is None and "best explained variance 0.7000" in missed["note"]


def test_ce_targets_join_the_table_only_when_every_curve_carries_them():
    train = _load("train")
    rows = {"universality": {"curve": [_pt(0, 0.1, 0.80), _pt(5, 0.6, 0.92), _pt(10, 0.7, 0.95)]},
            "sparsify": {"curve": [_pt(0, 0.3, 0.85), _pt(5, 0.5, 0.88), _pt(10, 0.65, 0.91)]}}
    ttt = train.time_to_target(rows, [0.5], ce_targets=[0.9])
    ce = ttt["table"]["CE loss recovered 0.9"]
    assert ce["universality"]["step"] == 5 and ce["sparsify"]["step"] == 10
    assert ttt["target_metric"]["CE loss recovered 0.9"] == "ce_loss_recovered"
    anchor = next(k for k in ttt["table"] if k.startswith("anchor"))
    assert ttt["table"][anchor]["universality"]["step"] == 10  # 0.7 >= sparsify's final 0.65 only at the end
    assert ttt["ours_over_anchor_time_to_anchor_final_ev"] == pytest.approx(1.0)
    del rows["sparsify"]["curve"][-1]["ce_loss_recovered"]
    assert not any(k.startswith("CE") for k in train.time_to_target(rows, [0.5], ce_targets=[0.9])["table"])


def test_zoo_site_mode_records_ce_loss_recovered_on_every_point(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(BENCH))  # main() imports its sibling modules (bench_memory, zoo_site)
    train = _load("train")
    import universality.zoo as zoo

    preset = zoo.load_preset
    monkeypatch.setattr(zoo, "load_preset", lambda name, **kw: preset(name, **{**kw, "steps": 4, "warmup_steps": 1}))  # a 4-step model
    out = tmp_path / "zoo.json"
    doc = train.main(["--zoo", "tiny_pythia", "--zoo-docs", "12", "--steps", "6", "--batch", "256", "--d-sae", "128",
                      "--k", "8", "--eval-every", "3", "--devices", "cpu", "--out", str(out)])
    res = doc["results"][0]
    assert doc["config"]["d_in"] == doc["config"]["zoo"]["d_in"] and doc["config"]["zoo"]["model_steps"] == 4
    for name in ("universality", "sae_lens", "sparsify"):
        row = res["libraries"][name]
        if "error" in row:  # the bench extra is missing: the others still run
            continue
        curve = row["curve"]
        assert [p["step"] for p in curve] == [0, 3, 6]
        assert all(-1.0 < p["ce_loss_recovered"] < 1.5 for p in curve)
    assert "CE loss recovered 0.9" in res["time_to_target"]["table"]
    assert out.exists() and out.with_suffix(".png").exists()
