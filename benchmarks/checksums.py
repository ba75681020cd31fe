"""What crash safety and checksums cost: SHA-256 throughput, the deterministic safetensors writer,
and one pass over an activation store with lazy shard verification versus none.

* ``sha256``: :func:`universality.io.sha256_file` on a file already in the page cache (GB/s);
* ``write``: :func:`universality.io.save_tensors` (deterministic writer, temporary name, fsync,
  rename) and :func:`~universality.io.save_tensors_digest` (the same plus the digest) against
  ``safetensors.torch.save_file`` straight to the final name (GB/s);
* ``store_read``: one pass of ``store.iter_batches`` over a store of float32 shards (GPT-2-small
  width by default), opened with ``verify="lazy"`` (every shard hashed on its first read) and
  ``verify="none"``; the ratio is the read-time cost of verification;
* ``verify_all``: :meth:`ActivationStore.verify_all` over the whole store (GB/s).

The store is written directly (manifest + shards in the store format) rather than harvested, so
the numbers are about I/O and hashing only. Goal: lazy verification costs at most one extra
sequential read per shard (ratio <= 2 from a warm page cache, less when reads dominate).
Writes ``benchmarks/results/checksums-<machine>.json``.

Usage: ``python benchmarks/checksums.py [--rows 400000] [--width 768] [--shard-rows 65536]``
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from safetensors.torch import save_file  # noqa: E402

from universality.activations import ActivationStore  # noqa: E402
from universality.activations.store import FORMAT, MANIFEST, shard_name  # noqa: E402
from universality.io import save_tensors, save_tensors_digest, sha256_file, write_json  # noqa: E402

SITE = "blocks.0.hook_resid_post"


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _write_store(root: Path, rows: int, width: int, shard_rows: int) -> Path:
    """A store in the harvest's on-disk format, filled with random float32 rows."""
    gen = torch.Generator().manual_seed(0)
    shards, total, sum_x, sum_sq = [], 0, torch.zeros(width, dtype=torch.float64), 0.0
    for i, lo in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - lo)
        x = torch.randn(n, width, generator=gen)
        fields = {f: torch.arange(lo, lo + n) for f in ("token_ids", "doc_index", "position", "context_index", "char_start", "char_end")}
        stats = {f"stat_sum/{SITE}": x.double().sum(0), f"stat_sumsq/{SITE}": x.double().pow(2).sum().reshape(1)}
        sha = save_tensors_digest(root / shard_name(i), {f"acts/{SITE}": x} | fields | stats)
        docs = write_json(root / shard_name(i).replace(".safetensors", ".docs.json"), {"first_index": lo, "ids": [str(j) for j in range(lo, lo + n)]})
        shards.append({"file": shard_name(i), "docs": docs.name, "rows": n, "contexts_end": i + 1, "sha256": sha,
                       "docs_sha256": sha256_file(docs)})
        total, sum_x, sum_sq = total + n, sum_x + stats[f"stat_sum/{SITE}"], sum_sq + float(stats[f"stat_sumsq/{SITE}"])
    write_json(root / MANIFEST, {
        "format": FORMAT, "key": "bench", "model": "none", "revision": None, "family": None,
        "sites": {SITE: {"width": width, "kind": "float", "dtype": "float32",
                         "stats": {"n": total, "mean": (sum_x / total).tolist(), "mean_sq_norm": sum_sq / total}}},
        "shards": shards, "n_rows": total, "n_tokens": total, "contexts_done": len(shards), "complete": True,
        "row_fields": ["token_ids", "doc_index", "position", "context_index", "char_start", "char_end"],
    })
    return root


def _read_pass(path: Path, verify: str, batch_size: int) -> float:
    store = ActivationStore.open(path, verify=verify)
    t0 = time.perf_counter()
    n = 0
    for batch in store.iter_batches(SITE, batch_size=batch_size):
        n += batch[SITE].shape[0]
    assert n == store.n_rows
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--shard-rows", type=int, default=65536)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from bench_memory import PeakMemory

    mem = PeakMemory().start()
    torch.set_num_threads(1)
    results: dict = {"machine": "cpu-" + (platform.node() or "host"), "torch": torch.__version__,
                     "rows": args.rows, "width": args.width, "shard_rows": args.shard_rows}
    with tempfile.TemporaryDirectory(prefix="bench-checksums-") as tmp:
        tmp = Path(tmp)
        t = {"x": torch.randn(args.shard_rows, args.width)}
        gb = t["x"].numel() * 4 / 1e9
        results["write"] = {
            "tensor_gb": gb,
            "save_file_gb_s": gb / _best(lambda: save_file(t, str(tmp / "ref.safetensors"))),
            "save_tensors_gb_s": gb / _best(lambda: save_tensors(tmp / "ours.safetensors", t)),
            "save_tensors_digest_gb_s": gb / _best(lambda: save_tensors_digest(tmp / "ours.safetensors", t)),
        }
        size = (tmp / "ours.safetensors").stat().st_size
        results["sha256"] = {"file_gb": size / 1e9, "gb_s": size / 1e9 / _best(lambda: sha256_file(tmp / "ours.safetensors"))}

        store = _write_store(tmp / "store", args.rows, args.width, args.shard_rows)
        store_gb = sum(p.stat().st_size for p in store.glob("shard-*.safetensors")) / 1e9
        _read_pass(store, "none", args.batch_size)  # warm the page cache
        none = min(_read_pass(store, "none", args.batch_size) for _ in range(2))
        lazy = min(_read_pass(store, "lazy", args.batch_size) for _ in range(2))
        opened = ActivationStore.open(store, verify="none")
        verify_all = _best(opened.verify_all, repeats=2)
        results["store_read"] = {"store_gb": store_gb, "verify_none_s": none, "verify_lazy_s": lazy,
                                 "lazy_over_none": lazy / none, "verify_none_gb_s": store_gb / none,
                                 "verify_lazy_gb_s": store_gb / lazy}
        results["verify_all"] = {"seconds": verify_all, "gb_s": store_gb / verify_all}
    results["memory"] = mem.stop().as_dict()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"checksums-{results['machine']}.json"
    write_json(out, results)
    print(out)
    for k in ("write", "sha256", "store_read", "verify_all"):
        print(k, {kk: round(v, 3) if isinstance(v, float) else v for kk, v in results[k].items()})


if __name__ == "__main__":
    main()
