"""Training every family, the checkpoint series layout, resume, shared tokenizer, D vs D' and injection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import models
from universality.errors import ArtifactError, ConfigError, DataError
from universality.zoo import planted_corpus, read_manifest, text_loss, tokenizer_hash, train_lm
from universality.zoo.families import build_model

STEPS = (0, 1, 2, 4, 8, 16, 24)
FAMILIES = ["gpt2", "gpt_neox", "mamba", "olmoe"]


@pytest.fixture(scope="module")
def runs(corpus, tokenizer, tiny_cfg, tmp_path_factory):
    """One uninterrupted tiny run per family, shared by the tests below (trained lazily)."""
    root = tmp_path_factory.mktemp("zoo_runs")
    done: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in done:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                done[family] = train_lm(tiny_cfg(family), corpus, root / family, tokenizer=tokenizer, progress=False)
            finally:
                torch.set_num_threads(before)
        return done[family]

    return get


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _bitwise_equal(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_and_loss_decreases(runs, family):
    out = runs(family)
    manifest = read_manifest(out)
    evals = manifest["eval_loss"]
    assert manifest["family"] == family and manifest["steps"] == list(STEPS)
    assert manifest["checkpoints"] == [f"step{s}" for s in STEPS]
    # uniform prediction over 384 tokens costs ln(384) = 5.95 nats; 24 updates must learn a lot more than that
    assert evals["step0"] == pytest.approx(5.95, abs=0.4)
    assert evals["step24"] < evals["step0"] - 0.6
    assert evals["step24"] < evals["step4"]
    assert len(manifest["train_loss"]) == 24 and manifest["final_train_loss"] < manifest["train_loss"][0] - 0.6
    for key in ("dataset", "subset_hash", "tokenizer_hash", "git_commit", "config", "n_params", "seconds"):
        assert key in manifest
    assert not (out / "resume").exists()  # removed once the run is complete


@pytest.mark.parametrize("family", FAMILIES)
def test_series_loads_through_models_load(runs, family):
    out = runs(family)
    for s in STEPS:
        step = out / f"step{s}"
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in step.iterdir()}
    adapter = models.load(str(out))
    assert adapter.family == family
    assert adapter.checkpoints == tuple(f"step{s}" for s in STEPS)  # numeric, not lexical, order
    assert adapter.revision == "step24" and adapter.d_model == 32 and adapter.n_layers == 2
    early = adapter.at_revision("step4")
    assert early.revision == "step4"
    ids = torch.tensor([adapter.tokenizer("To be, or not to be")["input_ids"]])
    assert not torch.equal(adapter.forward(ids), early.forward(ids))


@pytest.mark.parametrize("family", ["gpt2", "mamba", "olmoe"])
def test_resume_after_interruption_is_bitwise_identical(runs, corpus, tokenizer, tiny_cfg, tmp_path, family):
    reference = runs(family)
    out = tmp_path / family
    cfg = tiny_cfg(family)
    train_lm(cfg, corpus, out, tokenizer=tokenizer, stop_at=8, progress=False)
    assert (out / "resume").is_dir() and not (out / "zoo.json").exists()
    assert not (out / "step16").exists()
    train_lm(cfg, corpus, out, tokenizer=tokenizer, progress=False)  # resumes at step 8
    for s in STEPS:
        assert _bitwise_equal(out / f"step{s}", reference / f"step{s}"), f"step{s} differs after resume"
    ref, got = read_manifest(reference), read_manifest(out)
    assert got["train_loss"] == ref["train_loss"] and got["eval_loss"] == ref["eval_loss"]


def test_seed_changes_the_initialisation(tiny_cfg):
    a, b = build_model(tiny_cfg("gpt2"), 384, 0), build_model(tiny_cfg("gpt2", seed=1), 384, 0)
    c = build_model(tiny_cfg("gpt2"), 384, 0)
    wa, wb, wc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    assert not torch.equal(wa["transformer.h.0.attn.c_attn.weight"], wb["transformer.h.0.attn.c_attn.weight"])


def test_tokenizer_is_shared_and_identical_across_models(runs, tokenizer):
    expected = tokenizer_hash(tokenizer)
    blobs = set()
    for family in FAMILIES:
        out = runs(family)
        assert read_manifest(out)["tokenizer_hash"] == expected
        blobs.update((out / f"step{s}" / "tokenizer.json").read_bytes() for s in STEPS)
        blobs.add((out / "tokenizer" / "tokenizer.json").read_bytes())
    assert len(blobs) == 1


def test_finished_run_is_reused_and_a_different_run_is_refused(runs, corpus, tokenizer, tiny_cfg):
    out = runs("gpt2")
    stamp = (out / "zoo.json").stat().st_mtime_ns
    assert train_lm(tiny_cfg("gpt2"), corpus, out, tokenizer=tokenizer, progress=False) == out
    assert (out / "zoo.json").stat().st_mtime_ns == stamp
    with pytest.raises(ArtifactError, match="another config"):
        train_lm(tiny_cfg("gpt2", seed=5), corpus, out, tokenizer=tokenizer, progress=False)
    with pytest.raises(ConfigError, match="stop_at"):
        train_lm(tiny_cfg("gpt2"), corpus, out.parent / "other", tokenizer=tokenizer, stop_at=3)
    with pytest.raises(DataError):
        train_lm(tiny_cfg("gpt2"), ["too short"], out.parent / "short", tokenizer=tokenizer)


def test_model_trained_on_d_learns_a_pattern_the_one_on_d_prime_never_saw(corpus, tokenizer, tiny_cfg, tmp_path):
    pc = planted_corpus([d.text for d in corpus[:4]], n_planted=32, repeats=4, seed=0)
    cfg = tiny_cfg("gpt2", steps=64, checkpoint_steps=(0, 64), warmup_steps=4)
    out_d = train_lm(cfg, pc.full, tmp_path / "D", tokenizer=tokenizer, progress=False)
    out_dp = train_lm(cfg, pc.subset, tmp_path / "Dprime", tokenizer=tokenizer, progress=False)
    m_d, m_dp = read_manifest(out_d), read_manifest(out_dp)
    assert m_d["subset_hash"] == pc.full.hash and m_dp["subset_hash"] == pc.subset.hash
    assert m_d["dataset"] == m_dp["dataset"] == "planted"
    assert m_dp["n_tokens"] < m_d["n_tokens"]
    assert m_d["tokenizer_hash"] == m_dp["tokenizer_hash"]
    probe_d = text_loss(out_d / "step64", list(pc.probe))
    probe_dp = text_loss(out_dp / "step64", list(pc.probe))
    assert probe_d < probe_dp - 0.75, (probe_d, probe_dp)


def test_injected_pattern_appears_only_after_the_step(runs, corpus, tokenizer, tiny_cfg, tmp_path):
    reference = runs("gpt2")
    pattern = planted_corpus([d.text for d in corpus[:1]], n_planted=1, seed=3).pattern
    out = train_lm(
        tiny_cfg("gpt2"), corpus, tmp_path / "inj", tokenizer=tokenizer, progress=False,
        inject={"after_step": 8, "texts": [pattern] * 4, "fraction": 0.5},
    )
    for s in (0, 1, 2, 4, 8):  # identical to the run that never sees the pattern, up to step 8
        assert _bitwise_equal(out / f"step{s}", reference / f"step{s}")
    assert not _bitwise_equal(out / "step16", reference / "step16")
    learned = text_loss(out / "step24", [pattern])
    unseen = text_loss(reference / "step24", [pattern])
    before = text_loss(out / "step8", [pattern])
    assert learned < unseen - 0.5 and learned < before - 0.5, (learned, unseen, before)
    assert read_manifest(out)["inject"]["after_step"] == 8


def test_mamba_parallel_scan_matches_the_sequential_recurrence(tiny_cfg):
    """Zoo Mambas save use_mambapy=True; loading where mambapy is missing runs the loop: same function."""
    pytest.importorskip("mambapy")
    model = build_model(tiny_cfg("mamba"), 384, 0).eval()
    assert model.config.use_mambapy
    ids = torch.randint(0, 384, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        parallel = model(input_ids=ids).logits
        for layer in model.backbone.layers:
            layer.mixer.use_mambapy = False
        sequential = model(input_ids=ids).logits
    torch.testing.assert_close(parallel, sequential, rtol=1e-4, atol=1e-4)


def test_without_a_tokenizer_one_is_trained_saved_and_reused(corpus, tiny_cfg, tmp_path):
    from universality.zoo.tokenizer import load_tokenizer

    cfg = tiny_cfg("gpt_neox", steps=4, warmup_steps=1, checkpoint_steps=(0, 2, 4), vocab_size=300)
    docs = [d.text for d in corpus[:3]]
    out = train_lm(cfg, docs, tmp_path / "own", stop_at=2, progress=False)
    saved = load_tokenizer(out / "tokenizer")
    assert len(saved) == 300
    torch.set_num_threads(2)
    train_lm(cfg, docs, out, progress=False, num_threads=1)  # resumes with the saved tokenizer, not a new one
    assert torch.get_num_threads() == 2  # restored after the call
    with pytest.raises(ConfigError, match="num_threads"):
        train_lm(cfg, docs, out, num_threads=0)
    manifest = read_manifest(out)
    assert manifest["tokenizer_hash"] == tokenizer_hash(saved) and manifest["vocab_size"] == 300
    assert manifest["dataset"] == "texts" and [f"step{s}" for s in (0, 2, 4)] == manifest["checkpoints"]
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_crash_while_writing_resume_state_still_resumes_bitwise(runs, corpus, tokenizer, tiny_cfg, tmp_path, monkeypatch):
    """A crash after the step-4 moments are saved but before state.json moves on resumes from step 2."""
    import universality.zoo.checkpoints as ckpt

    reference = runs("gpt2")
    real_write_json = ckpt.write_json

    def crash_at_step4(path, obj):
        if Path(path).name == "state.json" and obj["step"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_write_json(path, obj)

    monkeypatch.setattr(ckpt, "write_json", crash_at_step4)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train_lm(tiny_cfg("gpt2"), corpus, out, tokenizer=tokenizer, progress=False)
    assert (out / "step4").is_dir() and (out / "resume" / "optimizer-step4.safetensors").is_file()
    monkeypatch.setattr(ckpt, "write_json", real_write_json)
    train_lm(tiny_cfg("gpt2"), corpus, out, tokenizer=tokenizer, progress=False)
    for s in STEPS:
        assert _bitwise_equal(out / f"step{s}", reference / f"step{s}")
    assert read_manifest(out)["train_loss"] == read_manifest(reference)["train_loss"]
