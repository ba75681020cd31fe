"""Study configs: every YAML composes through Hydra and validates; bad values give one-line errors."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from universality.errors import ConfigError, UniversalityError
from universality.study.config import StudyConfig, register_configs, study_from_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STUDIES = sorted(p.stem for p in (CONFIGS / "study").glob("*.yaml"))


register_configs()


def _compose(name: str, overrides=()) -> StudyConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=[f"study={name}", *overrides])
    return study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_config_composes(name):
    cfg = _compose(name)
    assert cfg.name == name and cfg.out_dir == f"runs/{name}"
    assert len(cfg.sae.seeds) >= 3, "the skyline interval needs at least 3 seeds"


def test_default_is_quickstart_and_overrides_apply():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=["study.sae.steps=7", "study.corpus.max_docs=5"])
    study = study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))
    assert study.name == "quickstart" and study.sae.steps == 7 and study.corpus.max_docs == 5
    assert {"feature_evolution", "architecture_comparison", "subset_generalization"} <= set(study.analyses)


BASE = {"name": "s", "analyses": ["layer_flow"], "models": [{"name": "m", "zoo": "tiny_gpt2"}],
        "sites": ["blocks.0.hook_resid_post"]}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"analyses": ["nope"]}, "unknown or missing analyses"),
        ({"sites": ["blocks.0.resid"]}, "malformed site name|unknown hook"),
        ({"models": [{"name": "m"}]}, "exactly one of zoo"),
        ({"models": [{"name": "m", "zoo": "tiny_gpt2", "data": "E"}]}, "data must be D or D_prime"),
        ({"sae": {"seeds": [0]}}, "at least 2 distinct"),
        ({"sae": {"expansions": [4, 2]}}, "ascending"),
        ({"sae": {"expansions": [2, 0]}}, "integers >= 1"),
        ({"analyses": ["feature_splitting"]}, "at least two widths"),
        ({"sae": {"lr": -1}}, "sae.lr"),
        ({"sae": {"widht": 3}}, "unknown key"),
        ({"harvest": {"train_tokens": 0}}, "train_tokens"),
        ({"subset": {"kind": "regex"}}, "pattern is empty"),
        ({"device": "tpu"}, "study.device"),
        ({"models": "m"}, "must be a list"),
        ({"colour": 1}, "unknown key"),
    ],
)
def test_bad_values_are_one_line_errors(patch, message):
    with pytest.raises(UniversalityError, match=message) as info:
        study_from_dict({**BASE, **patch})
    assert "\n" not in str(info.value) and ";" in str(info.value)


def test_duplicate_model_names_rejected():
    with pytest.raises(ConfigError, match="repeat"):
        study_from_dict({**BASE, "models": [{"name": "m", "zoo": "tiny_gpt2"}, {"name": "m", "zoo": "tiny_mamba"}]})


def test_the_card_switch_does_not_change_the_config_hash():
    """``study.cards`` adds a page and changes no number: folders made before it existed (or with it off)
    are still this study's folders."""
    import dataclasses

    from universality.study.record import config_hash

    cfg = _compose("quickstart")
    assert cfg.cards is True
    assert config_hash(_compose("quickstart", ["study.cards=false"])) == config_hash(cfg)
    assert config_hash(dataclasses.replace(cfg, seed=cfg.seed + 1)) != config_hash(cfg)
    with pytest.raises(ConfigError, match="cards"):
        dataclasses.replace(cfg, cards="yes")


def test_empty_expansions_keep_the_config_hash_and_no_width_changes_the_sae_stage_key():
    """``sae.expansions`` came later: a study without extra widths hashes as before (no such key), and the
    widths never enter the cache key of the study's own dictionaries."""
    import dataclasses

    from universality.io import stable_hash
    from universality.study.record import OUTPUT_ONLY, config_hash

    cfg = _compose("quickstart")
    old = cfg.to_dict()
    for key in OUTPUT_ONLY:
        old.pop(key)
    del old["sae"]["expansions"]
    assert config_hash(cfg) == stable_hash(old)
    wide = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, expansions=(2, 4)))
    assert config_hash(wide) != config_hash(cfg)
    assert wide.sae.selected() == cfg.sae.selected() and "expansions" not in cfg.sae.selected()
    assert wide.sae.at_expansion(2).selected()["expansion"] == 2
    split = _compose("feature_splitting")
    assert split.sae.expansions == (2, 4, 8, 16) and "feature_splitting" in split.analyses
