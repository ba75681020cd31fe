"""The GPU acceptance run's plan (benchmarks/gpu_acceptance.sh --dry-run): runs here, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.sh"
STEPS = {"preflight", "tests-gpu", "bench-capture", "bench-activations", "bench-train", "bench-match", "mamba"}


def _run(*args, **env):
    full_env = dict(os.environ, PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)


def test_dry_run_prints_and_writes_a_plan_that_fits_ten_minutes(tmp_path):
    proc = _run("--dry-run", "--out-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads((tmp_path / "gpu-acceptance-plan.json").read_text())
    names = [s["name"] for s in plan["steps"]]
    assert set(names) == STEPS and len(names) == len(STEPS)
    assert plan["budget_s"] == 600 and plan["fits_budget"]
    assert sum(s["timeout_s"] for s in plan["steps"]) + plan["reserve_s"] <= 600
    assert all(0 < s["timeout_s"] <= 300 for s in plan["steps"])
    for name in names:  # every step is printed with its timeout and its command
        assert name in proc.stdout
    by_name = {s["name"]: s for s in plan["steps"]}
    assert by_name["tests-gpu"]["command"][1:4] == ["-m", "pytest", "tests/gpu"]
    benches = {by_name[f"bench-{b}"]["command"][by_name[f"bench-{b}"]["command"].index("--only") + 1] for b in ("capture", "activations", "train", "match")}
    assert benches == {"capture", "activations", "train", "match"}
    assert all("gpu-real" in by_name[f"bench-{b}"]["command"] for b in ("capture", "activations", "train", "match"))
    assert "--step" in by_name["mamba"]["command"] and "mamba" in by_name["mamba"]["command"]


def test_the_plan_covers_the_whole_gpu_real_profile():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_acceptance
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    plan = gpu_acceptance.plan(out_dir=Path("/nonexistent"))
    covered = {s["benchmark"] for s in plan["steps"] if "benchmark" in s}
    assert covered == set(run_all.PROFILES[gpu_acceptance.PROFILE]) == set(run_all.BENCHES)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_in_one_line_without_cuda(tmp_path):
    proc = _run("--out-dir", str(tmp_path), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "CUDA" in lines[0] and "--dry-run" in lines[0]
    assert not list(tmp_path.glob("gpu-acceptance-*.json"))


def test_mamba_step_is_skipped_with_a_reason_when_the_kernels_are_missing(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_acceptance
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import importlib.util

    reason = gpu_acceptance.mamba_skip_reason()
    if importlib.util.find_spec("mamba_ssm") is None:
        assert reason and "mamba-ssm" in reason
    import torch

    if not torch.cuda.is_available():
        assert gpu_acceptance.step_mamba(tmp_path / "mamba.json") == 0
        doc = json.loads((tmp_path / "mamba.json").read_text())
        assert doc["status"] == "skipped" and doc["reason"]


def _module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_acceptance
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_acceptance


def test_a_hanging_step_is_killed_at_its_timeout_with_its_children():
    ga = _module()
    step = {"name": "hang", "command": ["bash", "-c", "sleep 60 & sleep 60; echo never"]}
    row = ga.run_step(step, timeout=1.0, env=dict(os.environ))
    assert row["status"] == "timeout" and row["wall_s"] < 15 and "never" not in row["output_tail"]


def test_report_from_benchmark_documents(tmp_path):
    """Key figures and the Markdown report from a run_all document (the CPU profile's, as shipped)."""
    ga = _module()
    shipped = ROOT / "benchmarks" / "results" / "cpu-vm-cpu-small.json"
    if not shipped.is_file():
        pytest.skip("no shipped run_all report")
    plan = ga.plan(out_dir=tmp_path)
    steps = []
    for s in plan["steps"]:
        s = dict(s, result=str(shipped)) if "benchmark" in s else s
        figs = ga.key_figures(s)
        if "benchmark" in s:
            assert figs.get("peak_rss_mib") and "goals" in figs
        steps.append({"name": s["name"], "status": "passed", "wall_s": 1.0, "timeout_s": s["timeout_s"], "figures": figs})
    steps[-1] |= {"status": "skipped", "reason": "mamba-ssm not installed"}
    doc = {"gpu": "test", "date_utc": "now", "git_commit": "x", "torch": "t", "cuda": None, "overall": "passed", "wall_s": 7.0,
           "plan": plan, "steps": steps}
    md = ga.markdown(doc)
    assert all(f"| {s['name']} |" in md for s in steps) and "mamba-ssm not installed" in md


@pytest.mark.slow
def test_the_mamba_step_runs_end_to_end_at_a_tiny_size_on_the_cpu():
    """What the GPU step runs (models.load, capture, the reference switch, harvest), tiny and on the CPU,
    so that the acceptance run cannot fail on a typo."""
    figs = _module().mamba_figures("cpu", d_model=32, n_layers=2, seq=32, batch=2, n_batches=2, harvest_tokens=300, dtype="float32")
    assert figs["forward_tokens_per_s"] > 0 and figs["capture_tokens_per_s"] > 0 and figs["harvest_rows"] > 0
    assert figs["kernels_match_reference"] in (True, None)
    assert all(v < 1e-4 for v in figs["max_rel_diff_vs_reference"].values())  # fp32, the same path twice without kernels
