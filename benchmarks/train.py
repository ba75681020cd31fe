"""TopK SAE training throughput and quality against SAELens and sparsify, side by side.

One TopK configuration (d_in, d_sae, k, batch, dtype, steps) is trained by
- this project: ``universality.train_saes`` over a list of batches (Adam, AuxK, normalisation on);
- SAELens: ``TopKTrainingSAE`` + ``SAETrainer`` fed by an iterator (its defaults otherwise);
- sparsify: ``SparseCoder`` forward/loss (FVU) driven over the same tensors with its default
  optimiser (SignSGD in a schedule-free wrapper, momentum 0.95, its default learning rate),
  decoder-gradient projection and unit-norm decoder, as its trainer does.

All three see exactly the same tensors (planted-feature data scaled to E||x||^2 = d_in). Reported:
tokens per second per dictionary (wall time of the whole training call, single dictionary) and
explained variance (``universality.eval.metrics``: 1 - SSE / total variance) on 8192 held-out rows.
With ``--n-stack n`` it also trains ``n`` dictionaries of the same configuration (seeds) from the
same batches: this project stacked (``RunConfig(stack=True)``: one batched module, one fused Adam)
and unstacked (n separate modules), sparsify with ``n`` coders stepped in turn on each batch (as its
trainer steps its hookpoints), and SAELens one at a time (its single-dictionary rate). Tokens per
second are per dictionary (``n * tokens / wall``).

On CUDA it reports the useful-FLOP fraction of the GPU's bf16 dense peak (see :func:`useful_flops`)
and the peak GPU memory of each run; every run is preceded by a short untimed warm-up run.
Writes ``benchmarks/results/train-<machine>.json``.

    python benchmarks/train.py --d-in 256 --d-sae 2048 --k 32 --batch 1024 --steps 100 --n-stack 4
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from universality import synthetic as syn  # noqa: E402
from universality.eval.metrics import explained_variance  # noqa: E402
from universality.sae import sae_config  # noqa: E402
from universality.train import RunConfig, TrainConfig, train_saes  # noqa: E402
from universality.io import atomic_write_text

warnings.filterwarnings("ignore")


def make_data(args, device):
    toy = syn.ToyConfig(d_in=args.d_in, n_features=args.n_features, mean_active=args.active, noise_std=0.05)
    D, src = syn.make_toy(toy, batch_size=args.batch, seed=1)
    n_unique = min(args.steps, args.unique_batches or args.steps)
    unique = [src.batch(i)[1]["default"] for i in range(n_unique)]
    held = syn.PlantedSource(D, src.probs, 8192, seed=7, noise_std=0.05).batch(0)[1]["default"]
    scale = (args.d_in / unique[0].pow(2).sum(dim=1).mean()).sqrt()
    unique = [(b * scale).to(device) for b in unique]
    return [unique[i % n_unique] for i in range(args.steps)], (held * scale).to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


#: bf16 dense tensor-core peak (FLOP/s) by GPU name (NVIDIA data sheets, dense, no sparsity).
BF16_PEAK = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("A10", 125e12), ("RTX 4090", 165e12))


def bf16_peak(device) -> float | None:
    """The bf16 dense peak of the GPU (None on the CPU or for a GPU not in :data:`BF16_PEAK`)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK if k in name), None)


def useful_flops(d_in: int, d_sae: int, k: int) -> int:
    """Useful FLOPs of one TopK training step per token and dictionary.

    .. math::
        6 d_{in} d_{sae} + 6 k d_{in}

    The encoder counted as dense matmuls (forward ``2 d_in d_sae``, weight gradient and input
    gradient ``2 d_in d_sae`` each: what a dense-encoder step such as SAELens' costs, and what an
    AuxK step with dead latents needs), the decoder as ``k``-sparse (forward, row gradient and value
    gradient, ``2 k d_in`` each). Elementwise work, top-k selection and Adam are not counted.
    """
    return 6 * d_in * d_sae + 6 * k * d_in


