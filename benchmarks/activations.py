"""Harvest and read throughput of the activation store, side by side in one run.

A GPT-2-shaped model with random weights (no download; ``--small``: 256 wide, 4 layers; default:
GPT-2-small shape, 768 wide, 12 layers), or with ``--family gpt_neox`` a Pythia-70m-shaped GPT-NeoX
(512 wide, 6 layers, 8 heads, d_mlp 2048; ``--small``: 128 wide, 4 layers) and a byte-level BPE tokenizer trained on the shipped
Shakespeare corpus are saved to a temporary folder and opened with ``models.load``. On the same
packed contexts of the corpus it times:

* ``bare_forward``: the model trunk (``model.base_model``: embeddings, blocks, final norm; no LM
  head, no hooks) on every batch of contexts, tokenisation excluded;
* ``capture_only``: ``adapter.capture`` of the harvested sites on the same batches (hooks, no copy);
* ``harvest``: :func:`universality.activations.harvest` end to end - tokenisation and packing
  (prefetch thread), capture, device->host copy, shard writing on the background writer thread,
  statistics and manifest - and the same with ``background_writer=False``;
* ``pipeline_only``: the same harvest with a forward that costs nothing (``capture`` returns a
  precomputed tensor): the most tokens per second the pipeline (tokenisation, gather, copy,
  statistics, shard writes) can absorb, i.e. whether it can keep up with a faster forward;
* ``read``: passes of ``store.iter_batches`` over the written store, sequential (no shuffle buffer)
  and shuffled (a small buffer and ``--buffer``), in GB/s of activation bytes delivered, each
  interleaved with a *plain copy* of the same bytes in the same batch shapes (``torch`` ``clone``
  of batch-sized slices of an in-memory tensor, fresh tensors as the reader's are, on torch's
  threads and on one thread; and, for reference, a single-threaded ``numpy`` copy): the ratio read / plain copy says how close the
  reader comes to what this machine's memory allows *under the same load*. Medians over
  ``--read-repeats`` interleaved rounds; the process's resident memory is sampled during each pass
  (peak growth against the reader's bound, buffer + batch rows). On CUDA also a shuffled pass to
  the device (batches gathered into pinned memory, copied asynchronously).

Goals: ``harvest / bare_forward <= 1.2``; read >= 1 GB/s from a local disk and shuffled read >= 0.8
of a plain copy; resident memory during reading bounded by the shuffle buffer, not by the store
size. ``--read-only`` harvests once (untimed) and runs the read section alone.
Writes ``benchmarks/results/activations-<machine>.json``.

Usage: ``python benchmarks/activations.py [--small] [--family gpt_neox] [--device cuda] [--dtype bfloat16] [--tokens 200000] [--read-only]``
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from models.tokenizer import train_byte_level_bpe  # noqa: E402
from universality.activations import ActivationStore, harvest  # noqa: E402
from universality.data import Packer, PackingConfig, shakespeare  # noqa: E402
from universality.io import write_json  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import PeakMemory  # noqa: E402


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _machine(device: torch.device) -> str:
    name = "cuda-" + torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-" + (platform.node() or "host")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_model(folder: Path, small: bool, seq: int, family: str = "gpt2") -> Path:
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig

    docs = list(shakespeare())
    tok = train_byte_level_bpe([d.text for d in docs[:200]], 4096, folder)
    special = tok.convert_tokens_to_ids(tok.eos_token)
    ids = dict(bos_token_id=special, eos_token_id=special, pad_token_id=special)
    if family == "gpt_neox":  # Pythia-70m's shape
        shape = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512) if small else \
            dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048)
        cfg = GPTNeoXConfig(vocab_size=len(tok), max_position_embeddings=max(seq, 256), rotary_pct=0.25,
                            use_parallel_residual=True, **shape, **ids)
    else:
        shape = dict(n_embd=256, n_layer=4, n_head=4) if small else dict(n_embd=768, n_layer=12, n_head=12)
        cfg = GPT2Config(vocab_size=len(tok), n_positions=max(seq, 256), **shape, **ids)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(folder))
    return folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--family", default="gpt2", choices=["gpt2", "gpt_neox"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tokens", type=int, default=None, help="text tokens to harvest (default 60k CPU, 4M GPU)")
    ap.add_argument("--batch", type=int, default=None, help="contexts per forward (default 8 CPU, 64 GPU)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--shard-rows", type=int, default=1 << 16)
    ap.add_argument("--read-batch", type=int, default=4096)
    ap.add_argument("--buffer", type=int, default=1 << 18)
    ap.add_argument("--read-repeats", type=int, default=5, help="interleaved rounds of the read section (medians)")
    ap.add_argument("--read-only", action="store_true", help="harvest once, untimed, and time only the reads")
    ap.add_argument("--workdir", default=None, help="folder for the model and store (default: a temporary one)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    mem = PeakMemory().start()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    tokens = args.tokens or (4_000_000 if on_gpu else 60_000)
    batch = args.batch or (64 if on_gpu else 8)
    dtype = getattr(torch, args.dtype)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-activations-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = build_model(work / "model", args.small, args.seq, args.family)
        adapter = models.load(str(model_dir), device=str(device), dtype=dtype)
        L = adapter.n_layers
        sites = [f"blocks.{L // 2}.hook_resid_post", f"blocks.{L - 1}.hook_mlp_out", f"blocks.{L - 1}.hook_resid_post"]
        packing = PackingConfig(context_len=args.seq)
        docs = list(shakespeare())
        n_ctx = -(-tokens // (args.seq - 1))
        packer = Packer(adapter.tokenizer, packing)
        batches = []
        for b in packer.batches(docs, batch):
            batches.append(b)
            if sum(len(x) for x in batches) >= n_ctx:
                break
        n_text = int(sum(int((b.kind == 0).sum()) for b in batches))
        gpu_batches = [(b.input_ids.to(device), b.attention_mask.to(device)) for b in batches]
        trunk = adapter.model.base_model

        def bare() -> float:
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                for ids, mask in gpu_batches:
                    trunk(input_ids=ids, attention_mask=mask, use_cache=False)
            _sync(device)
            return time.perf_counter() - t0

        def capture_only() -> float:
            _sync(device)
            t0 = time.perf_counter()
            for ids, mask in gpu_batches:
                adapter.capture(ids, sites, attention_mask=mask)
            _sync(device)
            return time.perf_counter() - t0

        def run_harvest(name: str, background: bool) -> tuple[float, ActivationStore]:
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            _sync(device)
            t0 = time.perf_counter()
            store = harvest(adapter, docs, sites, out, packing=packing, batch_size=batch, shard_rows=args.shard_rows,
                            max_tokens=n_text, dtype=args.dtype if args.dtype != "float32" else "float32",
                            background_writer=background, progress=False)
            _sync(device)
            return time.perf_counter() - t0, store

        # warm up every path once on a small slice
        with torch.no_grad():
            trunk(input_ids=gpu_batches[0][0], attention_mask=gpu_batches[0][1], use_cache=False)
        adapter.capture(gpu_batches[0][0], sites, attention_mask=gpu_batches[0][1])

        class _ConstantAdapter:
            """The same adapter with a free forward: times the harvest pipeline alone."""

            def __init__(self, inner):
                self._inner = inner
                self._acts = {s: torch.randn(batch, args.seq, inner.sites[s], device=device, dtype=dtype) for s in sites}

            def __getattr__(self, name):
                return getattr(self._inner, name)

            def capture(self, input_ids, names, attention_mask=None, dtype=None):
                b, p = input_ids.shape
                return {getattr(s, "name", s): self._acts[getattr(s, "name", s)][:b, :p] for s in names}  # harvest passes typed Sites, reads names

        def pipeline_only() -> float:
            out = work / "store_pipeline"
            shutil.rmtree(out, ignore_errors=True)
            _sync(device)
            t0 = time.perf_counter()
            harvest(_ConstantAdapter(adapter), docs, sites, out, packing=packing, batch_size=batch,
                    shard_rows=args.shard_rows, max_tokens=n_text, dtype=args.dtype, progress=False)
            _sync(device)
            return time.perf_counter() - t0

        timings: dict[str, list[float]] = {"bare_forward": [], "capture_only": [], "harvest": [], "harvest_inline_writer": [],
                                           "pipeline_only": []}
        store = None
        if args.read_only:
            for k in timings:
                timings[k] = []
            _, store = run_harvest("store", True)
        for _ in range(0 if args.read_only else args.repeats):  # interleaved repeats; the minimum is reported
            timings["bare_forward"].append(bare())
            timings["capture_only"].append(capture_only())
            t, store = run_harvest("store", True)
            timings["harvest"].append(t)
            t, _ = run_harvest("store_inline", False)
            timings["harvest_inline_writer"].append(t)
            timings["pipeline_only"].append(pipeline_only())
        best = {k: min(v) for k, v in timings.items() if v}
        store_bytes = sum((store.path / s["file"]).stat().st_size for s in store.shards)
        act_bytes_per_row = sum(store.width(s) * torch.empty(0, dtype=dtype).element_size() for s in sites)

        # the plain copy's source: the same row widths and dtype in memory (at most 65,536 rows, cycled)
        copy_rows = min(store.n_rows, 1 << 16)
        copy_src = {s: torch.randn(copy_rows, store.width(s)).to(dtype) for s in sites}
        copy_src_u8 = {s: t.view(torch.uint8).view(copy_rows, -1).numpy() for s, t in copy_src.items()}

        def read(buffer: int, to_device: bool = False) -> dict:
            rss0 = _rss_mb()
            peak = rss0
            reader = store.iter_batches(sites, batch_size=args.read_batch, shuffle_buffer=buffer, seed=0,
                                        device=device if to_device else None)
            n_bytes = 0
            _sync(device)
            t0 = time.perf_counter()
            for i, b in enumerate(reader):
                n_bytes += sum(t.numel() * t.element_size() for t in b.values())
                if i % 8 == 0:
                    peak = max(peak, _rss_mb())
            _sync(device)
            dt = time.perf_counter() - t0
            peak = max(peak, _rss_mb())
            bound = (max(buffer, reader.piece_rows) + args.read_batch) * act_bytes_per_row
            return {"seconds": dt, "bytes": n_bytes, "GB_per_s": n_bytes / dt / 1e9, "rss_before_mb": rss0,
                    "rss_peak_during_mb": peak, "rss_growth_mb": peak - rss0, "resident_rows_max": reader.resident_rows,
                    "resident_bytes_bound": bound}

        def plain_copy(kind: str) -> dict:
            """The same bytes in the same batch shapes, copied from memory into fresh tensors (arrays):
            ``torch`` (clone, torch's threads), ``torch1`` (clone on one thread), ``numpy`` (one thread),
            ``gather`` (one thread, ``numpy.take`` of the rows in a random order: what any per-row shuffle
            pays before a store is involved). Each batch is held until the next one is made, as a consumer
            of the reader holds it, so both sides allocate (and fault in) the same fresh memory."""
            n_bytes, at = 0, 0
            threads = torch.get_num_threads()
            if kind in ("torch1", "gather"):
                torch.set_num_threads(1)
            order = np.random.default_rng(0).permutation(copy_rows) if kind == "gather" else None
            held = None
            t0 = time.perf_counter()
            for lo in range(0, store.n_rows, args.read_batch):
                rows = min(args.read_batch, store.n_rows - lo)
                at = at if at + rows <= copy_rows else 0
                batch = {}
                for s in sites:
                    if kind == "gather":
                        out = torch.empty((rows, store.width(s)), dtype=dtype)
                        np.take(copy_src_u8[s], order[at : at + rows], axis=0, out=out.view(torch.uint8).numpy(), mode="clip")
                    elif kind == "numpy":
                        out = np.array(copy_src_u8[s][at : at + rows], copy=True)
                    else:
                        out = copy_src[s][at : at + rows].clone()
                    batch[s] = out
                    n_bytes += out.nbytes if kind == "numpy" else out.numel() * out.element_size()
                held = batch  # noqa: F841 - the previous batch is freed here, as in the read loop
                at += rows
            dt = time.perf_counter() - t0
            del held
            torch.set_num_threads(threads)
            return {"seconds": dt, "bytes": n_bytes, "GB_per_s": n_bytes / dt / 1e9}

        def raw_file_read() -> float:
            n, t0 = 0, time.perf_counter()
            for shard in store.shards:
                with open(store.path / shard["file"], "rb", buffering=0) as fh:
                    n += len(fh.read())
            return n / (time.perf_counter() - t0) / 1e9

        configs = {"sequential": 0, "shuffled_small": min(args.buffer, 1 << 15), "shuffled": args.buffer}
        for _ in store.iter_batches(sites, batch_size=args.read_batch):  # untimed: warms the page cache, checks checksums
            pass
        kinds = ("read", "plain_torch", "plain_torch1", "plain_numpy", "plain_gather")
        rounds: dict[str, dict[str, list]] = {name: {k: [] for k in kinds} for name in configs}
        if on_gpu:
            rounds["shuffled_to_device"] = {k: [] for k in kinds}
        raw = []
        for _ in range(args.read_repeats):  # interleaved: every read pass sits between plain copies of its bytes
            for name, buffer in configs.items():
                rounds[name]["plain_torch"].append(plain_copy("torch"))
                rounds[name]["read"].append(read(buffer))
                rounds[name]["plain_torch1"].append(plain_copy("torch1"))
                rounds[name]["plain_numpy"].append(plain_copy("numpy"))
                rounds[name]["plain_gather"].append(plain_copy("gather"))
            if on_gpu:
                rounds["shuffled_to_device"]["plain_torch"].append(plain_copy("torch"))
                rounds["shuffled_to_device"]["read"].append(read(args.buffer, to_device=True))
                rounds["shuffled_to_device"]["plain_torch1"].append(plain_copy("torch1"))
                rounds["shuffled_to_device"]["plain_numpy"].append(plain_copy("numpy"))
                rounds["shuffled_to_device"]["plain_gather"].append(plain_copy("gather"))
            raw.append(raw_file_read())

        def med(xs: list[dict], key: str = "GB_per_s") -> float:
            return statistics.median(x[key] for x in xs)

        reads = []
        for name, r in rounds.items():
            buffer = configs.get(name, args.buffer)
            last = r["read"][-1]
            reads.append({
                "name": name, "shuffle_buffer": buffer, "to_device": name == "shuffled_to_device",
                "GB_per_s": med(r["read"]), "plain_copy_GB_per_s": med(r["plain_torch"]),
                "ratio_to_plain_copy": med(r["read"]) / med(r["plain_torch"]),
                "paired_ratios": [a["GB_per_s"] / b["GB_per_s"] for a, b in zip(r["read"], r["plain_torch"])],
                "plain_copy_one_thread_GB_per_s": med(r["plain_torch1"]),
                "ratio_to_plain_copy_one_thread": med(r["read"]) / med(r["plain_torch1"]),
                "plain_copy_all_GB_per_s": [x["GB_per_s"] for x in r["plain_torch"]], "read_all_GB_per_s": [x["GB_per_s"] for x in r["read"]],
                "numpy_copy_GB_per_s": med(r["plain_numpy"]), "ratio_to_numpy_copy": med(r["read"]) / med(r["plain_numpy"]),
                "memory_gather_GB_per_s": med(r["plain_gather"]), "ratio_to_memory_gather": med(r["read"]) / med(r["plain_gather"]),
                "bytes": last["bytes"], "seconds_all": [x["seconds"] for x in r["read"]],
                "rss_before_mb": last["rss_before_mb"], "rss_peak_during_mb": max(x["rss_peak_during_mb"] for x in r["read"]),
                "rss_growth_mb_max": max(x["rss_growth_mb"] for x in r["read"]), "resident_rows_max": last["resident_rows_max"],
                "resident_bytes_bound": last["resident_bytes_bound"],
                "rss_growth_within_bound": max(x["rss_growth_mb"] for x in r["read"]) * 2**20 <= last["resident_bytes_bound"] * 1.25 + (64 << 20),
            })
        by_name = {r["name"]: r for r in reads}
        read_summary = {
            "sequential_GB_per_s": by_name["sequential"]["GB_per_s"],
            "shuffled_GB_per_s": by_name["shuffled"]["GB_per_s"],
            "plain_copy_GB_per_s": by_name["shuffled"]["plain_copy_GB_per_s"],
            "shuffled_over_plain_copy": by_name["shuffled"]["ratio_to_plain_copy"],
            "shuffled_small_over_plain_copy": by_name["shuffled_small"]["ratio_to_plain_copy"],
            "sequential_over_plain_copy": by_name["sequential"]["ratio_to_plain_copy"],
            "plain_copy_one_thread_GB_per_s": by_name["shuffled"]["plain_copy_one_thread_GB_per_s"],
            "shuffled_over_plain_copy_one_thread": by_name["shuffled"]["ratio_to_plain_copy_one_thread"],
            "numpy_copy_GB_per_s": by_name["shuffled"]["numpy_copy_GB_per_s"],
            "shuffled_over_numpy_copy": by_name["shuffled"]["ratio_to_numpy_copy"],
            "memory_gather_GB_per_s": by_name["shuffled"]["memory_gather_GB_per_s"],
            "shuffled_over_memory_gather": by_name["shuffled"]["ratio_to_memory_gather"],
            "goal_ratio_min": 0.8,
            "met": by_name["shuffled"]["ratio_to_plain_copy"] >= 0.8,
            "read_repeats": args.read_repeats,
            "torch_threads": torch.get_num_threads(),
        }
        baseline = {"tensor_copy_GB_per_s": read_summary["plain_copy_GB_per_s"], "raw_file_read_GB_per_s": statistics.median(raw)}

        import transformers

        import universality

        results = {
            "benchmark": "activations",
            "machine": _machine(device),
            "device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "universality": universality.__version__,
            "git_commit": _git_commit(),
            "python": platform.python_version(),
            "model": {"family": args.family, "shape": ("small" if args.small else "pythia-70m-shape" if args.family == "gpt_neox" else "gpt2-small-shape"),
                      "d_model": adapter.d_model,
                      "n_layers": L, "dtype": args.dtype},
            "sites": sites,
            "contexts": sum(len(b) for b in batches),
            "context_len": args.seq,
            "batch_contexts": batch,
            "text_tokens": n_text,
            "store_rows": store.n_rows,
            "store_bytes": store_bytes,
            "shards": len(store.shards),
            "timings_s": timings,
            "best_s": best,
            "read_only": args.read_only,
            "tokens_per_s": {k: n_text / v for k, v in best.items()},
            "ratio_harvest_over_bare": best["harvest"] / best["bare_forward"] if not args.read_only else None,
            "ratio_capture_over_bare": best["capture_only"] / best["bare_forward"] if not args.read_only else None,
            "ratio_inline_writer_over_bare": best["harvest_inline_writer"] / best["bare_forward"] if not args.read_only else None,
            "load_average_1m_5m_15m": list(__import__("os").getloadavg()),
            "read": reads,
            "read_summary": read_summary,
            "read_baselines": baseline,
            "goals": {"harvest_over_bare_max": 1.2, "read_GB_per_s_min": 1.0, "shuffled_read_over_plain_copy_min": 0.8},
            "note": "bare_forward excludes tokenisation; harvest includes it (on a prefetch thread). "
                    "Reads are of a just-written store, so mostly from the page cache (an untimed pass first). "
                    "Plain copy: torch clone of the same bytes in the same batch shapes, interleaved with the reads, each batch "
                    "held until the next is made (as the read loop holds it). In-memory gather: the same batches taken from "
                    "memory in a random row order (one thread), the floor of any per-row shuffle.",
        }
        results["memory"] = mem.stop().as_dict()
        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"activations{'-read' if args.read_only else ''}-{results['machine']}.json"
        write_json(out, results)
        print(f"wrote {out}")
        if not args.read_only:
            print({k: round(v, 3) for k, v in best.items()}, "harvest/bare =", round(results["ratio_harvest_over_bare"], 3))
        print("baselines", {k: round(v, 2) for k, v in baseline.items()})
        for r in reads:
            print(f"read {r['name']} (buffer={r['shuffle_buffer']}): {r['GB_per_s']:.2f} GB/s, plain copy {r['plain_copy_GB_per_s']:.2f} GB/s, "
                  f"ratio {r['ratio_to_plain_copy']:.2f} (1-thread clone {r['plain_copy_one_thread_GB_per_s']:.2f}: {r['ratio_to_plain_copy_one_thread']:.2f}; "
                  f"numpy copy {r['numpy_copy_GB_per_s']:.2f}; in-memory gather {r['memory_gather_GB_per_s']:.2f}: "
                  f"{r['ratio_to_memory_gather']:.2f}), rss growth {r['rss_growth_mb_max']:.0f} MB")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
