"""Heavier zoo tests: a real kill -9 in the middle of training, and a quickstart preset on the full corpus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from universality.zoo import load_preset, read_manifest, train_lm

pytestmark = pytest.mark.slow

_CHILD = """
import sys, torch
torch.set_num_threads(1)
from universality.data import shakespeare
from universality.zoo import from_dict, train_lm
from universality.zoo.tokenizer import load_tokenizer
import json
cfg = from_dict(json.loads(sys.argv[1]))
train_lm(cfg, list(shakespeare(limit=12)), sys.argv[2], tokenizer=load_tokenizer(sys.argv[3]), progress=False)
"""


def test_kill_9_mid_training_then_resume_matches_uninterrupted(corpus, tokenizer, tiny_cfg, tmp_path):
    import json

    cfg = tiny_cfg("gpt2", steps=400, checkpoint_every=40)
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(str(tok_dir))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg.to_dict()), str(out), str(tok_dir)], env=env)
    try:
        deadline = time.monotonic() + 240
        while not (out / "step80").is_dir():
            assert child.poll() is None, "the training process ended before it could be killed"
            assert time.monotonic() < deadline, "no step80 checkpoint within 240 s"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert not (out / "zoo.json").exists() and (out / "resume").is_dir()
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    train_lm(cfg, corpus, out, tokenizer=tokenizer, progress=False)  # resume in this process
    reference = train_lm(cfg, corpus, tmp_path / "reference", tokenizer=tokenizer, progress=False)
    for step in cfg.checkpoints:
        a, b = load_file(str(out / f"step{step}" / "model.safetensors")), load_file(str(reference / f"step{step}" / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"step{step} differs"
    assert read_manifest(out)["train_loss"] == read_manifest(reference)["train_loss"]
    assert all(name.startswith(".") for name in leftovers)  # only hidden temporaries can be left by a kill


def test_quickstart_gpt2_preset_on_the_full_corpus(tmp_path):
    from universality.data import shakespeare
    from universality.zoo import train_tokenizer

    docs = list(shakespeare())
    tok = train_tokenizer([d.text for d in docs], 1024, tmp_path / "tok")
    cfg = load_preset("tiny_gpt2")
    out = train_lm(cfg, docs, tmp_path / "gpt2", tokenizer=tok, progress=False)
    manifest = read_manifest(out)
    assert manifest["checkpoints"] == ["step0", "step1", "step2", "step4", "step8", "step16", "step32", "step50", "step100", "step150", "step200"]
    assert manifest["dataset"] == "shakespeare" and manifest["vocab_size"] == 1024
    assert manifest["eval_loss"]["step0"] == pytest.approx(6.93, abs=0.3)  # ln(1024)
    assert manifest["eval_loss"]["step200"] < 5.3