def peak_mem(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_mem(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_ours(batches, held, args, device, n=1, stack=False, compile=False):
    cfgs = [TrainConfig(sae_config("topk", args.d_in, args.d_sae, k=args.k), lr=args.lr, seed=i, name=f"ours{i}") for i in range(n)]
    run = RunConfig(steps=len(batches), device=str(device), autocast=device.type == "cuda", stack=stack, compile=compile)
    sync(device)
    t = time.perf_counter()
    saes = train_saes(batches, cfgs, run, progress=False)
    sync(device)
    wall = time.perf_counter() - t
    with torch.no_grad():
        ev = sum(explained_variance(held, sae(held)) for sae in saes.values()) / n
    call = (f"train_saes(batches, [TrainConfig(sae_config('topk', {args.d_in}, {args.d_sae}, k={args.k}), lr={args.lr}, seed=i) "
            f"for i in range({n})], RunConfig(steps={len(batches)}, device='{device}', autocast={device.type == 'cuda'}, "
            f"stack={stack}, compile={compile}))")
    return wall, ev, call


def run_saelens(batches, held, args, device):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=str(device)))
    cfg = SAETrainerConfig(total_training_samples=len(batches) * args.batch, train_batch_size_samples=args.batch,
                           lr=args.lr, lr_end=args.lr, device=str(device), autocast=device.type == "cuda")
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(batches))
    sync(device)
    t = time.perf_counter()
    trainer.fit()
    sync(device)
    wall = time.perf_counter() - t
    with torch.no_grad():
        ev = explained_variance(held, sae(held))
    call = (f"SAETrainer(cfg=SAETrainerConfig(total_training_samples={len(batches) * args.batch}, "
            f"train_batch_size_samples={args.batch}, lr={args.lr}, lr_end={args.lr}, device='{device}', autocast={device.type == 'cuda'}), "
            f"sae=TopKTrainingSAE(TopKTrainingSAEConfig(d_in={args.d_in}, d_sae={args.d_sae}, k={args.k})), "
            f"data_provider=iter(batches)).fit()")
    return wall, ev, call


def run_sparsify(batches, held, args, device, n=1):
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(0)
    saes = [SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k), device=device) for _ in range(n)]
    lr = 5e-3 / (args.d_sae / 2**14) ** 0.5  # sparsify's default for its default optimiser (signum)
    opts = [ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95) for sae in saes]
    for opt in opts:
        opt.train()
    sync(device)
    t = time.perf_counter()
    for x in batches:
        for sae, opt in zip(saes, opts):  # sparsify's trainer steps its hookpoints' coders in turn
            sae.set_decoder_norm_to_unit_norm()
            out = sae(x)
            out.fvu.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
    sync(device)
    wall = time.perf_counter() - t
    for opt in opts:
        opt.eval()
    with torch.no_grad():
        ev = sum(explained_variance(held, sae(held).sae_out) for sae in saes) / n
    call = (f"{n} x SparseCoder({args.d_in}, SparseCoderConfig(num_latents={args.d_sae}, k={args.k})); "
            f"ScheduleFreeWrapper(SignSGD(lr={lr:.3g}), momentum=0.95); per batch and coder: set_decoder_norm_to_unit_norm(), "
            "sae(x).fvu.backward(), remove_gradient_parallel_to_decoder_directions(), opt.step()")
    return wall, ev, call


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _timed_row(fn, batches, held, args, device, tokens, warm, previous=None, **kw):
    """One timed run (after an untimed warm-up on CUDA); with ``previous`` keeps the faster of the two."""
    if previous is not None and "error" in previous:
        return previous
    try:
        if device.type == "cuda" and warm:  # untimed warm-up (cuBLAS handles, allocator, kernels)
            fn(batches[:3], held, args, device, **kw)
        reset_mem(device)
        wall, ev, call = fn(batches, held, args, device, **kw)
        n = kw.get("n", 1)
        walls = (previous or {}).get("all_wall_s", []) + [wall]
        row = {"wall_s": min(walls), "all_wall_s": walls, "tokens_per_s": n * tokens / min(walls), "explained_variance": ev,
               "call": call, "dictionaries": n, "peak_gpu_mem_mib": peak_mem(device)}
    except Exception as exc:  # a missing optional package must not hide the other results
        row = {"error": f"{type(exc).__name__}: {exc}"}
    return row


