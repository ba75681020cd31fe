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
Writes ``benchmarks/results/train-<machine>.json``.

    python benchmarks/train.py --d-in 256 --d-sae 2048 --k 32 --batch 1024 --steps 100
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
from universality.sae import SAEConfig  # noqa: E402
from universality.train import RunConfig, TrainConfig, train_saes  # noqa: E402

warnings.filterwarnings("ignore")


def make_data(args, device):
    toy = syn.ToyConfig(d_in=args.d_in, n_features=args.n_features, mean_active=args.active, noise_std=0.05)
    D, src = syn.make_toy(toy, batch_size=args.batch, seed=1)
    batches = [src.batch(i)[1]["default"] for i in range(args.steps)]
    held = syn.PlantedSource(D, src.probs, 8192, seed=7, noise_std=0.05).batch(0)[1]["default"]
    scale = (args.d_in / batches[0].pow(2).sum(dim=1).mean()).sqrt()
    return [(b * scale).to(device) for b in batches], (held * scale).to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_ours(batches, held, args, device):
    cfg = TrainConfig(SAEConfig("topk", args.d_in, args.d_sae, k=args.k), lr=args.lr, name="ours")
    run = RunConfig(steps=len(batches), device=str(device), autocast=device.type == "cuda")
    sync(device)
    t = time.perf_counter()
    sae = train_saes(batches, cfg, run, progress=False)["ours"]
    sync(device)
    wall = time.perf_counter() - t
    with torch.no_grad():
        ev = explained_variance(held, sae(held))
    call = (f"train_saes(batches, TrainConfig(SAEConfig('topk', {args.d_in}, {args.d_sae}, k={args.k}), lr={args.lr}), "
            f"RunConfig(steps={len(batches)}, device='{device}', autocast={device.type == 'cuda'}))")
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


def run_sparsify(batches, held, args, device):
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(0)
    sae = SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k), device=device)
    lr = 5e-3 / (args.d_sae / 2**14) ** 0.5  # sparsify's default for its default optimiser (signum)
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    opt.train()
    sync(device)
    t = time.perf_counter()
    for x in batches:
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    sync(device)
    wall = time.perf_counter() - t
    opt.eval()
    with torch.no_grad():
        ev = explained_variance(held, sae(held).sae_out)
    call = (f"SparseCoder({args.d_in}, SparseCoderConfig(num_latents={args.d_sae}, k={args.k})); "
            f"ScheduleFreeWrapper(SignSGD(lr={lr:.3g}), momentum=0.95); per batch: set_decoder_norm_to_unit_norm(), "
            "sae(x).fvu.backward(), remove_gradient_parallel_to_decoder_directions(), opt.step()")
    return wall, ev, call


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--n-features", type=int, default=4096)
    p.add_argument("--active", type=float, default=24.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--machine", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in args.devices.split(",") if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    machine = args.machine or ("gpu-" + torch.cuda.get_device_name(0).replace(" ", "_") if torch.cuda.is_available() else f"cpu-{socket.gethostname()}")
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip() or None
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-time torch.optim import cost, outside every timing
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout.strip())
    results = []
    for device in devices:
        batches, held = make_data(args, device)
        tokens = len(batches) * args.batch
        rows = {}
        for name, fn in (("universality", run_ours), ("sae_lens", run_saelens), ("sparsify", run_sparsify)):
            try:
                wall, ev, call = fn(batches, held, args, device)
                rows[name] = {"wall_s": wall, "tokens_per_s": tokens / wall, "explained_variance": ev, "call": call}
            except Exception as exc:  # a missing optional package must not hide the other results
                rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(device, name, {k: v for k, v in rows[name].items() if k != "call"}, flush=True)
        ours = rows["universality"].get("tokens_per_s")
        for name in ("sae_lens", "sparsify"):
            if ours and "tokens_per_s" in rows[name]:
                rows[name]["ours_speed_ratio"] = ours / rows[name]["tokens_per_s"]
                rows[name]["ev_difference_ours_minus_theirs"] = rows["universality"]["explained_variance"] - rows[name]["explained_variance"]
        results.append({"device": str(device), "tokens": tokens, "libraries": rows})
    doc = {
        "benchmark": "topk-sae-training",
        "config": {"d_in": args.d_in, "d_sae": args.d_sae, "k": args.k, "batch": args.batch, "steps": args.steps,
                   "dtype": "float32 (bf16 autocast on CUDA)", "lr_adam": args.lr, "threads": args.threads,
                   "data": f"planted features: {args.n_features} features, {args.active} active, noise 0.05, E||x||^2 = d_in"},
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
                 "per-run setup (normalisation estimate, geometric median).",
    }
    out = Path(args.out) if args.out else root / "benchmarks" / "results" / f"train-{machine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
