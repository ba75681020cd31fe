"""Planted positives, so a report cannot be filled in by noise.

- A text family that occurs only in D \\ D' must show up as SAE_D features that the subset analysis
  flags as missing from D'.
- A pattern that the zoo model sees only after step S must give final features whose lineage
  starts after S.
"""

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from universality.study.config import register_configs, study_from_dict
from universality.study.runner import run_study

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
register_configs()

COMMON = [
    "study.tokenizer_vocab=320",
    "study.corpus.max_docs=80",
    "study.harvest.train_tokens=4096",
    "study.harvest.eval_spans=48",
    "study.harvest.span_chars=160",
    "study.sae.steps=150",
    "study.sae.batch_size=128",
    "study.sae.expansion=4",
    "study.sae.k=6",
    "study.sites=[blocks.1.hook_resid_post]",
]


def _study(name: str, out: Path, extra):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=[f"study={name}", f"study.out_dir={out}", *COMMON, *extra])
    return study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))


@pytest.mark.slow
def test_family_only_in_d_minus_dprime_is_flagged_missing(tmp_path):
    model = "{steps: 120, warmup_steps: 10, d_model: 48, n_heads: 2}"
    cfg = _study("subset_generalization", tmp_path / "s", [
        "study.corpus.planted_docs=30",
        f"study.models=[{{name: pythia, zoo: tiny_pythia, data: D, overrides: {model}}},"
        f" {{name: pythia_sub, zoo: tiny_pythia, data: D_prime, overrides: {model}}}]",
    ])
    out = run_study(cfg, progress=False)
    spec = pd.read_csv(out.root / "tables" / "subset_generalization__specific_features.csv")
    row = spec[spec["model"] == "pythia"].iloc[0]
    assert row["n_specific"] >= 1, "the model trained on D must have features for the planted family"
    assert row["missing_among_specific"] >= 0.5
    assert row["missing_among_specific"] > row["missing_among_others"]
    assert "missing from SAE_D'" in out.report_md.read_text()


@pytest.mark.slow
def test_feature_learned_after_step_is_born_there(tmp_path):
    cfg = _study("feature_evolution", tmp_path / "e", [
        "study.corpus.inject_after_step=60",
        "study.models=[{name: pythia, zoo: tiny_pythia, data: D, checkpoints: all, overrides: {steps: 120,"
        " warmup_steps: 10, d_model: 48, n_heads: 2, checkpoint_steps: [0, 30, 60, 90, 120]}}]",
    ])
    out = run_study(cfg, progress=False)
    born = pd.read_csv(out.root / "tables" / "feature_evolution__injected_pattern_features_blocks.1.hook_resid_post.csv")
    assert len(born) >= 1, "the final SAE must have features for the pattern injected after step 60"
    assert born["born_after_injection"].mean() >= 0.5, born.to_string()
    assert set(born["born_at"]) <= {"step90", "step120"} | set(born["born_at"][~born["born_after_injection"]])
    evo = pd.read_csv(out.results_csv)
    assert (evo["skyline_hi"] - evo["skyline_lo"] >= 0).all() and (evo["n_seeds"] >= 3).all()
    assert ((evo["skyline"] - evo["floor"]) > 0).all()