def run(args) -> dict:
    """Run the benchmark for parsed ``args``; returns the result document (does not write it)."""
    torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in args.devices.split(",") if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    machine = args.machine or ("gpu-" + torch.cuda.get_device_name(0).replace(" ", "_") if torch.cuda.is_available() else f"cpu-{socket.gethostname()}")
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip() or None
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-time torch.optim import cost, outside every timing
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout.strip())
    results = []
    flops = useful_flops(args.d_in, args.d_sae, args.k)
    for device in devices:
        batches, held = make_data(args, device)
        tokens = len(batches) * args.batch
        rows = {}
        plan = [("universality", run_ours, {}), ("sae_lens", run_saelens, {}), ("sparsify", run_sparsify, {})]
        if args.n_stack > 1:
            n = args.n_stack
            plan += [(f"universality_stacked_x{n}", run_ours, {"n": n, "stack": True}),
                     (f"universality_separate_x{n}", run_ours, {"n": n, "stack": False}),
                     (f"sparsify_x{n}", run_sparsify, {"n": n})]
            if args.compile:
                plan.append((f"universality_stacked_compiled_x{n}", run_ours, {"n": n, "stack": True, "compile": True}))
        for r in range(args.repeats):  # interleaved repeats, order reversed every other one; the fastest is kept
            for name, fn, kw in (plan if r % 2 == 0 else plan[::-1]):
                rows[name] = _timed_row(fn, batches, held, args, device, tokens, warm=r == 0, previous=rows.get(name), **kw)
                print(device, name, {k: v for k, v in rows[name].items() if k not in ("call", "all_wall_s")}, flush=True)
        rows = {name: rows[name] for name, _, _ in plan}
        ours = rows["universality"].get("tokens_per_s")
        for name in ("sae_lens", "sparsify"):
            if ours and "tokens_per_s" in rows[name]:
                rows[name]["ours_speed_ratio"] = ours / rows[name]["tokens_per_s"]
                rows[name]["ev_difference_ours_minus_theirs"] = rows["universality"]["explained_variance"] - rows[name]["explained_variance"]
        peak = bf16_peak(device)
        for name, row in rows.items():
            if "tokens_per_s" in row and name.startswith("universality"):
                row["useful_flops_per_s"] = row["tokens_per_s"] * flops
                row["fraction_of_bf16_peak"] = row["useful_flops_per_s"] / peak if peak else None
        results.append({"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "tokens": tokens, "bf16_peak_flops": peak, "libraries": rows})
    return {
        "benchmark": "topk-sae-training",
        "config": {"d_in": args.d_in, "d_sae": args.d_sae, "k": args.k, "batch": args.batch, "steps": args.steps,
                   "n_stack": args.n_stack, "repeats": args.repeats, "unique_batches": args.unique_batches or args.steps, "dtype": "float32 (bf16 autocast on CUDA)", "lr_adam": args.lr, "threads": args.threads,
                   "data": f"planted features: {args.n_features} features, {args.active} active, noise 0.05, E||x||^2 = d_in"},
        "useful_flops_per_token_per_dictionary": flops,
        "useful_flops_formula": "6*d_in*d_sae + 6*k*d_in (dense-encoder forward, weight and input gradient; k-sparse decoder forward and both gradients)",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "sae_lens": version("sae-lens"),
                     "sparsify": version("eai-sparsify"), "universality": version("universality")},
        "git_commit": commit,
        "git_dirty": dirty,
        "machine": {"name": machine, "platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "results": results,
        "notes": "Each library keeps its own defaults beyond the shared configuration: SAELens TopK rescales activations by "
                 "decoder norm and initialises decoder norms to 0.1; sparsify uses SignSGD (schedule-free) and no AuxK by "
                 "default; this project uses Adam, AuxK and unit-norm decoder rows. Wall time includes each library's "
                 "per-run setup (normalisation estimate, geometric median). SAELens trains one dictionary per trainer, so "
                 "its per-dictionary rate for n dictionaries one at a time is its single-dictionary rate.",
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--n-features", type=int, default=4096)
    p.add_argument("--active", type=float, default=24.0)
    p.add_argument("--n-stack", type=int, default=1, help="also train this many dictionaries stacked / separately")
    p.add_argument("--compile", action="store_true", help="also time the stacked trainer with torch.compile")
    p.add_argument("--unique-batches", type=int, default=0,
                   help="draw this many distinct batches and cycle them (0: one per step); drawing planted data is slow at real sizes")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per library (interleaved; the fastest is kept)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--machine", default=None)
    p.add_argument("--out", default=None)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    doc = run(args)
    root = Path(__file__).resolve().parents[1]
    out = Path(args.out) if args.out else root / "benchmarks" / "results" / f"train-{doc['machine']['name']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    print("wrote", out)
    return doc


if __name__ == "__main__":
    main()
