"""Planted positives, so a report cannot be filled in by noise: a text family that occurs only in
D \\ D' must show up as crosscoder latents exclusive to the D model that fire mostly on D \\ D' text
(the subset analysis reports the family's SAE_D features and their share missing from D' beside it),
and a passage a zoo model sees only after step S must show up as features the lineage finds born after
S, and as crosscoder latents born after S."""

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
    "study.sae.topk.k=6",
    "study.sites=[blocks.1.hook_resid_post]",
    "study.sae.expansions=[]",  # no extra widths: the planted positives are about the main dictionaries
    "study.cards=false",  # the known answers are in the tables; the card page is tested with the quickstart
]


def _study(name: str, out: Path, extra, analyses: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        # the preset's own analysis and the arms named (the tiny arms are tested in tests/study/test_crosscoder_*.py)
        cfg = compose(config_name="config", overrides=[f"study={name}", f"study.out_dir={out}",
                                                       f"study.analyses=[{','.join((name, *analyses))}]", *COMMON, *extra])
    return study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))


@pytest.mark.slow
def test_family_only_in_d_minus_dprime_is_flagged_missing(tmp_path):
    model = "{steps: 120, warmup_steps: 10, d_model: 48, n_heads: 2}"
    cfg = _study("subset_generalization", tmp_path / "s", [
        "study.corpus.planted_docs=30",
        f"study.models=[{{name: pythia, zoo: tiny_pythia, data: D, overrides: {model}}},"
        f" {{name: pythia_sub, zoo: tiny_pythia, data: D_prime, overrides: {model}}}]",
    ], analyses=("crosscoder_subset",))
    out = run_study(cfg, progress=False)
    spec = pd.read_csv(out.root / "tables" / "subset_generalization__specific_features.csv")
    row = spec[(spec["model"] == "pythia") & (spec["tokens"] == "planted family")].iloc[0]
    assert row["n_specific"] >= 1, "the model trained on D must have features for the planted family"
    # The matching arm's reading of the family is reported, but at this size it is within the SAE-seed noise,
    # so it is not a known answer: the share of the family's 5-7 SAE_D features missing from SAE_D' was 0.60 (3 of
    # 5) against 0.18 for the other features when first measured, 0.40 (2 of 5) against 0.22 after the CPU
    # TopK backward changed its rounding, and 0.14 against 0.25 with 60 planted documents; the family's
    # seed-stable features were never missing. The known answer of this study is the crosscoder arm's below.
    assert 0.0 <= row["missing_among_specific"] <= 1.0 and 0.0 <= row["missing_among_others"] <= 1.0
    assert row["seed_stable_specific"] <= row["n_specific"]
    assert "missing from SAE_D'" in out.report_md.read_text()
    # the crosscoder arm: latents exclusive to the D model fire on D \ D' text far more than on D' text (measured on
    # an AMD EPYC: 2 exclusive latents, firing share 0.955 and 0.903 for the two seeds; shared latents 0.474; floor
    # from random live sets 0.485)
    tidy = pd.read_csv(out.results_csv)
    cc = tidy[tidy["analysis"] == "crosscoder_subset"].set_index("metric")
    excl, shared = cc.loc["D \\ D' firing share (latents exclusive to pythia)"], cc.loc["D \\ D' firing share (shared latents)"]
    mean_excl = (excl["value"] + excl["value_seed2"]) / 2
    assert mean_excl >= 0.7 and mean_excl >= shared["value"] + 0.2 and mean_excl >= excl["floor"] + 0.2


@pytest.mark.slow
def test_passage_learned_after_step_s_is_born_after_s(tmp_path):
    """A passage of common words enters training only after step S: SAEs of checkpoints up to S have
    (almost) no feature that fires on it beyond what its words do elsewhere, the final SAE has
    several, and the lineage says most of them are born after S."""
    after, steps = 60, 160
    model = (f"{{steps: {steps}, warmup_steps: 10, d_model: 48, n_heads: 2,"
             f" checkpoint_steps: [0, {after // 2}, {after}, {(after + steps) // 2}, {steps}]}}")
    cfg = _study("feature_evolution", tmp_path / "s", [
        f"study.corpus.inject_after_step={after}",
        f"study.models=[{{name: pythia, zoo: tiny_pythia, data: D, checkpoints: all, overrides: {model}}}]",
    ], analyses=("crosscoder_evolution",))
    out = run_study(cfg, progress=False)
    site = "blocks.1.hook_resid_post"
    per_rev = pd.read_csv(out.root / "tables" / f"feature_evolution__injected_passage_by_checkpoint_{site}.csv")
    born = pd.read_csv(out.root / "tables" / f"feature_evolution__injected_passage_features_{site}.csv")
    at_s = int(per_rev.loc[per_rev["step"] == after, "n_context"].iloc[0])
    final = int(per_rev.loc[per_rev["step"] == steps, "n_context"].iloc[0])
    # measured: 0 features at steps 30 and 60, 4 at 160, 3 of the 4 born after step 60; after TopK encoding
    # moved onto the stacked kernel (same maths, other rounding): 0, 0, 1 (context excess 0.56, just over
    # the 0.5 line), 2, 4 at steps 0/30/60/110/160, 3 of the 4 born after step 60
    assert at_s <= 1 and final >= at_s + 3
    assert born["born_after_injection"].mean() >= 2 / 3
    assert "passage introduced after step 60" in out.report_md.read_text()
    # the crosscoder arm over the five checkpoints: its passage latents are born after S (measured on an AMD EPYC:
    # one latent at context excess 0.72, born at step 110 for both seeds; floor: 0.019 of all live latents)
    tidy = pd.read_csv(out.results_csv)
    row = tidy[(tidy["analysis"] == "crosscoder_evolution")
               & (tidy["metric"] == "share of passage latents born after the injection step")].iloc[0]
    assert row["n_passage"] >= 1
    mean_after = (row["value"] + row["value_seed2"]) / 2
    assert mean_after >= 0.5 and mean_after >= row["floor"] + 0.3
