"""SIGKILL a harvest and a training run at random points, resume, and get the uninterrupted result.

Each trial starts a child process (``reliability_child.py``) that kills itself with SIGKILL at a
random event: before or after a file rename, before an fsync, in the middle of writing a
safetensors file (a half-written temporary file is left behind), before or after a folder swap,
or before a forward pass / training batch. After the kill every *visible* file (no temporary
name) must load and pass its checksum; the run is then resumed in this process and its artifacts
must be bitwise equal to those of an uninterrupted reference run (CPU, one thread).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reliability_child as rc
from universality.io import load_tensors, read_json, sha256_file

CHILD = Path(rc.__file__).resolve()
REPO = CHILD.parents[2]
TRIALS = 10

pytestmark = pytest.mark.slow


def _kill_child(task: str, spec: dict, tmp: Path) -> None:
    spec_path = tmp / f"{task}-spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, str(CHILD), task, str(spec_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (
        f"{task} child was not killed at event {spec['kill_at']} (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def _kill_points(total: int, seed: int) -> list[int]:
    """TRIALS distinct events in 1..total, spread over the run (one per stratum)."""
    rng = random.Random(seed)
    edges = [1 + (total * i) // TRIALS for i in range(TRIALS + 1)]
    return [rng.randrange(lo, max(lo + 1, hi)) for lo, hi in zip(edges, edges[1:])]


def _store_fingerprint(path: Path) -> dict:
    manifest = read_json(path / "manifest.json")
    manifest.pop("created")
    files = {p.relative_to(path).as_posix(): sha256_file(p) for p in rc.visible_files(path)}
    files.pop("manifest.json")
    return {"manifest": manifest, "files": files}


def test_harvest_survives_sigkill_anywhere(tiny_model_path, tiny_adapter, docs_file, tmp_path):
    ref_spec = {"model": str(tiny_model_path), "docs": str(docs_file), "out": str(tmp_path / "ref")}
    with rc.kill_switch(None) as ks:
        rc.run_harvest(ref_spec, adapter=tiny_adapter)
    total = ks.count
    reference = _store_fingerprint(tmp_path / "ref")
    assert len(reference["manifest"]["shards"]) >= 8 and total > 50

    survived = []
    for trial, kill_at in enumerate(_kill_points(total, seed=20261121)):
        out = tmp_path / f"trial{trial}"
        _kill_child("harvest", {**ref_spec, "out": str(out), "kill_at": kill_at}, tmp_path)
        shards_visible = rc.check_visible_store(out)  # every visible file is whole and verifies
        store = rc.run_harvest({**ref_spec, "out": str(out)}, adapter=tiny_adapter)  # resume
        assert store.verify_all() == len(reference["manifest"]["shards"])
        got = _store_fingerprint(out)
        assert got == reference, f"trial {trial} (killed at event {kill_at}/{total}) differs after resume"
        assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left after resume"
        survived.append((kill_at, shards_visible))
    print(f"harvest kill trials (event/{total}, shards listed in the manifest): {survived}")
    assert len(survived) == TRIALS
    assert len({s for _, s in survived}) >= 3, f"kills did not land at varied points: {survived}"


def _training_fingerprint(ckpt: Path, out: Path) -> dict:
    state, doc = (load_tensors(ckpt / "checkpoint" / "state.safetensors"), read_json(ckpt / "checkpoint" / "state.json"))
    dictionaries = {}
    for cfg_path in (p for p in rc.visible_files(out) if p.name == "cfg.json"):
        cfg = read_json(cfg_path)
        assert not {"checkpoint_dir", "out_dir"} & set(cfg["train"]["run"])  # places are not recorded
        cfg.pop("metrics")  # compared separately (see the trials loop)
        weights = load_tensors(cfg_path.parent / "weights.safetensors")
        dictionaries[cfg_path.parent.relative_to(out).as_posix()] = (cfg, weights)
    return {"state": state, "state_doc": doc, "dictionaries": dictionaries}


def _assert_same_training(a: dict, b: dict, where: str) -> None:
    assert a["state_doc"] == b["state_doc"], where  # includes state_sha256: the checkpoint bytes are equal
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), (where, k)
    assert a["dictionaries"].keys() == b["dictionaries"].keys(), where
    for name, (cfg, w) in a["dictionaries"].items():
        cfg_b, w_b = b["dictionaries"][name]
        assert cfg == cfg_b, (where, name)  # includes weights_sha256: the weight files are bitwise equal
        for k in w:
            assert torch.equal(w[k], w_b[k]), (where, name, k)


def test_training_survives_sigkill_anywhere(tiny_model_path, tiny_adapter, docs_file, tmp_path):
    store = rc.run_harvest({"model": str(tiny_model_path), "docs": str(docs_file), "out": str(tmp_path / "store")},
                           adapter=tiny_adapter)
    ref_spec = {"store": str(store.path), "ckpt": str(tmp_path / "ref" / "ck"), "out": str(tmp_path / "ref" / "out")}
    with rc.kill_switch(None) as ks:
        rc.run_train(ref_spec)
    total = ks.count
    reference = _training_fingerprint(Path(ref_spec["ckpt"]), Path(ref_spec["out"]))
    ref_metrics = {p.parent.name: read_json(p)["metrics"] for p in rc.visible_files(ref_spec["out"]) if p.name == "cfg.json"}
    assert len(reference["dictionaries"]) == 2 and total > 50

    seen = []
    for trial, kill_at in enumerate(_kill_points(total, seed=1121)):
        spec = {**ref_spec, "ckpt": str(tmp_path / f"t{trial}" / "ck"), "out": str(tmp_path / f"t{trial}" / "out")}
        _kill_child("train", {**spec, "kill_at": kill_at}, tmp_path)
        visible = rc.check_visible_training(spec["ckpt"], spec["out"])
        ck_step = read_json(Path(spec["ckpt"]) / "checkpoint" / "state.json")["step"] if visible["checkpoint"] else 0
        rc.run_train(spec)  # resume from the last checkpoint (or from scratch)
        where = f"trial {trial} (killed at event {kill_at}/{total}, checkpoint step {ck_step})"
        _assert_same_training(reference, _training_fingerprint(Path(spec["ckpt"]), Path(spec["out"])), where)
        got = {p.parent.name: read_json(p)["metrics"] for p in rc.visible_files(spec["out"]) if p.name == "cfg.json"}
        # the checkpoint carries the last losses and evaluation metrics, so even a run resumed from
        # the *final* checkpoint (no step left to train) reports the same metrics
        assert got == ref_metrics, where
        seen.append((kill_at, ck_step, visible["dictionaries"]))
    print(f"training kill trials (event/{total}, checkpoint step, dictionaries visible): {seen}")
    assert len(seen) == TRIALS
    assert len({s for _, s, _ in seen}) >= 3, f"kills did not land at varied checkpoints: {seen}"
