"""A flipped byte in any checksummed artifact gives a clear ArtifactError naming the file.

Every flip lands in the tensor data (or in a JSON string), so the file still parses: it is the
checksum, not the parser, that catches it. Artifacts written before checksums existed still load.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

import reliability_child as rc
from universality.activations import ActivationStore
from universality.errors import ArtifactError, ConfigError
from universality.io import (
    file_digests,
    is_temp_name,
    load_tensors,
    read_json,
    remove_stale_temps,
    save_tensors,
    save_tensors_digest,
    sha256_file,
    verify_digests,
    verify_sha256,
    write_json,
)
from universality.sae import SAE, sae_config, make_sae
from universality.study.cache import StageCache
from universality.train.checkpoint import read_checkpoint, write_checkpoint


def flip_data_byte(path: Path) -> None:
    """Flip one bit of the last byte of a safetensors file (tensor data, not the header)."""
    data = bytearray(path.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    assert len(data) > header_end
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    load_tensors(path)  # still a well-formed safetensors file


@pytest.fixture(scope="module")
def store_dir(tiny_adapter, docs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "store"
    rc.run_harvest({"docs": str(docs_file), "out": str(out)}, adapter=tiny_adapter)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- io helpers
def test_safetensors_writer_round_trips_every_dtype_byte_for_byte(tmp_path):
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    t = {"f64": torch.randn(3, 5, generator=g, dtype=torch.float64), "f32": torch.randn(7, generator=g),
         "f16": torch.randn(2, 3, generator=g).half(), "bf16": torch.randn(3, generator=g).bfloat16(),
         "i64": torch.arange(5), "i32": torch.arange(3, dtype=torch.int32), "i16": torch.arange(2, dtype=torch.int16),
         "i8": torch.arange(-2, 2, dtype=torch.int8), "u8": torch.arange(4, dtype=torch.uint8),
         "bool": torch.tensor([True, False, True]), "empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5),
         "strided": torch.randn(4, 6, generator=g).T, "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn)}
    for subset in ({k: v for k, v in t.items() if k != "f8"}, t):  # our writer; the reference one for float8
        a = save_tensors_digest(tmp_path / "a.safetensors", subset, metadata={"z": "1", "a": "2"})
        back = load_file(str(tmp_path / "a.safetensors"))  # the reference reader accepts it
        assert back.keys() == subset.keys()
        for k, v in subset.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            assert torch.equal(back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
        assert a == sha256_file(tmp_path / "a.safetensors")
    ours = {k: v for k, v in t.items() if k != "f8"}
    save_file({k: v.contiguous() for k, v in ours.items()}, str(tmp_path / "ref.safetensors"))
    ref = load_file(str(tmp_path / "ref.safetensors"))
    assert all(torch.equal(ref[k], load_tensors(save_tensors(tmp_path / "b.safetensors", ours))[k]) for k in ours)


def test_digest_is_of_the_written_bytes_and_mismatches_name_the_file(tmp_path):
    t = {"W": torch.randn(8, 4), "i": torch.arange(3)}
    sha = save_tensors_digest(tmp_path / "w.safetensors", t, metadata={"b": "2", "a": "1"})
    assert sha == sha256_file(tmp_path / "w.safetensors")
    # the same tensors and metadata give the same bytes (metadata order does not matter)
    assert save_tensors_digest(tmp_path / "v.safetensors", dict(reversed(t.items())), metadata={"a": "1", "b": "2"}) == sha
    verify_sha256(tmp_path / "w.safetensors", sha)
    flip_data_byte(tmp_path / "w.safetensors")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for .*w\.safetensors.*; re-run it") as err:
        verify_sha256(tmp_path / "w.safetensors", sha, fix="re-run it")
    assert "\n" not in str(err.value)
    with pytest.raises(ArtifactError, match="missing"):
        verify_sha256(tmp_path / "gone.safetensors", sha)


def test_folder_digests_skip_temporaries_and_catch_missing_truncated_flipped(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("alpha")
    (tmp_path / "b.bin").write_bytes(b"\x00" * 100)
    (tmp_path / ".b.bin.tmp-1-abcd").write_bytes(b"junk")
    (tmp_path / "stage.json").write_text("{}")
    digests = file_digests(tmp_path, exclude=("stage.json",))
    assert sorted(digests) == ["b.bin", "sub/a.txt"] and digests["b.bin"]["bytes"] == 100
    assert is_temp_name(".b.bin.tmp-1-abcd") and not is_temp_name("b.bin")
    verify_digests(tmp_path, digests)
    (tmp_path / "b.bin").write_bytes(b"\x00" * 99 + b"\x01")  # same size, one byte changed
    verify_digests(tmp_path, digests, full=False)  # a size check cannot see it ...
    with pytest.raises(ArtifactError, match=r"b\.bin"):
        verify_digests(tmp_path, digests)  # ... the hash does
    (tmp_path / "b.bin").write_bytes(b"\x00" * 50)
    with pytest.raises(ArtifactError, match="has 50 bytes"):
        verify_digests(tmp_path, digests, full=False)
    (tmp_path / "sub" / "a.txt").unlink()
    with pytest.raises(ArtifactError, match=r"a\.txt is missing"):
        verify_digests(tmp_path, {"sub/a.txt": digests["sub/a.txt"]})


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    import os

    dead = _dead_pid()
    (tmp_path / f".checkpoint.tmp-{dead}-ab12").mkdir()
    (tmp_path / f".checkpoint.tmp-{dead}-ab12" / "state.safetensors").write_bytes(b"half")
    (tmp_path / f".checkpoint.tmp-{os.getpid()}-cd34").mkdir()  # this process: maybe mid-write
    (tmp_path / f".other.tmp-{dead}-ef56").write_bytes(b"x")  # another artifact's temporary
    removed = remove_stale_temps(tmp_path, "checkpoint")
    assert [p.name for p in removed] == [f".checkpoint.tmp-{dead}-ab12"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".checkpoint.tmp-{os.getpid()}-cd34", f".other.tmp-{dead}-ef56"]
    # the writers call it: a checkpoint, a dictionary and a study stage clean up after a killed predecessor
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / f".checkpoint.tmp-{dead}-0001").mkdir()
    write_checkpoint(tmp_path / "ck", {"x": torch.zeros(2)}, {"step": 0})
    (tmp_path / f".sae.tmp-{dead}-0002").mkdir()
    make_sae(sae_config("topk", 4, 8, k=1)).save(tmp_path / "sae")
    cache = StageCache(tmp_path / "study")
    stale = cache.path_for("eval", {"k": 1})
    stale.parent.mkdir(parents=True)
    (stale.parent / f".{stale.name}.tmp-{dead}-0003").mkdir()
    cache.run("eval", {"k": 1}, lambda folder: (folder / "a.txt").write_text("a"))
    assert not [p for p in (tmp_path / "ck").iterdir() if is_temp_name(p.name)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sae.")]
    assert not [p for p in stale.parent.iterdir() if is_temp_name(p.name)]


# ----------------------------------------------------------------------------- activation store
def test_store_manifest_records_every_shard_checksum(store_dir):
    store = ActivationStore.open(store_dir, verify="all")
    assert store.verify_all() == len(store.shards) >= 8
    for shard in store.shards:
        assert shard["sha256"] == sha256_file(store_dir / shard["file"])
        assert shard["docs_sha256"] == sha256_file(store_dir / shard["docs"])


def test_flipped_shard_byte_is_caught_on_open_all_and_on_first_read(store_dir, tmp_path):
    bad = _copy(store_dir, tmp_path / "bad")
    flip_data_byte(bad / "shard-00003.safetensors")
    with pytest.raises(ArtifactError, match=r"shard 3 \(shard-00003\.safetensors\): checksum mismatch.*run the same harvest again"):
        ActivationStore.open(bad, verify="all")
    lazy = ActivationStore.open(bad)  # lazy: opening is cheap, the shard is checked when first read
    lazy.read_rows(2, ["token_ids"])  # a good shard reads fine
    with pytest.raises(ArtifactError, match=r"shard 3 \(shard-00003\.safetensors\)"):
        lazy.read_rows(3, ["token_ids"])
    with pytest.raises(ArtifactError, match="shard-00003"):
        list(ActivationStore.open(bad).iter_batches(rc.HARVEST_SITES[0], batch_size=64))
    with pytest.raises(ArtifactError, match="shard-00003"):
        lazy.verify_all()
    trusting = ActivationStore.open(bad, verify="none")  # opt-out reads the (corrupt) rows unchecked
    assert trusting.read_rows(3, ["token_ids"])["token_ids"].numel() > 0
    with pytest.raises(ConfigError, match="verify mode"):
        ActivationStore.open(bad, verify="sometimes")


def test_changed_document_table_is_caught(store_dir, tmp_path):
    bad = _copy(store_dir, tmp_path / "bad")
    path = bad / "shard-00000.docs.json"
    table = json.loads(path.read_text())
    table["ids"][0] = table["ids"][0][:-1] + ("X" if table["ids"][0][-1] != "X" else "Y")  # still valid JSON
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    with pytest.raises(ArtifactError, match=r"shard 0 \(shard-00000\.docs\.json\): checksum mismatch"):
        ActivationStore.open(bad).doc_ids
    with pytest.raises(ArtifactError, match="shard-00000"):
        ActivationStore.open(bad, verify="all")


def test_missing_shard_is_named(store_dir, tmp_path):
    bad = _copy(store_dir, tmp_path / "bad")
    (bad / "shard-00001.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"shard 1 .*shard-00001\.safetensors is missing"):
        ActivationStore.open(bad, verify="all")


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/shard.safetensors", ".."])
def test_manifest_naming_a_file_outside_the_store_is_refused(store_dir, tmp_path, name):
    bad = _copy(store_dir, tmp_path / "bad")
    manifest = read_json(bad / "manifest.json")
    manifest["shards"][0]["file"] = name
    write_json(bad / "manifest.json", manifest)
    with pytest.raises(ArtifactError, match="outside the store"):
        ActivationStore.open(bad, verify="none")


def test_resumed_harvest_refuses_a_corrupt_earlier_shard(store_dir, tiny_adapter, docs_file, tmp_path):
    bad = _copy(store_dir, tmp_path / "bad")
    manifest = read_json(bad / "manifest.json")
    manifest["complete"] = False
    write_json(bad / "manifest.json", manifest)  # pretend it was interrupted
    flip_data_byte(bad / "shard-00002.safetensors")
    with pytest.raises(ArtifactError, match="shard-00002"):
        rc.run_harvest({"docs": str(docs_file), "out": str(bad)}, adapter=tiny_adapter)


def test_store_without_checksums_still_reads(store_dir, tmp_path):
    old = _copy(store_dir, tmp_path / "old")
    manifest = read_json(old / "manifest.json")
    for shard in manifest["shards"]:
        del shard["sha256"], shard["docs_sha256"]
    write_json(old / "manifest.json", manifest)
    store = ActivationStore.open(old, verify="all")
    assert store.verify_all() == 0
    assert torch.equal(store.rows()["token_ids"], ActivationStore.open(store_dir).rows()["token_ids"])


# ----------------------------------------------------------------------------- training checkpoint
def _checkpoint(root: Path) -> Path:
    tensors = {"sae/0/W_dec": torch.randn(16, 8), "rng/torch": torch.get_rng_state()}
    return write_checkpoint(root, tensors, {"step": 3, "keys": ["k"]})


def test_checkpoint_checksum(tmp_path):
    folder = _checkpoint(tmp_path)
    tensors, doc = read_checkpoint(tmp_path)
    assert doc["state_sha256"] == sha256_file(folder / "state.safetensors") and doc["step"] == 3
    flip_data_byte(folder / "state.safetensors")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for .*state\.safetensors.*checkpoint is corrupt"):
        read_checkpoint(tmp_path)
    read_checkpoint(tmp_path, verify=False)  # explicit opt-out


def test_corrupt_checkpoint_stops_a_resume(tmp_path):
    from universality import synthetic as syn
    from universality.train import RunConfig, TrainConfig, Trainer

    def source():
        return syn.PlantedSource(syn.planted_dictionary(16, 8), syn.feature_probabilities(16, 3.0), 32, n_batches=20)

    cfg = [TrainConfig(sae_config("topk", 8, 16, k=2), lr=1e-3)]
    run = RunConfig(steps=6, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2)
    Trainer(cfg, run).fit(source(), progress=False)
    flip_data_byte(tmp_path / "ck" / "checkpoint" / "state.safetensors")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Trainer(cfg, RunConfig(steps=8, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2)).fit(source(), progress=False)


def test_checkpoint_without_checksum_still_loads(tmp_path):
    folder = _checkpoint(tmp_path)
    doc = read_json(folder / "state.json")
    del doc["state_sha256"]
    write_json(folder / "state.json", doc)
    flip_data_byte(folder / "state.safetensors")  # nothing to check it against: it loads
    assert read_checkpoint(tmp_path)[1]["step"] == 3


# ----------------------------------------------------------------------------- dictionaries
def test_dictionary_weights_checksum(tmp_path):
    sae = make_sae(sae_config("topk", 8, 16, k=2), seed=1)
    path = sae.save(tmp_path / "sae")
    cfg = read_json(path / "cfg.json")
    assert cfg["weights_sha256"] == sha256_file(path / "weights.safetensors")
    loaded = SAE.load(path)
    assert "weights_sha256" not in loaded.meta  # a property of the file, not of the dictionary
    assert torch.equal(loaded.W_dec, sae.W_dec)
    loaded.save(tmp_path / "again")  # re-saving records the new file's own checksum
    assert read_json(tmp_path / "again" / "cfg.json")["weights_sha256"] == sha256_file(tmp_path / "again" / "weights.safetensors")
    flip_data_byte(path / "weights.safetensors")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for .*weights\.safetensors.*dictionary in .* is corrupt"):
        SAE.load(path)


def test_dictionary_without_checksum_still_loads(tmp_path):
    sae = make_sae(sae_config("relu", 8, 16, sparsity_coeff=1.0), seed=2)
    path = sae.save(tmp_path / "sae")
    cfg = read_json(path / "cfg.json")
    del cfg["weights_sha256"]
    write_json(path / "cfg.json", cfg)
    assert torch.equal(SAE.load(path).W_enc, sae.W_enc)


# ----------------------------------------------------------------------------- study stages
def _stage(tmp_path: Path, cache: StageCache):
    def build(folder: Path) -> None:
        save_tensors(folder / "eval.safetensors", {"x": torch.randn(32, 4)})
        (folder / "notes.txt").write_text("hello")

    return cache.run("eval", {"k": 1}, build)


def test_stage_cache_checks_its_files_on_a_hit(tmp_path):
    rec = _stage(tmp_path, StageCache(tmp_path))
    files = read_json(rec.path / "stage.json")["files"]
    assert sorted(files) == ["eval.safetensors", "notes.txt"]
    assert _stage(tmp_path, StageCache(tmp_path)).hit
    flip_data_byte(rec.path / "eval.safetensors")
    with pytest.raises(ArtifactError, match=r"eval\.safetensors.*delete .*eval-.* and rerun the study"):
        _stage(tmp_path, StageCache(tmp_path))
    # big files (over hash_limit) get a size check on a hit; "full" hashes them too
    assert _stage(tmp_path, StageCache(tmp_path, hash_limit=0)).hit
    assert _stage(tmp_path, StageCache(tmp_path, verify="size")).hit
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        _stage(tmp_path, StageCache(tmp_path, verify="full", hash_limit=0))
    (rec.path / "notes.txt").write_text("hello, world")
    with pytest.raises(ArtifactError, match=r"notes\.txt has 12 bytes"):
        _stage(tmp_path, StageCache(tmp_path, verify="size"))
    with pytest.raises(ConfigError, match="verify mode"):
        StageCache(tmp_path, verify="never")


def test_stage_without_checksums_is_reused(tmp_path):
    rec = _stage(tmp_path, StageCache(tmp_path))
    meta = read_json(rec.path / "stage.json")
    del meta["files"]
    write_json(rec.path / "stage.json", meta)
    (rec.path / "notes.txt").write_text("changed")
    assert _stage(tmp_path, StageCache(tmp_path)).hit
