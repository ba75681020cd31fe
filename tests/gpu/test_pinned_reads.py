"""Store reads to CUDA (skipped without CUDA): shuffled batches are gathered once into pinned memory
and copied asynchronously; the rows and their order are those of the CPU reader."""

from __future__ import annotations

import pytest
import torch

from universality.activations import ActivationStore, DevicePrefetcher
from universality.activations.store import FORMAT, MANIFEST, shard_name
from universality.io import save_tensors_digest, sha256_file, write_json

pytestmark = pytest.mark.gpu

SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinned") / "store"
    root.mkdir()
    gen = torch.Generator().manual_seed(0)
    shards, total = [], 0
    for i, n in enumerate((3000, 3000, 700)):
        x = torch.randn(n, 128, generator=gen)
        sha = save_tensors_digest(root / shard_name(i), {f"acts/{SITE}": x, "position": torch.arange(total, total + n)})
        docs = write_json(root / shard_name(i).replace(".safetensors", ".docs.json"), {"first_index": total, "ids": [str(j) for j in range(total, total + n)]})
        shards.append({"file": shard_name(i), "docs": docs.name, "rows": n, "contexts_end": i + 1, "sha256": sha, "docs_sha256": sha256_file(docs)})
        total += n
    write_json(root / MANIFEST, {"format": FORMAT, "key": "gpu-test", "model": "none", "sites": {SITE: {"width": 128, "kind": "float", "dtype": "float32"}},
                                 "shards": shards, "n_rows": total, "complete": True})
    return ActivationStore.open(root)


def test_shuffled_reads_to_cuda_are_pinned_and_equal_to_the_cpu_reader(store):
    kw = dict(batch_size=500, shuffle_buffer=2048, seed=4, epochs=2)
    cpu = list(store.iter_batches(SITE, **kw))
    pinned = store.iter_batches(SITE, **kw)
    pinned.pin_output = True
    host = list(pinned)
    assert all(b[SITE].is_pinned() for b in host)
    on_gpu = list(store.iter_batches(SITE, device="cuda", **kw))
    prefetched_reader = store.iter_batches(SITE, **kw)
    prefetched = list(DevicePrefetcher(prefetched_reader, device="cuda", depth=2))
    assert prefetched_reader.pin_output is True  # the prefetcher asked the reader for pinned batches
    torch.cuda.synchronize()
    assert len(cpu) == len(host) == len(on_gpu) == len(prefetched)
    for a, b, c, d in zip(cpu, host, on_gpu, prefetched):
        assert c[SITE].device.type == "cuda" and d[SITE].device.type == "cuda"
        assert torch.equal(a[SITE], b[SITE]) and torch.equal(a[SITE], c[SITE].cpu()) and torch.equal(a[SITE], d[SITE].cpu())
