"""Config validation, presets, the LR schedule and the checkpoint schedule (known answers)."""

from __future__ import annotations

import math

import pytest

from models.pythia import PYTHIA_REVISIONS
from universality.errors import ConfigError
from universality.zoo import InjectSpec, ZooModelConfig, checkpoint_schedule, from_dict, load_preset, lr_at, preset_names


def test_presets_cover_every_family_and_are_quickstart_sized():
    names = preset_names()
    assert {"tiny_gpt2", "tiny_pythia", "tiny_mamba", "tiny_moe"} <= set(names)
    families = {load_preset(n).family for n in ("tiny_gpt2", "tiny_pythia", "tiny_mamba", "tiny_moe")}
    assert families == {"gpt2", "gpt_neox", "mamba", "olmoe"}
    cfg = load_preset("tiny_moe")
    assert (cfg.d_model, cfg.n_layers, cfg.context_length, cfg.steps, cfg.n_experts, cfg.k) == (64, 2, 64, 200, 4, 2)
    assert load_preset("tiny_gpt2", seed=3).seed == 3


def test_from_dict_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown ZooModelConfig fields"):
        from_dict({"family": "gpt2", "d_modle": 64})
    with pytest.raises(ConfigError, match="family"):
        from_dict({"family": "rwkv"})
    with pytest.raises(ConfigError, match="needs a 'family'"):
        from_dict({"d_model": 64})
    with pytest.raises(ConfigError, match="divisible"):
        from_dict({"family": "gpt2", "d_model": 30, "n_heads": 4})
    with pytest.raises(ConfigError, match="n_experts"):
        from_dict({"family": "olmoe", "n_experts": 4, "k": 5})
    with pytest.raises(ConfigError, match="MoE families only"):
        from_dict({"family": "gpt2", "n_experts": 4, "k": 2})
    with pytest.raises(ConfigError, match="lr"):
        from_dict({"family": "gpt2", "lr": -1.0})
    with pytest.raises(ConfigError, match="steps"):
        from_dict({"family": "gpt2", "steps": 0})
    with pytest.raises(ConfigError, match="checkpoint_steps"):
        from_dict({"family": "gpt2", "steps": 10, "warmup_steps": 0, "checkpoint_steps": [0, 5]})  # must end at steps
    with pytest.raises(ConfigError, match="vocab_size"):
        from_dict({"family": "gpt2", "vocab_size": 100})
    with pytest.raises(ConfigError, match="lr"):
        from_dict({"family": "gpt2", "lr": "fast"})


def test_from_dict_coerces_yaml_types_and_round_trips():
    cfg = from_dict({"family": "gpt2", "lr": "3e-3", "weight_decay": 0, "steps": 10, "warmup_steps": 2, "checkpoint_steps": [0, 3, 10]})
    assert cfg.lr == 3e-3 and isinstance(cfg.weight_decay, float) and cfg.checkpoint_steps == (0, 3, 10)
    assert from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(seed=1).seed == 1 and cfg.seed == 0
    with pytest.raises(Exception):
        cfg.seed = 2  # frozen


def test_hydra_structured_config_registers():
    from hydra.core.config_store import ConfigStore

    from universality.zoo import register_configs

    register_configs()
    assert "zoo_model_schema.yaml" in ConfigStore.instance().list("zoo")


def test_checkpoint_schedule_reproduces_pythia():
    """Pythia's 154 revisions are step0, 1, 2, 4, ..., 512 and every 1000 up to 143000."""
    steps = checkpoint_schedule(143000, 1000)
    assert tuple(f"step{s}" for s in steps) == PYTHIA_REVISIONS


def test_checkpoint_schedule_small_and_default():
    assert checkpoint_schedule(200, 50) == (0, 1, 2, 4, 8, 16, 32, 50, 100, 150, 200)
    assert checkpoint_schedule(10, 4) == (0, 1, 2, 4, 8, 10)  # final step always included
    assert checkpoint_schedule(1, 1) == (0, 1)
    assert ZooModelConfig(family="gpt2", steps=200).checkpoints == (0, 1, 2, 4, 8, 16, 32, 50, 100, 150, 200)
    assert ZooModelConfig(family="gpt2", steps=10, warmup_steps=1, checkpoint_steps=(0, 10)).checkpoints == (0, 10)


def test_lr_schedule_known_values():
    kw = dict(lr=1.0, steps=11, warmup_steps=2, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.5)  # linear warm-up: (t+1)/W
    assert lr_at(1, **kw) == pytest.approx(1.0)
    assert lr_at(2, **kw) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(10, **kw) == pytest.approx(0.1)  # ... and ends at min_lr_ratio * lr
    mid = 2 + (10 - 2) // 2
    assert lr_at(mid, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    values = [lr_at(t, **kw) for t in range(2, 11)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ConfigError):
        lr_at(11, **kw)


def test_inject_spec_validation():
    spec = InjectSpec.coerce({"after_step": 4, "texts": ["abc"], "fraction": 0.5})
    assert spec == InjectSpec(after_step=4, texts=("abc",), fraction=0.5)
    assert spec.rows(8) == 4 and InjectSpec(0, ("a",), 0.01).rows(8) == 1
    with pytest.raises(ConfigError):
        InjectSpec.coerce({"after": 4, "texts": ["abc"]})
    with pytest.raises(ConfigError):
        InjectSpec(after_step=1, texts=())
    with pytest.raises(ConfigError):
        InjectSpec(after_step=1, texts=("a",), fraction=0.0)


def test_presets_compose_with_hydra_and_accept_overrides():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    import universality.zoo.config as zoo_config

    folder = Path(zoo_config.__file__).resolve().parents[2] / "configs" / "zoo"
    with initialize_config_dir(config_dir=str(folder), version_base=None):
        cfg = compose(config_name="tiny_pythia", overrides=["seed=7", "steps=50"])
    zoo = from_dict(cfg)
    assert (zoo.family, zoo.seed, zoo.steps, zoo.lr) == ("gpt_neox", 7, 50, 3e-3)
    assert zoo.checkpoints == checkpoint_schedule(50, 12)
