"""Sweeps on Hydra's launchers: a local joblib multirun of a tiny study (two jobs, two folders), and
the SLURM grid preset (configs/sweep/pythia_grid.yaml) composed, expanded and handed to the real
submitit launcher up to the point of submission (no cluster here)."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from universality.io import read_json
from universality.study.config import register_configs, study_from_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip extra `sweeps` (hydra-joblib-launcher) not installed")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip extra `sweeps` (hydra-submitit-launcher) not installed")

register_configs()

REVISIONS = ["step1000", "step2000", "step4000", "step8000", "step16000", "step32000", "step64000", "step128000", "step143000"]

TINY = [
    "study.tokenizer_vocab=300",
    "study.analyses=[feature_evolution]",
    "study.models=[{name: pythia, zoo: tiny_pythia, data: D, checkpoints: all, overrides: {steps: 16, warmup_steps: 4,"
    " d_model: 32, n_heads: 2, checkpoint_steps: [0, 16]}}]",
    "study.corpus.max_docs=40",
    "study.corpus.planted=false",
    "study.harvest.train_tokens=1024",
    "study.harvest.eval_spans=16",
    "study.harvest.span_chars=100",
    "study.sae.steps=20",
    "study.sae.batch_size=64",
    "study.sae.expansion=2",
    "study.match.gw_max=16",
    "study.sites=[blocks.1.hook_resid_post]",
]


@pytest.mark.slow
def test_joblib_multirun_writes_each_job_to_its_own_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "universality", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"hydra.sweep.dir={tmp_path / 'multirun'}", *TINY,
           "study.sae.topk.k=2,4", f"study.out_dir={tmp_path / 'runs'}/k${{study.sae.topk.k}}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("study quickstart done") == 2
    for k in (2, 4):
        out = tmp_path / "runs" / f"k{k}"
        tidy = pd.read_csv(out / "results.csv")
        assert set(tidy["analysis"]) == {"feature_evolution"} and len(tidy) > 0
        assert (out / "report.md").read_text().count("## Feature evolution") == 1
        assert read_json(out / "study.json")["study"] == "quickstart"
    # Hydra's own bookkeeping: one job folder per sweep point, each with its overrides
    jobs = sorted(p for p in (tmp_path / "multirun").iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    overrides = [OmegaConf.load(p / ".hydra" / "overrides.yaml") for p in jobs]
    assert sorted(o for ov in overrides for o in ov if o.startswith("study.sae.topk.k=")) == ["study.sae.topk.k=2", "study.sae.topk.k=4"]
    assert not (tmp_path / "runs" / "quickstart").exists()  # nothing went to the study's default folder


def _grid_jobs(cfg) -> list[list[str]]:
    """The job list Hydra's basic sweeper builds from ``hydra.sweeper.params``."""
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    assert len(batches) == 1
    return batches[0]


@pytest.mark.slow
def test_pythia_grid_composes_to_checkpoints_times_layers_jobs(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=["+sweep=pythia_grid", f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
        jobs = _grid_jobs(cfg)
        assert len(jobs) == len(REVISIONS) * 6
        studies = []
        for job in jobs:
            job_cfg = compose(config_name="config", overrides=["+sweep=pythia_grid", *job])
            studies.append(study_from_dict(OmegaConf.to_container(job_cfg.study, resolve=True)))
    cells = {(s.models[0].checkpoints[0], s.sites[0]) for s in studies}
    assert cells == {(r, f"blocks.{l}.hook_resid_post") for r, l in itertools.product(REVISIONS, range(6))}
    for s in studies:
        assert s.models[0].path == "EleutherAI/pythia-70m" and s.models[0].checkpoints[-1] == "step143000"
        assert s.analyses == ("feature_evolution",) and s.device == "cuda"
        assert len(s.models[0].checkpoints) == (1 if s.models[0].checkpoints[0] == "step143000" else 2)
    out_dirs = {s.out_dir for s in studies}
    assert len(out_dirs) == len(studies)  # every job writes to its own folder
    assert "runs/pythia_grid/step1000/layer0" in out_dirs


def test_pythia_grid_uses_the_submitit_slurm_launcher(tmp_path, monkeypatch):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=["+sweep=pythia_grid", f"hydra.sweep.dir={tmp_path / 'sweep'}"], return_hydra_config=True)
        local = compose(config_name="config", overrides=["+sweep=pythia_grid_local"], return_hydra_config=True)
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher_cfg.partition, launcher_cfg.gpus_per_node, launcher_cfg.tasks_per_node, launcher_cfg.nodes) == ("gpu", 1, 1, 1)
    assert launcher_cfg.timeout_min == 240 and launcher_cfg.max_num_timeout == 2 and launcher_cfg.array_parallelism == 64
    assert local.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert local.hydra.launcher.n_jobs == 2 and local.hydra.sweeper.params == cfg.hydra.sweeper.params

    # Run the real launcher up to sbatch: submitit needs `srun` on PATH, and map_array is where it
    # would submit the job array; capture the executor there and render its sbatch script.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    import submitit

    captured = {}

    class _Done:
        def results(self):
            return [None]

    def fake_map_array(self, fn, *iterables):
        captured["executor"], captured["args"] = self, list(zip(*iterables))
        return [_Done() for _ in captured["args"]]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    launcher = instantiate(launcher_cfg)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    jobs = _grid_jobs(cfg)
    assert len(launcher.launch(jobs, initial_job_idx=0)) == 54
    assert [a[0] for a in captured["args"]] == [list(j) for j in jobs]
    script = captured["executor"]._executor._make_submission_file_text("python -m universality", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=240", "--cpus-per-task=8", "--mem=64GB", "--nodes=1", "--signal=USR2@120"):
        assert f"#SBATCH {line}" in script, line
    assert str(tmp_path / "sweep" / ".submitit") in script
