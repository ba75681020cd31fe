"""The crosscoder arm of subset generalisation on a tiny D vs D' study: latent classes, the D \\ D' firing
share of the D-exclusive and shared latents with the random-set floor, the seed null and the copy anchor
(the D model crossed with a copy of itself has almost no exclusive latent: the known answer), and the
two-arm table beside matching."""

import math

import numpy as np
import pandas as pd
import torch

from analysis.studies.crosscoder_subset import classify, firing_share
from universality.sae.crosscoder_config import crosscoder_config
from universality.sae.registry import make_sae
from universality.study.runner import run_study

TINY = {"steps": 16, "warmup_steps": 4, "d_model": 32, "n_heads": 2}


def test_firing_share_on_known_codes():
    z = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 1.0, 1.0]])
    out = torch.tensor([True, True, False, False])
    inside = ~out
    only_out = firing_share(z, np.array([0]), out, inside)
    assert only_out["share"] == 1.0 and math.isnan(only_out["ratio"])
    both = firing_share(z, np.array([2]), out, inside)
    assert both["share"] == 0.5 and both["ratio"] == 1.0 and math.isclose(both["act_share"], 2 / 3)
    assert math.isnan(firing_share(z, np.array([], dtype=int), out, inside)["share"])


def test_classify_finds_the_planted_exclusive_latent():
    """A hand-built crosscoder over two 2-wide sources: latent 0 decodes into source 0 only and reads a
    coordinate that is on only on the D \\ D' tokens; latent 1 is shared and fires everywhere; latent 2
    decodes into source 1 only and fires on the D' tokens."""
    cc = make_sae(crosscoder_config((2, 2), 3, sparsity="l1"))
    with torch.no_grad():
        cc.W_dec.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 1.0], [0, 0, 1.0, 0]]))
        cc.W_enc.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 1.0], [0, 0, 1.0, 0]]).T)
        cc.b_enc.zero_(), cc.b_dec.zero_()
    out = torch.tensor([True] * 6 + [False] * 6)
    x = torch.stack([out.float(), torch.ones(12), (~out).float(), torch.ones(12)], dim=1)
    res = classify(cc, x, out, ~out, seed=0)
    assert [len(res["groups"][g]) for g in ("exclusive_D", "shared", "exclusive_Dprime", "live")] == [1, 1, 1, 3]
    assert res["exclusive_D"]["share"] == 1.0 and res["shared"]["share"] == 0.5 and res["exclusive_Dprime"]["share"] == 0.0
    assert math.isclose(res["missing"], 0.5)  # one D-exclusive latent among the two the D model uses
    assert math.isclose(res["floors"]["exclusive_D"], 0.5, abs_tol=0.1)  # random single live latents: 1, 0.5 or 0
    assert math.isclose(res["floors"]["live"], res["live"]["share"])


def test_crosscoder_subset_on_a_tiny_study(tmp_path, tiny_study_cfg):
    cfg = tiny_study_cfg(tmp_path / "ccs", ["crosscoder_subset"],
                         [{"name": "pythia", "zoo": "tiny_pythia", "data": "D", "overrides": TINY},
                          {"name": "pythia_sub", "zoo": "tiny_pythia", "data": "D_prime", "overrides": TINY}],
                         subset={"kind": "fraction", "fraction": 0.5, "seed": 0})
    out = run_study(cfg, progress=False)
    tidy = pd.read_csv(out.results_csv)
    rows = tidy[tidy["analysis"] == "crosscoder_subset"].set_index("metric")
    excl = rows.loc["D \\ D' firing share (latents exclusive to pythia)"]
    shared = rows.loc["D \\ D' firing share (shared latents)"]
    for r in (excl, shared):
        for col in ("value", "value_seed2", "anchor_live_share"):
            assert math.isnan(r[col]) or 0.0 <= r[col] <= 1.0, (r.name, col, r[col])
        assert r["skyline"] == 1.0 and r["n_live"] > 0
    assert shared["n_latents"] > 0 and np.isfinite(shared["value"])
    assert 0.0 <= shared["floor"] <= 1.0  # random live sets of the shared group's size
    assert excl["n_latents"] == 0 or 0.0 <= excl["floor"] <= 1.0
    enrich = rows.loc["enrichment excess (D-exclusive minus shared firing share)"]
    if excl["n_latents"] > 0 and np.isfinite(excl["value"]):
        assert math.isclose(enrich["value"], excl["value"] - shared["value"], abs_tol=1e-9)
    cc = rows.loc["crosscoder: share of pythia latents missing from pythia_sub"]
    mt = rows.loc["matching: share of pythia SAE_D features missing from pythia_sub"]
    for r in (cc, mt):
        for col in ("value", "value_seed2", "floor"):
            assert 0.0 <= r[col] <= 1.0, (r.name, col, r[col])
        assert math.isclose(r["seed_null_spread"], abs(r["value"] - r["value_seed2"]), abs_tol=1e-9)
    assert cc["floor"] <= 0.1  # known answer: the D model crossed with a copy of itself has (almost) nothing exclusive
    two = pd.read_csv(out.root / "tables" / "crosscoder_subset__two_arm_missing.csv")
    assert list(two["arm"]) == ["crosscoder", "matching"]
    assert math.isclose(two.loc[0, "missing_share"], cc["value"]) and math.isclose(two.loc[1, "missing_share"], mt["value"])
    tol = max(two["seed_null_spread"])
    assert bool(two["agree"].iloc[0]) == (abs(cc["value"] - mt["value"]) <= tol)
    assert (out.root / "figures" / "crosscoder_subset_enrichment.png").is_file()
    report = out.report_md.read_text()
    assert "the two arms agree" in report or "the two arms disagree" in report
    print("\n" + two.to_string() + "\n" + rows[["value", "value_seed2", "floor", "skyline", "seed_null_spread"]].to_string()
          + f"\nanchor live share {shared['anchor_live_share']}")
