"""Fine-tuning a zoo run from one of its checkpoints on other data (base versus fine-tune)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import models
from universality.data import shakespeare
from universality.errors import ArtifactError, ConfigError
from universality.io import sha256_file
from universality.zoo import (
    default_finetune_lr,
    finetune_lm,
    from_dict,
    lineage_of,
    read_manifest,
    synthetic_pattern,
    text_loss,
    tokenizer_hash,
    train_lm,
)
from universality.zoo.corpus import as_subset

FT_STEPS = (0, 8, 16)


@pytest.fixture(scope="module")
def new_data():
    """D': three Shakespeare scenes the base never read, plus passages of eight nonsense sentences."""
    scenes = [d.text for d in list(shakespeare(limit=43))[40:43]]
    return scenes + [" ".join([synthetic_pattern(s)] * 6) for s in range(8) for _ in range(4)]


@pytest.fixture(scope="module")
def base(corpus, tokenizer, tiny_cfg, tmp_path_factory):
    torch.set_num_threads(1)
    return train_lm(tiny_cfg("gpt2"), corpus, tmp_path_factory.mktemp("ft_base") / "base", tokenizer=tokenizer, progress=False)


def _finetune(base, data, out, **kw):
    args = dict(steps=16, lr=3e-3, checkpoint_steps=(8, 16), seed=0, progress=False)
    return finetune_lm(base, 24, data, out, **{**args, **kw})


@pytest.fixture(scope="module")
def ft(base, new_data):
    torch.set_num_threads(1)
    return _finetune(base, new_data, base.parent / "ft")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _bitwise_equal(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_step0_is_the_base_checkpoint_bit_for_bit_and_training_moves_on(base, ft):
    assert _bitwise_equal(ft / "step0", base / "step24")
    assert not _bitwise_equal(ft / "step8", base / "step24")
    adapter = models.load(str(ft))
    assert adapter.checkpoints == tuple(f"step{s}" for s in FT_STEPS) and adapter.revision == "step16"
    assert adapter.family == "gpt2" and adapter.d_model == 32
    assert not (ft / "resume").exists()


def test_eval_loss_on_the_new_data_drops_below_the_base(base, ft, new_data):
    evals = read_manifest(ft)["eval_loss"]  # held-out rows of D'; step0 is the base checkpoint on them
    assert evals["step16"] < evals["step8"] < evals["step0"] - 0.1, evals
    probe = [synthetic_pattern(s) for s in range(8)]  # each sentence once, never in the base's data
    before, after = text_loss(base / "step24", probe), text_loss(ft / "step16", probe)
    assert after < before - 0.3, (before, after)


def test_manifest_records_base_data_hyper_parameters_and_lineage(base, ft, new_data, tiny_cfg):
    m, mb = read_manifest(ft), read_manifest(base)
    assert m["base"]["step"] == 24 and m["base"]["checkpoint"] == "step24"
    assert m["base"]["run_hash"] == mb["run_hash"] and m["base"]["dir"] == str(base.resolve())
    assert m["base"]["weights_sha256"] == sha256_file(base / "step24" / "model.safetensors")
    assert m["base"]["subset_hash"] == mb["subset_hash"] != m["subset_hash"] == as_subset(new_data).hash
    assert m["finetune"] == {"steps": 16, "lr": 3e-3, "warmup_steps": 1, "seed": 0, "checkpoint_steps": list(FT_STEPS)}
    assert m["steps"] == list(FT_STEPS) and len(m["train_loss"]) == 16
    assert m["lineage"] == m["base"]["lineage"] == mb["lineage"] == mb["run_hash"] != m["run_hash"]
    assert lineage_of(ft) == lineage_of(base) == lineage_of(ft / "step8") == mb["run_hash"]
    assert lineage_of(base.parent / "nothing-here") is None
    cfg = from_dict(m["config"])  # the base architecture with the fine-tune's schedule
    assert cfg.d_model == 32 and cfg.steps == 16 and cfg.lr == 3e-3 and cfg.batch_size == 8
    assert default_finetune_lr(tiny_cfg("gpt2")) == pytest.approx(1e-2 * 0.1)


def test_tokenizer_is_the_base_runs(base, ft, tokenizer):
    assert read_manifest(ft)["tokenizer_hash"] == read_manifest(base)["tokenizer_hash"] == tokenizer_hash(tokenizer)
    blobs = {(ft / f"step{s}" / "tokenizer.json").read_bytes() for s in FT_STEPS}
    blobs |= {(ft / "tokenizer" / "tokenizer.json").read_bytes(), (base / "tokenizer" / "tokenizer.json").read_bytes()}
    assert len(blobs) == 1


def test_bad_bases_and_other_runs_are_refused(base, ft, new_data, tmp_path):
    with pytest.raises(ConfigError, match=r"base_step=3 is not a checkpoint .*use one of \[0, 1, 2, 4, 8, 16, 24\]"):
        finetune_lm(base, 3, new_data, tmp_path / "a", steps=4, progress=False)
    with pytest.raises(ArtifactError, match="does not exist"):
        _finetune(tmp_path / "missing", new_data, tmp_path / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="not a finished zoo run"):
        _finetune(tmp_path / "empty", new_data, tmp_path / "c")
    with pytest.raises(ConfigError, match="base run's folder"):
        _finetune(base, new_data, base)
    with pytest.raises(ConfigError, match="steps"):
        _finetune(base, new_data, tmp_path / "d", steps=0)
    stamp = (ft / "zoo.json").stat().st_mtime_ns
    assert _finetune(base, new_data, ft) == ft  # a finished identical fine-tune is returned as is
    assert (ft / "zoo.json").stat().st_mtime_ns == stamp
    with pytest.raises(ArtifactError, match="another config"):
        _finetune(base, new_data, ft, seed=1)


def test_same_seed_is_deterministic_and_resume_is_bitwise(base, ft, new_data, tmp_path):
    out = tmp_path / "again"
    _finetune(base, new_data, out, stop_at=8)
    assert (out / "resume").is_dir() and not (out / "step16").exists() and not (out / "zoo.json").exists()
    _finetune(base, new_data, out)  # resumes after step 8
    for s in FT_STEPS:
        assert _bitwise_equal(out / f"step{s}", ft / f"step{s}"), f"step{s} differs"
    assert read_manifest(out)["train_loss"] == read_manifest(ft)["train_loss"]
    assert read_manifest(out)["run_hash"] == read_manifest(ft)["run_hash"]
