"""Planted positive, so a report cannot be filled in by noise: a text family that occurs only in
D \\ D' must show up as SAE_D features that the subset analysis flags as missing from D'."""

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
    "study.harvest.train_tokens=16000",
    "study.harvest.eval_spans=60",
    "study.harvest.span_chars=160",
    "study.sae.steps=600",
    "study.sae.batch_size=256",
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
    row = spec[(spec["model"] == "pythia") & (spec["tokens"] == "planted family")].iloc[0]
    assert row["n_specific"] >= 1, "the model trained on D must have features for the planted family"
    # flagged missing far more often than the other features (measured here: 0.60 against 0.18)
    assert row["missing_among_specific"] >= max(0.4, 2 * row["missing_among_others"])
    assert "missing from SAE_D'" in out.report_md.read_text()
