"""The read paths: mapped groups (shuffled: one gather per row; in order: one copy per batch), and
memory bounded by buffer + batch rows."""

from __future__ import annotations

import itertools

import pytest
import torch

from universality.activations import ActivationStore
from universality.activations.readers import MappedRows, gather_rows
from universality.activations.store import FORMAT, MANIFEST, shard_name
from universality.io import save_tensors_digest, sha256_file, write_json

SITE = "blocks.0.hook_resid_post"
FIELDS = ("token_ids", "doc_index", "position", "context_index", "char_start", "char_end")


def _write_store(root, rows: int, width: int, shard_rows: int):
    """A store in the harvest's on-disk format with random float32 rows (as benchmarks/checksums.py writes)."""
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    shards, total, sum_x, sum_sq = [], 0, torch.zeros(width, dtype=torch.float64), 0.0
    for i, lo in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - lo)
        x = torch.randn(n, width, generator=gen)
        fields = {f: torch.arange(lo, lo + n) for f in FIELDS}
        stats = {f"stat_sum/{SITE}": x.double().sum(0), f"stat_sumsq/{SITE}": x.double().pow(2).sum().reshape(1)}
        sha = save_tensors_digest(root / shard_name(i), {f"acts/{SITE}": x} | fields | stats)
        docs = write_json(root / shard_name(i).replace(".safetensors", ".docs.json"), {"first_index": lo, "ids": [str(j) for j in range(lo, lo + n)]})
        shards.append({"file": shard_name(i), "docs": docs.name, "rows": n, "contexts_end": i + 1, "sha256": sha,
                       "docs_sha256": sha256_file(docs)})
        total, sum_x, sum_sq = total + n, sum_x + stats[f"stat_sum/{SITE}"], sum_sq + float(stats[f"stat_sumsq/{SITE}"])
    write_json(root / MANIFEST, {
        "format": FORMAT, "key": "test", "model": "none", "revision": None, "family": None,
        "sites": {SITE: {"width": width, "kind": "float", "dtype": "float32",
                         "stats": {"n": total, "mean": (sum_x / total).tolist(), "mean_sq_norm": sum_sq / total}}},
        "shards": shards, "n_rows": total, "n_tokens": total, "contexts_done": len(shards), "complete": True,
        "row_fields": list(FIELDS),
    })
    return ActivationStore.open(root)


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    """~50 MB of rows (3 shards of 8,192 x 512 float32 and a short one), far more than the buffer."""
    return _write_store(tmp_path_factory.mktemp("wide") / "store", rows=3 * 8192 + 1000, width=512, shard_rows=8192)


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.parametrize("shuffle_buffer, batch", [(2048, 256), (3000, 1000), (8192, 4096), (20000, 333), (0, 1000), (0, 8192)])
def test_mapped_groups_give_the_same_batches_as_buffered_reads(wide_store, shuffle_buffer, batch):
    def batches(map_files):
        r = wide_store.iter_batches(SITE, batch_size=batch, shuffle_buffer=shuffle_buffer, seed=3, epochs=2, fields=("position",))
        r.map_files = map_files
        return list(r), r

    mapped, rm = batches(True)
    buffered, rb = batches(False)
    assert len(mapped) == len(buffered)
    for a, b in zip(mapped, buffered):
        for k in (SITE, "position"):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])
    assert rm.resident_rows == rb.resident_rows <= max(shuffle_buffer, rm.piece_rows) + batch
    got = torch.sort(torch.cat([b["position"] for b in mapped])).values
    assert torch.equal(got, torch.arange(wide_store.n_rows).repeat_interleave(2))


def test_single_range_groups_are_mapped_not_copied(wide_store):
    reader = wide_store.iter_batches(SITE, batch_size=512, shuffle_buffer=4096, seed=0)
    groups = reader._groups(0)
    single = next(i for i, g in enumerate(groups) if len(g) == 1)
    data = reader._load_group(0, single)
    assert isinstance(data[SITE], MappedRows) and not reader._buffers  # no buffer allocated for it
    shard, lo, hi = groups[single][0]
    want = wide_store.read_rows(shard, [f"acts/{SITE}"], lo, hi)[f"acts/{SITE}"]
    idx = torch.randperm(hi - lo)[:100]
    out = torch.empty(100, 512)
    gather_rows(data[SITE], idx, out)
    assert torch.equal(out, want[idx]) and torch.equal(data[SITE].rows(5, 9), want[5:9])


def test_unshuffled_batches_are_copies_of_mapped_ranges(wide_store):
    """In store order a group is mapped too; each batch is a copy (it outlives the mapping) in store order."""
    reader = wide_store.iter_batches(SITE, batch_size=3000, fields=("position",))
    assert isinstance(reader._load_group(0, 0)[SITE], MappedRows)
    batches = list(reader)
    assert torch.equal(torch.cat([b["position"] for b in batches]), torch.arange(wide_store.n_rows))
    assert all(b[SITE].is_contiguous() for b in batches)
    first = batches[0][SITE].clone()
    batches[0][SITE].zero_()  # writable memory of its own: the store is untouched
    again = next(iter(wide_store.iter_batches(SITE, batch_size=3000)))[SITE]
    assert torch.equal(again, first)


def test_resident_memory_stays_within_buffer_plus_batch_rows(wide_store):
    """The process's resident set (mapped pages included) grows by at most the reader's bound while
    it reads a store many times larger than its buffer."""
    buffer, batch = 2048, 256
    row_bytes = 512 * 4
    bound_mib = (buffer + batch) * row_bytes / 2**20  # 4.5 MiB
    store_mib = wide_store.n_rows * row_bytes / 2**20  # ~50 MiB

    def one_pass(map_files):
        reader = wide_store.iter_batches(SITE, batch_size=batch, shuffle_buffer=buffer, seed=1)
        reader.map_files = map_files
        peak, start = 0.0, _rss_mib()
        n = 0
        for b in reader:
            n += b[SITE].shape[0]
            peak = max(peak, _rss_mib())
        assert n == wide_store.n_rows and reader.resident_rows <= buffer + batch
        return peak - start

    for map_files in (True, False):
        one_pass(map_files)  # warm: allocator pools, page cache, checksums
        growth = min(one_pass(map_files) for _ in range(2))
        assert growth <= bound_mib * 2 + 8, (map_files, growth, bound_mib)
        assert growth < store_mib / 3


def test_map_rows_refuses_a_truncated_shard(tmp_path):
    from universality.errors import ArtifactError

    store = _write_store(tmp_path / "s", rows=600, width=16, shard_rows=600)
    store._header(0)  # header read (and checksum checked) before the file shrinks
    path = store.path / shard_name(0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        store.map_rows(0, f"acts/{SITE}", 0, 600)


def test_pin_output_is_off_without_cuda(wide_store):
    reader = wide_store.iter_batches(SITE, batch_size=64, shuffle_buffer=512)
    reader.pin_output = True
    batch = next(itertools.islice(iter(reader), 1))
    assert batch[SITE].shape == (64, 512)
    if not torch.cuda.is_available():
        assert not batch[SITE].is_pinned()
