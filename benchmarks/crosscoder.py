"""Crosscoder training throughput and memory against N separate dictionaries on the same rows.

For each N in ``--sources`` (default 2, 4, 8), every source ``d`` wide (``--d``), the same batches of
rows (planted features, then the N sources concatenated) are trained through the common trainer by

* ``crosscoder``: one BatchTopK crosscoder of ``--d-sae`` latents over the ``N * d`` joint input
  (``k = --k`` active latents per row);
* ``separate``: N BatchTopK SAEs, one per source, each ``d_sae / N`` latents with ``k / N`` active:
  **the same total width and the same total number of active latents** (the issue's comparison).
  The crosscoder has N times their parameters (each latent reads and writes every source), so its
  expected tokens/s ratio is about ``1/N``;
* ``separate_stacked``: the same N SAEs in one stacked module (``RunConfig(stack=True)``: one batched
  forward, one fused Adam), the fastest way this project trains them.

The settings alternate in one process, best of ``--repeats`` timed runs after an untimed warm-up;
tokens/s counts rows of the joint input (one row = one token for every source) over the training steps
after the first (the first also initialises the dictionaries; the final evaluation is not timed). Memory per setting:
``train_state_mib`` (weights, gradients and two Adam moments, float32: 4 x parameters x 4 bytes),
and on CUDA ``cuda_peak_mib`` (allocator peak of the run; reset before each). Ratios are crosscoder /
separate (and / separate_stacked). The machine's load average is recorded at the start and the end
(the CPU numbers of a shared machine are only comparable within one run). ``"memory"`` is the
process's :class:`PeakMemory`.

Writes ``benchmarks/results/crosscoder-<machine>.json``.

Usage: ``python benchmarks/crosscoder.py [--sources 2 4 8] [--d 64] [--d-sae 512] [--k 32] [--batch 1024]
[--steps 20] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from universality import synthetic as syn  # noqa: E402
from universality.io import write_json  # noqa: E402
from universality.sae import sae_config  # noqa: E402
from universality.sae.crosscoder_config import crosscoder_config  # noqa: E402
from universality.train import RunConfig, TrainConfig, Trainer  # noqa: E402

warnings.filterwarnings("ignore")
SETTINGS = ("crosscoder", "separate", "separate_stacked")


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return "gpu-" + torch.cuda.get_device_name(device).replace(" ", "-").lower()
    return "cpu-" + (platform.node() or "host")


def make_batches(n: int, d: int, batch: int, steps: int, device: torch.device) -> list[torch.Tensor]:
    """``steps`` batches of ``(batch, n * d)`` rows: n sources reading one planted dictionary, each through
    its own random rotation (shared features, different bases), on ``device``."""
    n_features = 4 * d
    probs = syn.feature_probabilities(n_features, 6.0)
    dicts = {f"s{i}": syn.planted_dictionary(n_features, d, seed=10 + i) for i in range(n)}
    src = syn.PlantedSource(dicts, probs, batch, seed=0)
    out = []
    for b, _ in zip(src, range(steps)):
        out.append(torch.cat([b[f"s{i}"] for i in range(n)], dim=1).to(device))
    return out


def _configs(setting: str, n: int, d: int, d_sae: int, k: int) -> tuple[list[TrainConfig], bool]:
    if setting == "crosscoder":
        return [TrainConfig(crosscoder_config((d,) * n, d_sae, k=k), site="joint", lr=1e-3)], False
    cfg = sae_config("batchtopk", d, d_sae // n, k=max(1, k // n))
    return [TrainConfig(cfg, site=f"s{i}", lr=1e-3) for i in range(n)], setting == "separate_stacked"


def _source(setting: str, batches: list[torch.Tensor], n: int, d: int) -> list[dict[str, torch.Tensor]]:
    if setting == "crosscoder":
        return [{"joint": x} for x in batches]
    return [{f"s{i}": x[:, i * d : (i + 1) * d].contiguous() for i in range(n)} for x in batches]


def run_once(setting: str, n: int, args, batches, device: torch.device) -> dict:
    """Train once; wall time of ``Trainer.fit`` and the memory it needed."""
    configs, stack = _configs(setting, n, args.d, args.d_sae, args.k)
    source = _source(setting, batches, n, args.d)
    # one step more than there are batches: the trainer asks for a batch after the last step, which stops the clock
    trainer = Trainer(configs, RunConfig(steps=len(source) + 1, device=str(device), stack=stack, autocast=False,
                                         init_rows=min(4096, args.batch)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    asked: list[float] = []

    def timed():
        for batch in source:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            asked.append(time.perf_counter())
            yield batch
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        asked.append(time.perf_counter())

    saes = trainer.fit(timed(), progress=False)
    wall = asked[-1] - asked[1]  # steps 1..S-1: step 0 also initialises the dictionaries
    params = sum(p.numel() for sae in saes.values() for p in sae.parameters())
    out = {"steps_timed": len(source) - 1, "wall_s": wall, "tokens_per_s": (len(source) - 1) * args.batch / wall,
           "params": params, "train_state_mib": 4 * params * 4 / 2**20, "dictionaries": len(saes)}
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def bench_n(n: int, args, device: torch.device) -> dict:
    batches = make_batches(n, args.d, args.batch, args.steps, device)
    warm = batches[: max(4, args.steps // 2)]
    for setting in SETTINGS:  # untimed warm-up
        run_once(setting, n, args, warm, device)
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for _ in range(args.repeats):  # alternate the settings, best of repeats
        for setting in SETTINGS:
            runs[setting].append(run_once(setting, n, args, batches, device))
    best = {s: max(r, key=lambda x: x["tokens_per_s"]) for s, r in runs.items()}
    res: dict = {"n_sources": n, "d_in_joint": n * args.d, "separate_width": args.d_sae // n,
                 "separate_k": max(1, args.k // n), **best}
    cc = best["crosscoder"]
    for other in ("separate", "separate_stacked"):
        o = best[other]
        ratio = {"tokens_per_s": cc["tokens_per_s"] / o["tokens_per_s"], "train_state": cc["train_state_mib"] / o["train_state_mib"]}
        if "cuda_peak_mib" in cc:
            ratio["cuda_peak"] = cc["cuda_peak_mib"] / o["cuda_peak_mib"]
        res[f"ratio_crosscoder_over_{other}"] = ratio
    res["all_tokens_per_s"] = {s: [r["tokens_per_s"] for r in v] for s, v in runs.items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--d", type=int, default=64, help="width of each source")
    ap.add_argument("--d-sae", type=int, default=512, help="crosscoder latents = total latents of the separate SAEs")
    ap.add_argument("--k", type=int, default=32, help="crosscoder k; each separate SAE gets k / N")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from bench_memory import PeakMemory

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    bad = [n for n in args.sources if n < 2 or args.d_sae % n or args.k < n]
    if bad:
        ap.error(f"every N needs N >= 2, d_sae divisible by N and k >= N: {bad}")
    mem = PeakMemory().start()
    load_start = list(os.getloadavg())
    t0 = time.perf_counter()
    results: dict = {
        "machine": _machine(device), "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_start_1m_5m_15m": load_start,
        "config": {"d_per_source": args.d, "d_sae": args.d_sae, "k": args.k, "batch": args.batch, "steps": args.steps,
                   "repeats": args.repeats, "arch": "batchtopk", "optimizer": "adam (trainer default)"},
        "comparison": "crosscoder (d_sae latents over N*d inputs, k active) vs N separate SAEs of d_sae/N latents "
                      "each with k/N active (same total width and active latents), unstacked and stacked",
        "results": [bench_n(n, args, device) for n in args.sources],
    }
    results["load_average_end_1m_5m_15m"] = list(os.getloadavg())
    results["wall_s"] = time.perf_counter() - t0
    results["memory"] = mem.stop().as_dict()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"crosscoder-{results['machine']}.json"
    write_json(out, results)
    print(out)
    for r in results["results"]:
        print(f"N={r['n_sources']}: tokens/s " + ", ".join(f"{s} {r[s]['tokens_per_s']:.0f}" for s in SETTINGS)
              + f"; crosscoder/separate {r['ratio_crosscoder_over_separate']}"
              + f"; crosscoder/stacked {r['ratio_crosscoder_over_separate_stacked']}")


if __name__ == "__main__":
    main()
