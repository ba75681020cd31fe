"""The crosscoder arm of feature evolution on a tiny checkpoint series with an injected passage: births per
checkpoint beside the lineage births, the passage latents' births against the injection step, the seed null
and the copy anchor (the final checkpoint crossed with copies of itself: every latent born at the first
checkpoint, the known answer)."""

import math

import numpy as np
import pandas as pd
import torch

from analysis.studies.crosscoder_evolution import birth_counts, later_distribution, tv_distance
from universality.crosscoder.analysis import birth_indices
from universality.study.runner import run_study

#: tiny: the decoder blocks barely leave their equal-norm start here, so births mostly sit at step 0 (the known-answer
#: births on a synthetic series are in tests/train/test_crosscoder_train.py and benchmarks/calibrate_crosscoder.py)
SAE_STEPS = 80
TINY = {"steps": 16, "warmup_steps": 4, "d_model": 32, "n_heads": 2, "checkpoint_steps": [0, 8, 16]}


def test_birth_helpers_on_known_trajectories():
    norms = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.6, 1.0], [0.0, 0.1, 2.0], [0.2, 0.3, 1.0]])
    births = birth_indices(norms, 0.5)
    assert births.tolist() == [0, 1, 2, 2]
    counts = birth_counts(births, 3)
    assert counts.tolist() == [1, 1, 2]
    p = later_distribution(counts)
    assert np.allclose(p, [1 / 3, 2 / 3])
    assert math.isclose(tv_distance(p, np.array([1.0, 0.0])), 2 / 3)
    assert np.isnan(later_distribution(np.array([3, 0, 0]))).all()


def test_crosscoder_evolution_on_a_tiny_series(tmp_path, tiny_study_cfg):
    after = 8
    cfg = tiny_study_cfg(tmp_path / "cce", ["crosscoder_evolution"],
                         [{"name": "pythia", "zoo": "tiny_pythia", "data": "D", "checkpoints": "all", "overrides": TINY}],
                         sae_steps=SAE_STEPS, corpus={"inject_after_step": after})
    out = run_study(cfg, progress=False)
    tidy = pd.read_csv(out.results_csv)
    rows = tidy[tidy["analysis"] == "crosscoder_evolution"].set_index("metric")
    later = rows.loc["share of live latents born after the first checkpoint"]
    for col in ("value", "value_seed2", "floor"):
        assert 0.0 <= later[col] <= 1.0, (col, later[col])
    assert later["floor"] <= 0.05  # known answer: copies of one checkpoint give every latent its birth at the first
    assert math.isclose(later["seed_null_spread"], abs(later["value"] - later["value_seed2"]), abs_tol=1e-9)
    assert later["n_live"] > 0
    two = pd.read_csv(out.root / "tables" / "crosscoder_evolution__two_arm_births.csv")
    assert list(two["step"]) == [0, 8, 16]
    for col in ("crosscoder_births", "crosscoder_births_seed2", "anchor_births", "lineage_births",
                "lineage_share_of_later", "tolerance", "comparable", "agree"):
        assert col in two.columns
    assert two["crosscoder_births"].sum() == later["n_live"] and two["anchor_births"].iloc[1:].sum() <= 1
    assert np.isnan(two["lineage_births"].iloc[0]) and (two["lineage_births"].iloc[1:] >= 0).all()
    dist = rows.loc["birth distribution distance (crosscoder vs lineage)"]
    assert math.isnan(dist["value"]) or 0.0 <= dist["value"] <= 1.0
    passage = rows.loc["share of passage latents born after the injection step"]
    assert passage["after_step"] == after and passage["skyline"] == 1.0
    assert 0.0 <= passage["floor"] <= 1.0
    born = pd.read_csv(out.root / "tables" / "crosscoder_evolution__passage_latents.csv")
    assert len(born) == passage["n_passage"]
    assert (born["born_after_injection"] == (born["born_step"] > after)).all()
    if len(born):
        assert math.isclose(passage["value"], born["born_after_injection"].mean())
    traj = pd.read_csv(out.root / "tables" / "crosscoder_evolution__decoder_norm_trajectories.csv")
    assert len(traj) == later["n_live"] and np.allclose(traj["step16"], 1.0)
    assert (out.root / "figures" / "crosscoder_evolution_trajectories.png").is_file()
    report = out.report_md.read_text()
    assert ("the two arms agree" in report or "the two arms disagree" in report
            or "the two arms cannot be compared" in report)
    assert bool(two["comparable"].iloc[0]) == np.isfinite(dist["value"])
    assert not bool(two["agree"].iloc[0]) or dist["value"] <= dist["tolerance"]
    print("\n" + two.to_string() + "\n" + born.to_string()
          + f"\npassage born after {after}: {passage['value']} (seed2 {passage['value_seed2']}, floor {passage['floor']}, "
          f"anchor {passage['anchor_value']}, all {passage['all_born_after']}); born later {later['value']:.3f}/"
          f"{later['value_seed2']:.3f}, anchor {later['floor']:.3f}; TV {dist['value']:.3f} tol {dist['tolerance']:.3f}")
