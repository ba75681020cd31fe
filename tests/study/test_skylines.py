"""Both skylines of Wang et al. 2024 (SAE seeds on one model; models pre-trained with different seeds)
and the guards on study rows: the model-seed copy of a zoo model, the two normalised values, the
notes (above a skyline, dead latents, a skyline not computed) and the report's naming of each skyline."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from analysis.studies.common import (
    MODEL_SEED,
    SAE_SEED,
    Interval,
    ModelSeedSkyline,
    dead_note,
    mean_skyline,
    norm_row,
)
from universality.errors import ConfigError
from universality.match import codes_from_dense
from universality.sae.config import TopKOptions
from universality.study.config import (
    MODEL_SEED_STEP,
    HarvestSpec,
    ModelSpec,
    StudyConfig,
    register_configs,
    seed_copy_name,
    study_from_dict,
)
from universality.study.pipeline import StudyContext, zoo_config
from universality.study.runner import run_study
from universality.zoo import read_manifest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
register_configs()

TINY = {"steps": 4, "warmup_steps": 1, "d_model": 16, "n_heads": 2, "checkpoint_steps": [0, 4]}


def study(**kw) -> StudyConfig:
    base = {"name": "sky", "analyses": ["architecture_comparison"], "sites": ["blocks.1.hook_resid_post"],
            "models": [{"name": "pythia", "zoo": "tiny_pythia", "overrides": TINY},
                       {"name": "mamba", "zoo": "tiny_mamba", "overrides": {**TINY, "seed": 5}}],
            "tokenizer_vocab": 300, "corpus": {"max_docs": 12}}
    return study_from_dict({**base, **kw})


# ------------------------------------------------------------------------------ the seed copies
def test_seed_copy_is_the_same_model_with_the_next_model_seed():
    cfg = study(model_seed_skyline=True)
    copy = cfg.seed_copy("pythia")
    orig = cfg.model("pythia")
    assert copy.name == seed_copy_name("pythia", MODEL_SEED_STEP) == "pythia-modelseed1"
    assert (copy.zoo, copy.data, copy.sites, copy.checkpoints) == (orig.zoo, orig.data, orig.sites, "final")
    assert copy.overrides == {**orig.overrides, "seed": 1}
    assert cfg.seed_copy("mamba").overrides["seed"] == 5 + MODEL_SEED_STEP  # from the model's own seed
    assert cfg.model(copy.name) == copy  # the copy is resolved by name like any model of the study
    za, zb = zoo_config(cfg, orig), zoo_config(cfg, copy)
    assert (za.seed, zb.seed) == (0, 1)
    assert dataclasses.replace(zb, seed=za.seed, name=za.name) == za  # nothing else differs


def test_no_seed_copy_when_off_or_for_hub_models():
    assert study().seed_copy("pythia") is None
    with pytest.raises(ConfigError, match="has no model 'pythia-modelseed1'"):
        study().model("pythia-modelseed1")
    mixed = study(model_seed_skyline=True,
                  models=[{"name": "pythia", "zoo": "tiny_pythia"}, {"name": "hub", "path": "EleutherAI/pythia-70m"}])
    assert mixed.seed_copy("hub") is None and mixed.seed_copy("pythia") is not None


def test_seed_copy_option_is_checked():
    with pytest.raises(ConfigError, match="no model is a zoo model"):
        study(model_seed_skyline=True, models=[{"name": "hub", "path": "EleutherAI/pythia-70m"}])
    with pytest.raises(ConfigError, match="name of the model-seed copy of 'pythia'"):
        study(model_seed_skyline=True, models=[{"name": "pythia", "zoo": "tiny_pythia"},
                                               {"name": "pythia-modelseed1", "zoo": "tiny_mamba"}])
    with pytest.raises(ConfigError, match="model_seed_skyline"):
        study(model_seed_skyline="yes")


def test_hydra_override_switches_the_model_seed_skyline_on():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=["study=quickstart", "study.model_seed_skyline=true"])
    assert study_from_dict(OmegaConf.to_container(cfg.study, resolve=True)).model_seed_skyline is True
    for name, on in (("quickstart", False), ("architecture_comparison", True), ("subset_generalization", True)):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            cfg = compose(config_name="config", overrides=[f"study={name}"])
        assert study_from_dict(OmegaConf.to_container(cfg.study, resolve=True)).model_seed_skyline is on, name


def test_model_seed_copy_differs_in_weights_only(tmp_path):
    """The copy is trained on the same data with the same tokenizer and architecture; its weights differ."""
    cfg = study(model_seed_skyline=True, out_dir=str(tmp_path))
    ctx = StudyContext(cfg)
    orig, copy = Path(ctx.model_path("pythia")), Path(ctx.model_path(ctx.seed_copy("pythia")))
    assert orig != copy
    ma, mb = read_manifest(orig), read_manifest(copy)
    assert ma["subset_hash"] == mb["subset_hash"] and ma["tokenizer_hash"] == mb["tokenizer_hash"]
    assert ma["n_tokens"] == mb["n_tokens"] and ma["n_params"] == mb["n_params"]
    assert {k: v for k, v in ma["config"].items() if k not in ("seed", "name")} == \
        {k: v for k, v in mb["config"].items() if k not in ("seed", "name")}
    assert (ma["config"]["seed"], mb["config"]["seed"]) == (0, 1)
    wa, wb = (load_file(str(p / "step4" / "model.safetensors")) for p in (orig, copy))
    assert wa.keys() == wb.keys() and all(wa[k].shape == wb[k].shape for k in wa)
    assert not any(torch.equal(wa[k], wb[k]) for k in wa if wa[k].numel() > 1 and wa[k].std() > 0)
    assert ctx.revisions(ctx.seed_copy("pythia")) == ["step4"]


# ---------------------------------------------------------------------------------- row builders
def test_two_skylines_give_two_normalised_values():
    row = norm_row("a", "x vs y", "mppc", 0.5, 0.1, Interval(0.9, 0.85, 0.95, 3), ModelSeedSkyline(0.7))
    assert row["skyline_sae_seed"] == 0.9 and row["skyline_model_seed"] == 0.7
    assert row["normalised_sae_seed"] == pytest.approx((0.5 - 0.1) / (0.9 - 0.1))
    assert row["normalised_model_seed"] == pytest.approx((0.5 - 0.1) / (0.7 - 0.1))
    assert row["note"] == "" and row["n_seeds"] == 3 and "skyline" not in row and "normalised" not in row


def test_a_value_above_a_skyline_is_noted_with_its_name():
    row = norm_row("a", "c", "mppc", 0.8, 0.2, 0.9, ModelSeedSkyline(0.6), note="extra")
    assert row["normalised_model_seed"] == pytest.approx(1.5) and row["normalised_sae_seed"] < 1
    assert f"above the {MODEL_SEED} (normalised 1.500 > 1)" in row["note"] and SAE_SEED not in row["note"]
    assert row["note"].endswith("extra")
    within = norm_row("a", "c", "mppc", 0.8, 0.2, 0.5)  # one model: the plain seed skyline columns
    assert within["normalised"] == pytest.approx(2.0) and "above the seed skyline" in within["note"]


def test_a_missing_model_seed_skyline_is_blank_and_says_why():
    why = f"{MODEL_SEED} not computed (switch it on)"
    row = norm_row("a", "c", "mppc", 0.5, 0.1, 0.9, ModelSeedSkyline(None, why))
    assert math.isnan(row["skyline_model_seed"]) and math.isnan(row["normalised_model_seed"])
    assert row["note"] == why and row["normalised_sae_seed"] == pytest.approx(0.5)
    assert mean_skyline(ModelSeedSkyline(0.6), ModelSeedSkyline(0.8)).value == pytest.approx(0.7)
    assert mean_skyline(ModelSeedSkyline(0.6), ModelSeedSkyline(None, why)) == ModelSeedSkyline(None, why)
    tight = norm_row("a", "c", "mppc", 0.5, 0.4, 0.4001, ModelSeedSkyline(0.9))
    assert math.isnan(tight["normalised_sae_seed"]) and tight["note"].startswith(f"{SAE_SEED}: skyline - floor")


def test_dead_note_counts_the_features_mppc_leaves_out():
    a = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0]])  # feature 1 never fires
    b = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 1.0]])
    ca, cb = codes_from_dense(a.T.contiguous()), codes_from_dense(b.T.contiguous())
    assert dead_note(ca, cb, "x", "y") == "dead latents left out of MPPC: 1 of 3 (x), 0 of 2 (y)"
    assert dead_note(cb, cb) == ""


# ------------------------------------------------------------------------------ whole studies
def shrink(name: str, out: Path, one_site: bool = False, **extra) -> StudyConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = study_from_dict(OmegaConf.to_container(compose(config_name="config", overrides=[f"study={name}"]).study,
                                                     resolve=True))
    small = {"steps": 16, "warmup_steps": 4, "d_model": 32, "n_heads": 2}
    sites = {"sites": ("blocks.1.hook_resid_post",)} if one_site else {}
    return dataclasses.replace(
        cfg, models=tuple(dataclasses.replace(m, overrides={**m.overrides, **small}, **sites) for m in cfg.models),
        out_dir=str(out), tokenizer_vocab=300, **sites,
        corpus=dataclasses.replace(cfg.corpus, max_docs=40, planted_docs=8),
        harvest=HarvestSpec(train_tokens=2048, context_length=32, batch_size=16, eval_spans=24, span_chars=120,
                            max_doc_tokens=128),
        sae=dataclasses.replace(cfg.sae, steps=40, batch_size=128, expansion=2, topk=TopKOptions(k=4), seeds=(0, 1)),
        match=dataclasses.replace(cfg.match, gw_max=32, n_perm=2), **extra)


def check_both_normalised(rows: pd.DataFrame) -> None:
    for kind in ("sae_seed", "model_seed"):
        expected = (rows["value"] - rows["floor"]) / (rows[f"skyline_{kind}"] - rows["floor"])
        ok = rows[f"normalised_{kind}"].notna()
        assert ok.any(), kind
        assert np.allclose(rows.loc[ok, f"normalised_{kind}"], expected[ok])
    above = rows["normalised_model_seed"] > 1
    assert rows.loc[above, "note"].str.contains(f"above the {MODEL_SEED}").all()


@pytest.mark.slow
def test_architecture_study_reports_both_skylines(tmp_path):
    out = run_study(shrink("architecture_comparison", tmp_path / "arch", one_site=True), progress=False)
    table = pd.read_csv(out.root / "tables" / "architecture_comparison__cross_architecture.csv", keep_default_na=False,
                        na_values=[""])
    mppc = table[table["metric"] == "mppc"]
    assert mppc["skyline_sae_seed"].notna().all() and mppc["skyline_model_seed"].notna().all()
    assert np.allclose(mppc["skyline_model_seed"], (mppc["model_seed_a"] + mppc["model_seed_b"]) / 2)
    check_both_normalised(mppc)
    gw = table[table["metric"] == "gw_distance"]
    assert gw["skyline_model_seed"].notna().all() and gw["value_meaning"].str.contains("lower = closer").all()
    text = out.report_md.read_text()
    assert "normalised_model_seed" in text and MODEL_SEED in text and SAE_SEED in text
    assert "pythia-modelseed1 (copy of pythia, model seed 1)" in text
    assert list((out.root / "cache").glob("model-mamba-modelseed1*"))


@pytest.mark.slow
def test_subset_study_reports_both_skylines(tmp_path):
    out = run_study(shrink("subset_generalization", tmp_path / "sub"), progress=False)
    tidy = pd.read_csv(out.results_csv, keep_default_na=False, na_values=[""])
    mppc = tidy[tidy["metric"].str.startswith("mppc")]
    assert len(mppc) == 8 and mppc["skyline_model_seed"].notna().all()  # 2 models x 2 directions + 4 effects
    check_both_normalised(mppc)
    frac = tidy[tidy["metric"].str.startswith("fraction")]
    assert frac["skyline_model_seed"].between(0, 1).all() and frac["value_meaning"].str.len().gt(0).all()
    assert "model-seed skyline" in out.report_md.read_text()
