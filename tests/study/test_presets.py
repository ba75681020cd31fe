"""Public-model presets compose and run on random-weight models of the same shapes (offline).

Each preset's hub models are replaced by local random-weight folders with the published
architecture's shape (Pythia-70m and -160m, Mamba-130m, GPT-2 small); OLMoE-1B-7B keeps its
routing (64 experts, top-8) and depth but not its width, which would not fit a CPU test. Token
counts and SAE steps are cut to a few hundred; everything else is the preset as shipped.
"""

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from models.testing import make_checkpoint_series, make_tiny_model
from universality.sae.config import TopKOptions
from universality.study.config import HarvestSpec, register_configs, study_from_dict
from universality.study.runner import run_study

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
register_configs()

PYTHIA_70M = dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048)
SHAPES = {
    "EleutherAI/pythia-160m": ("gpt_neox", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                intermediate_size=3072)),
    "state-spaces/mamba-130m-hf": ("mamba", dict(hidden_size=768, num_hidden_layers=24, state_size=16, expand=2)),
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=256)),
    "allenai/OLMoE-1B-7B-0924": ("olmoe", dict(hidden_size=128, num_hidden_layers=9, num_attention_heads=4,
                                               num_key_value_heads=4, intermediate_size=32, num_experts=64,
                                               num_experts_per_tok=8)),
}


def _preset(name: str, out: Path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=[f"study={name}"])
    return study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))


def _localise(cfg, root: Path):
    models = []
    for spec in cfg.models:
        folder = root / spec.name
        if spec.path == "EleutherAI/pythia-70m":
            make_checkpoint_series("gpt_neox", folder, [0, 143000], **PYTHIA_70M)
            spec = dataclasses.replace(spec, path=str(folder), checkpoints=("step0", "step143000"))
        else:
            family, shape = SHAPES[spec.path]
            make_tiny_model(family, folder, **shape)
            spec = dataclasses.replace(spec, path=str(folder))
        models.append(spec)
    return dataclasses.replace(
        cfg, models=tuple(models), out_dir=str(root / "study"), device="cpu",
        corpus=dataclasses.replace(cfg.corpus, source="shakespeare", max_docs=30),
        harvest=HarvestSpec(train_tokens=768, context_length=32, batch_size=8, eval_spans=12, span_chars=80,
                            max_doc_tokens=64),
        sae=dataclasses.replace(cfg.sae, expansion=1, topk=TopKOptions(k=8), steps=15, batch_size=128),
        match=dataclasses.replace(cfg.match, gw_max=32, n_perm=2),
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pythia_evolution", "mamba_vs_pythia", "gpt2_layers", "olmoe_experts"])
def test_public_preset_runs_on_random_weights(name, tmp_path):
    preset = _preset(name, tmp_path)
    assert preset.device == "cuda" and all(m.path for m in preset.models)
    outcome = run_study(_localise(preset, tmp_path), progress=False)
    tidy = pd.read_csv(outcome.results_csv)
    assert set(tidy["analysis"]) == set(preset.analyses)
    assert "## Findings" in outcome.report_md.read_text()
