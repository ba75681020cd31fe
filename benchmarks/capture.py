"""Capture overhead: ``adapter.capture`` against the bare trunk forward run to the same depth.

For each model (random weights, no download): a Pythia-70m-shaped GPT-NeoX (d_model 512, 6 layers,
8 heads, d_mlp 2048, vocab 50304) and a GPT-2-small-shaped GPT-2 (768, 12 layers, 12 heads), or tiny
ones with ``--small``, on one batch of random tokens, it times, interleaved over repeats (order reversed every other repeat; median, min also kept):

* ``bare_full``: the trunk (embeddings + all blocks + final norm, no LM head) called directly,
* ``capture_all_resid``: ``capture`` of every residual site (resid_pre/mid/post of every layer),
* ``bare_depth{l}``: the trunk truncated to blocks ``0..l`` (the ModuleList sliced),
* ``capture_layer{l}``: ``capture`` of ``blocks.{l}.hook_resid_post`` only (stops after block l).

Goals: ``capture_all_resid / bare_full <= 1.10``; ``capture_layer{l} / bare_full`` close to the
share of depth ``(l+1)/n_layers`` (and ``capture_layer{l} / bare_depth{l}`` close to 1).
Writes ``benchmarks/results/capture-<machine>.json``.

Usage: ``python benchmarks/capture.py [--small] [--device cuda] [--dtype bfloat16] [--batch 8 --seq 256]``
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.base import HFAdapter, _get_module  # noqa: E402
from models.registry import family_spec  # noqa: E402
from universality.io import write_json  # noqa: E402


def _configs(small: bool) -> dict:
    from transformers import GPT2Config, GPTNeoXConfig

    if small:
        return {
            "gpt_neox-small": GPTNeoXConfig(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                            intermediate_size=256, max_position_embeddings=512, rotary_pct=0.25),
            "gpt2-small": GPT2Config(vocab_size=512, n_embd=64, n_layer=4, n_head=4, n_positions=512),
        }
    return {
        "pythia-70m-shape": GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                                          intermediate_size=2048, max_position_embeddings=2048, rotary_pct=0.25,
                                          use_parallel_residual=True),
        "gpt2-small-shape": GPT2Config(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    }


class _Trunk(nn.Module):
    """The base model (embeddings, blocks[:depth], final norm) with no LM head."""

    def __init__(self, adapter: HFAdapter, depth: int) -> None:
        super().__init__()
        parent_path, attr = adapter.spec.layers.rsplit(".", 1)
        self.base = _get_module(adapter.model, parent_path)
        self.attr = attr
        self.full = getattr(self.base, attr)
        self.sliced = nn.ModuleList(list(self.full)[:depth])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        setattr(self.base, self.attr, self.sliced)
        try:
            return self.base(input_ids=input_ids, use_cache=False).last_hidden_state
        finally:
            setattr(self.base, self.attr, self.full)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    _sync(device)
    return time.perf_counter() - t0


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        name = "cuda-" + torch.cuda.get_device_name(device)
    else:
        name = "cpu-" + (platform.node() or "host")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower()


def bench_model(label: str, config, device: torch.device, dtype: torch.dtype, batch: int, seq: int,
                repeats: int, warmup: int) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    adapter = HFAdapter(model, family_spec(config.model_type), name=label)
    n = adapter.n_layers
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    resid = [s for s in adapter.sites if "resid" in s]
    early = [0, n // 2 - 1] if n >= 4 else [0]
    cases = {
        "bare_full": lambda t=_Trunk(adapter, n): t(ids),
        "capture_all_resid": lambda: adapter.capture(ids, resid),
    }
    for layer in early:
        cases[f"bare_depth{layer}"] = lambda t=_Trunk(adapter, layer + 1): t(ids)
        cases[f"capture_layer{layer}"] = lambda l=layer: adapter.capture(ids, [f"blocks.{l}.hook_resid_post"])
    for _ in range(warmup):
        for fn in cases.values():
            _time(fn, device)
    times: dict[str, list[float]] = {k: [] for k in cases}
    keys = list(cases)
    for r in range(repeats):  # interleaved: each repeat runs every case once, order reversed every other
        for key in keys if r % 2 == 0 else keys[::-1]:
            times[key].append(_time(cases[key], device))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    ratios = {"capture_all_resid/bare_full": med["capture_all_resid"] / med["bare_full"]}
    for layer in early:
        ratios[f"capture_layer{layer}/bare_full"] = med[f"capture_layer{layer}"] / med["bare_full"]
        ratios[f"capture_layer{layer}/bare_depth{layer}"] = med[f"capture_layer{layer}"] / med[f"bare_depth{layer}"]
        ratios[f"depth_share_layer{layer}"] = (layer + 1) / n
    return {
        "family": adapter.family, "n_layers": n, "d_model": adapter.d_model, "n_resid_sites": len(resid),
        "tokens_per_batch": batch * seq, "median_s": med, "min_s": best, "all_s": times, "ratios": ratios,
        "ratio_all_resid_of_min": best["capture_all_resid"] / best["bare_full"],
        "goal_all_resid_le_1.10": ratios["capture_all_resid/bare_full"] <= 1.10,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny models for a quick run")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, at most 4)")
    parser.add_argument("--out", default=None, help="output JSON path")
    args = parser.parse_args(argv)
    from bench_memory import PeakMemory

    mem = PeakMemory().start()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    on_gpu = device.type == "cuda"
    batch = args.batch or (32 if on_gpu else 4)
    seq = args.seq or (1024 if on_gpu else 128)
    repeats = args.repeats or (20 if on_gpu else 7)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or max(1, min(4, torch.get_num_threads())))

    import transformers

    results = {
        "benchmark": "capture_overhead",
        "machine": _machine(device),
        "device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "transformers": transformers.__version__, "git_commit": _git_commit(),
        "dtype": args.dtype, "batch": batch, "seq": seq, "repeats": repeats, "warmup": args.warmup,
        "small": args.small, "cpu_threads": torch.get_num_threads(), "models": {},
    }
    for label, cfg in _configs(args.small).items():
        results["models"][label] = bench_model(label, cfg, device, dtype, batch, seq, repeats, args.warmup)
        r = results["models"][label]["ratios"]
        print(f"{label}: " + ", ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
    results["memory"] = mem.stop().as_dict()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"capture-{results['machine']}.json"
    write_json(out, results)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
