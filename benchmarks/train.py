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
With ``--eval-every s`` (default 5) each single-dictionary run also records explained variance on
the held-out rows every ``s`` steps with its clock paused, and the report gives the wall time and
tokens each library needs to reach sparsify's final explained variance and the ``--targets``
(``time_to_target``), and draws the curves (PNG next to the JSON).
With ``--zoo PRESET`` the data are a zoo model's site instead (``benchmarks/zoo_site.py``: the model
trains on the shipped corpus first; ``d_in`` is its width) and every curve point also records CE loss
recovered on held-out contexts, which ``--ce-targets`` turn into targets.
Writes ``benchmarks/results/train-<machine>.json`` (and ``.png``).

    python benchmarks/train.py --d-in 256 --d-sae 2048 --k 32 --batch 1024 --steps 100 --n-stack 4
    python benchmarks/train.py --zoo tiny_pythia --d-sae 1024 --k 16 --steps 400 --eval-every 20
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
from universality.train import RunConfig, TrainConfig, Trainer  # noqa: E402
from universality.train.trainer import as_site_batch  # noqa: E402
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


class Clock:
    """Wall clock of one training run that can be paused (around the evaluations of a curve)."""

    def __init__(self, device) -> None:
        self.device = device
        self.paused_s = 0.0
        self.t0 = None

    def start(self) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since :meth:`start`, pauses excluded (synchronised on CUDA)."""
        sync(self.device)
        return time.perf_counter() - self.t0 - self.paused_s

    def pause_for(self, fn):
        """Run ``fn()`` with the clock stopped; returns its result."""
        sync(self.device)
        t = time.perf_counter()
        try:
            return fn()
        finally:
            sync(self.device)
            self.paused_s += time.perf_counter() - t


class Curve:
    """Explained variance on the held-out rows every ``every`` steps, with the clock paused around each
    evaluation (so the wall times are training time only). Points: ``step``, ``tokens``, ``wall_s``,
    ``explained_variance``."""

    def __init__(self, held, every: int, batch: int, clock: Clock, probe=None) -> None:
        self.held, self.every, self.batch, self.clock, self.probe = held, every, batch, clock, probe
        self.points: list[dict] = []

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def record(self, step: int, reconstruct) -> None:
        """Evaluate ``reconstruct(held)`` after ``step`` steps (clock paused)."""
        wall = self.clock.elapsed()

        def ev():
            with torch.no_grad():
                return float(explained_variance(self.held, reconstruct(self.held)))

        self.finish(step, wall, self.clock.pause_for(ev), reconstruct)

    def finish(self, step: int, wall: float, ev: float, reconstruct) -> None:
        """Append the point after ``step`` steps (after the last one: ``reconstruct`` is the trained dictionary
        as its library returns it); with a probe, CE loss recovered on a zoo site, clock paused."""
        point = {"step": step, "tokens": step * self.batch, "wall_s": wall, "explained_variance": float(ev)}
        if self.probe is not None:
            point["ce_loss_recovered"] = self.clock.pause_for(lambda: self.probe(reconstruct))
        self.points.append(point)

    def source(self, batches, reconstruct):
        """``batches`` as an iterator that records a point before each due step (``reconstruct()`` gives
        the reconstruction function of the dictionary as it is then)."""
        for i, x in enumerate(batches):
            if self.due(i):
                self.record(i, reconstruct())
            yield x


def run_ours(batches, held, args, device, n=1, stack=False, compile=False, curve=None, remedy="auto"):
    cfgs = [TrainConfig(sae_config("topk", args.d_in, args.d_sae, k=args.k), lr=args.lr, seed=i, name=f"ours{i}", remedy=remedy)
            for i in range(n)]
    run = RunConfig(steps=len(batches), device=str(device), autocast=device.type == "cuda", stack=stack, compile=compile)
    clock = curve.clock if curve else Clock(device)
    clock.start()
    trainer = Trainer(cfgs, run)  # what train_saes(batches, cfgs, run) does, with a handle on the live dictionary
    if curve:
        trainer.initialise(as_site_batch(batches[0]))  # as fit() does on its first batch: the curve's step 0 is the real start
        def live():  # the trainer's dictionary works on normalised rows; explained variance is scale-free
            sae, scale = trainer.saes["ours0"], trainer.scales.get("default", 1.0)
            return lambda h: sae(h * scale) / scale
        source = curve.source(batches, live)
    else:
        source = batches
    saes = trainer.fit(source, progress=False)
    wall = clock.elapsed()
    with torch.no_grad():
        ev = sum(explained_variance(held, sae(held)) for sae in saes.values()) / n
    if curve:
        curve.finish(len(batches), wall, ev, saes["ours0"])
    call = (f"train_saes(batches, [TrainConfig(sae_config('topk', {args.d_in}, {args.d_sae}, k={args.k}), lr={args.lr}, seed=i"
            f"{'' if remedy == 'auto' else ', remedy=' + repr(remedy)}) "
            f"for i in range({n})], RunConfig(steps={len(batches)}, device='{device}', autocast={device.type == 'cuda'}, "
            f"stack={stack}, compile={compile}))  # Adam(betas=(0.9, 0.999), eps=1e-8), "
            f"{'AuxK' if remedy == 'auto' else 'remedy=' + repr(remedy)}, unit-norm decoder rows")
    return wall, ev, call


def saelens_lr(args) -> float:
    """SAELens' learning rate: ``--lr-saelens``, else its own default (``SAETrainerConfig.lr``, 3e-4)."""
    if args.lr_saelens:
        return args.lr_saelens
    from sae_lens.config import SAETrainerConfig
    import dataclasses
    return next(f.default for f in dataclasses.fields(SAETrainerConfig) if f.name == "lr")


def run_saelens(batches, held, args, device, curve=None):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    lr = saelens_lr(args)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=str(device)))
    cfg = SAETrainerConfig(total_training_samples=len(batches) * args.batch, train_batch_size_samples=args.batch,
                           lr=lr, lr_end=lr, device=str(device), autocast=device.type == "cuda")
    clock = curve.clock if curve else Clock(device)
    source = curve.source(batches, lambda: sae) if curve else iter(batches)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=source)
    clock.start()
    trainer.fit()
    wall = clock.elapsed()
    with torch.no_grad():
        ev = explained_variance(held, sae(held))
    if curve:
        curve.finish(len(batches), wall, ev, sae)
    call = (f"SAETrainer(cfg=SAETrainerConfig(total_training_samples={len(batches) * args.batch}, "
            f"train_batch_size_samples={args.batch}, lr={lr}, lr_end={lr}, device='{device}', autocast={device.type == 'cuda'}), "
            f"sae=TopKTrainingSAE(TopKTrainingSAEConfig(d_in={args.d_in}, d_sae={args.d_sae}, k={args.k})), "
            f"data_provider=iter(batches)).fit()  # its default optimiser: Adam(betas=(0.9, 0.999))")
    return wall, ev, call


def run_sparsify(batches, held, args, device, n=1, curve=None):
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(0)
    saes = [SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k), device=device) for _ in range(n)]
    lr = 5e-3 / (args.d_sae / 2**14) ** 0.5  # sparsify's default for its default optimiser (signum)
    opts = [ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95) for sae in saes]
    for opt in opts:
        opt.train()

    def evaluated(h):  # schedule-free: evaluate at the averaged weights (opt.eval()), then back to training
        opts[0].eval()
        try:
            return saes[0](h).sae_out
        finally:
            opts[0].train()

    clock = curve.clock if curve else Clock(device)
    clock.start()
    for step, x in enumerate(batches):
        if curve and curve.due(step):
            curve.record(step, evaluated)
        for sae, opt in zip(saes, opts):  # sparsify's trainer steps its hookpoints' coders in turn
            sae.set_decoder_norm_to_unit_norm()
            out = sae(x)
            out.fvu.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
    wall = clock.elapsed()
    for opt in opts:
        opt.eval()
    with torch.no_grad():
        ev = sum(explained_variance(held, sae(held).sae_out) for sae in saes) / n
    if curve:
        curve.finish(len(batches), wall, ev, lambda h: saes[0](h).sae_out)
    call = (f"{n} x SparseCoder({args.d_in}, SparseCoderConfig(num_latents={args.d_sae}, k={args.k})); "
            f"ScheduleFreeWrapper(SignSGD(lr={lr:.3g}), momentum=0.95); per batch and coder: set_decoder_norm_to_unit_norm(), "
            "sae(x).fvu.backward(), remove_gradient_parallel_to_decoder_directions(), opt.step()")
    return wall, ev, call


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _timed_row(fn, batches, held, args, device, tokens, warm, previous=None, curves=False, **kw):
    """One timed run (after an untimed warm-up on CUDA); with ``previous`` keeps the faster of the two.
    With ``curves`` the run records explained variance against wall time and tokens (:class:`Curve`)."""
    if previous is not None and "error" in previous:
        return previous
    try:
        if device.type == "cuda" and warm:  # untimed warm-up (cuBLAS handles, allocator, kernels)
            fn(batches[:3], held, args, device, **kw)
        reset_mem(device)
        curve = (Curve(held, args.eval_every, args.batch, Clock(device), getattr(args, "probe", None))
                 if curves and args.eval_every > 0 else None)
        wall, ev, call = fn(batches, held, args, device, **({**kw, "curve": curve} if curve else kw))
        n = kw.get("n", 1)
        walls = (previous or {}).get("all_wall_s", []) + [wall]
        row = {"wall_s": min(walls), "all_wall_s": walls, "tokens_per_s": n * tokens / min(walls), "explained_variance": float(ev),
               "call": call, "dictionaries": n, "peak_gpu_mem_mib": peak_mem(device)}
        if previous is not None and wall > min(previous["all_wall_s"]):  # the faster run's quality, curve and call
            row.update({k: previous[k] for k in ("explained_variance", "call", "curve", "eval_time_excluded_s") if k in previous})
        elif curve:
            row["curve"] = curve.points
            row["eval_time_excluded_s"] = curve.clock.paused_s
    except Exception as exc:  # a missing optional package must not hide the other results
        row = {"error": f"{type(exc).__name__}: {exc}"}
    return row


def time_to(curve: list[dict], target: float, key: str = "explained_variance") -> dict:
    """When ``curve`` reaches ``target`` in ``key`` (explained variance, or CE loss recovered on a zoo site)
    for good: the first evaluated point from which every later point is at or above it (``{wall_s, tokens,
    step}``; a curve that starts above the target, dips and comes back counts from its return), plus
    ``first`` (the first point at or above it); nulls with a note when the last point is below it."""
    kept = None
    for i in range(len(curve) - 1, -1, -1):
        if curve[i][key] < target:
            break
        kept = curve[i]
    first = next((pt for pt in curve if pt[key] >= target), None)
    if kept is None:
        best = max(pt[key] for pt in curve)
        what = key.replace("_", " ")
        return {"wall_s": None, "tokens": None, "step": None,
                "first": None if first is None else {"wall_s": first["wall_s"], "tokens": first["tokens"], "step": first["step"]},
                "note": f"not reached by the end of the run ({curve[-1]['step']} steps; best {what} {best:.4f}, "
                        f"final {curve[-1][key]:.4f})"}
    return {"wall_s": kept["wall_s"], "tokens": kept["tokens"], "step": kept["step"],
            "first": {"wall_s": first["wall_s"], "tokens": first["tokens"], "step": first["step"]}}


def time_to_target(rows: dict, targets: list[float], anchor: str = "sparsify", ce_targets: list[float] = ()) -> dict | None:
    """Wall time and tokens each library needs to reach the anchor's final explained variance, each fixed
    explained-variance target and (when the curves carry it) each CE-loss-recovered target, for good
    (:func:`time_to`; resolution ``eval_every`` steps)."""
    curves = {name: row["curve"] for name, row in rows.items() if row.get("curve")}
    if not curves:
        return None
    goals = {f"{t:g}": ("explained_variance", t) for t in targets}
    anchor_ev = curves[anchor][-1]["explained_variance"] if anchor in curves else None
    if anchor_ev is not None:
        goals = {f"anchor ({anchor} final, {anchor_ev:.4f})": ("explained_variance", anchor_ev), **goals}
    if all("ce_loss_recovered" in c[-1] for c in curves.values()):
        goals.update({f"CE loss recovered {t:g}": ("ce_loss_recovered", t) for t in ce_targets})
    table = {label: {name: time_to(c, t, key) for name, c in curves.items()} for label, (key, t) in goals.items()}
    out = {"anchor": anchor, "anchor_final_explained_variance": anchor_ev, "targets": {k: t for k, (_, t) in goals.items()},
           "target_metric": {k: key for k, (key, _) in goals.items()}, "table": table}
    if anchor_ev is not None:
        label = next(iter(goals))
        ours, theirs = table[label].get("universality", {}).get("wall_s"), table[label][anchor]["wall_s"]
        out["ours_over_anchor_time_to_anchor_final_ev"] = ours / theirs if ours and theirs else None
    return out


def plot_curves(rows: dict, ttt: dict | None, path: Path, title: str) -> Path | None:
    """Explained variance against wall time and against tokens, one line per library (PNG)."""
    curves = {name: row["curve"] for name, row in rows.items() if row.get("curve")}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_ce = all("ce_loss_recovered" in c[-1] for c in curves.values())
    fig, axes = plt.subplots(1, 3 if with_ce else 2, figsize=(16 if with_ce else 11, 4.2))
    for name, c in curves.items():
        for ax, key in zip(axes, ("wall_s", "tokens")):
            ax.plot([p[key] for p in c], [p["explained_variance"] for p in c], marker="o", ms=3, label=name)
        if with_ce:
            axes[2].plot([p["wall_s"] for p in c], [p["ce_loss_recovered"] for p in c], marker="o", ms=3, label=name)
    metric = (ttt or {}).get("target_metric", {})
    for label, t in (ttt or {}).get("targets", {}).items():
        on = [axes[2]] if metric.get(label) == "ce_loss_recovered" else axes[:2]
        for ax in on:
            ax.axhline(t, color="grey", lw=0.8, ls=":" if label.startswith("anchor") else "--")
    for ax in axes:
        ax.grid(alpha=0.3)
    if with_ce:
        axes[2].set_xlabel("training wall time (s, evaluation excluded)")
        axes[2].set_ylabel("CE loss recovered (zero ablation)")
    axes[0].set_xlabel("training wall time (s, evaluation excluded)")
    axes[1].set_xlabel("tokens")
    axes[0].set_ylabel("explained variance (held-out rows)")
    axes[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    zoo_info = None
    if args.zoo:  # a zoo model's site, built once on the CPU (the model is tiny; rows move to each device)
        from zoo_site import zoo_site_data

        zoo_batches, zoo_held, args.probe, zoo_info = zoo_site_data(args.zoo, args.zoo_site, args.steps * args.batch,
                                                                    args.batch, docs=args.zoo_docs)
        args.d_in = zoo_info["d_in"]
    flops = useful_flops(args.d_in, args.d_sae, args.k)
    for device in devices:
        if zoo_info:
            batches, held = [b.to(device) for b in zoo_batches], zoo_held.to(device)
        else:
            batches, held = make_data(args, device)
        tokens = len(batches) * args.batch
        rows = {}
        plan = [("universality", run_ours, {}), ("sae_lens", run_saelens, {}), ("sparsify", run_sparsify, {})]
        if args.without_auxk:  # like for like with sparsify's default (auxk_alpha = 0): no dead-latent remedy
            plan.append(("universality_no_auxk", run_ours, {"remedy": "none"}))
        if args.n_stack > 1:
            n = args.n_stack
            plan += [(f"universality_stacked_x{n}", run_ours, {"n": n, "stack": True}),
                     (f"universality_separate_x{n}", run_ours, {"n": n, "stack": False}),
                     (f"sparsify_x{n}", run_sparsify, {"n": n})]
            if args.compile:
                plan.append((f"universality_stacked_compiled_x{n}", run_ours, {"n": n, "stack": True, "compile": True}))
        for r in range(args.repeats):  # interleaved repeats, order reversed every other one; the fastest is kept
            for name, fn, kw in (plan if r % 2 == 0 else plan[::-1]):
                rows[name] = _timed_row(fn, batches, held, args, device, tokens, warm=r == 0, previous=rows.get(name),
                                        curves=name in ("universality", "sae_lens", "sparsify", "universality_no_auxk"), **kw)
                print(device, name, {k: v for k, v in rows[name].items() if k not in ("call", "all_wall_s", "curve")}, flush=True)
        rows = {name: rows[name] for name, _, _ in plan}
        ours = rows["universality"].get("tokens_per_s")
        for name in ("sae_lens", "sparsify"):
            if ours and "tokens_per_s" in rows[name]:
                rows[name]["ours_speed_ratio"] = ours / rows[name]["tokens_per_s"]
                rows[name]["ev_difference_ours_minus_theirs"] = rows["universality"]["explained_variance"] - rows[name]["explained_variance"]
        if "universality_no_auxk" in rows and "tokens_per_s" in rows["sparsify"]:
            rows["sparsify"]["ours_no_auxk_speed_ratio"] = rows["universality_no_auxk"]["tokens_per_s"] / rows["sparsify"]["tokens_per_s"]
        peak = bf16_peak(device)
        for name, row in rows.items():
            if "tokens_per_s" in row and name.startswith("universality"):
                row["useful_flops_per_s"] = row["tokens_per_s"] * flops
                row["fraction_of_bf16_peak"] = row["useful_flops_per_s"] / peak if peak else None
        ttt = time_to_target(rows, args.targets, ce_targets=args.ce_targets if args.zoo else ())
        if ttt:
            for label, per in ttt["table"].items():
                print(device, "time to", label, {k: (v["wall_s"], v["tokens"]) for k, v in per.items()}, flush=True)
        results.append({"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "tokens": tokens, "bf16_peak_flops": peak, "libraries": rows, "time_to_target": ttt})
    return {
        "benchmark": "topk-sae-training",
        "config": {"d_in": args.d_in, "d_sae": args.d_sae, "k": args.k, "batch": args.batch, "steps": args.steps,
                   "n_stack": args.n_stack, "repeats": args.repeats, "unique_batches": args.unique_batches or args.steps, "dtype": "float32 (bf16 autocast on CUDA)", "lr_adam": args.lr, "threads": args.threads,
                   "data": (f"zoo site: {zoo_info['preset']} {zoo_info['site']}, E||x||^2 = d_in" if zoo_info else
                            f"planted features: {args.n_features} features, {args.active} active, noise 0.05, E||x||^2 = d_in"),
                   "zoo": zoo_info, "ce_targets": args.ce_targets if zoo_info else None,
                   "lr_saelens": saelens_lr(args) if version("sae-lens") else None, "eval_every": args.eval_every,
                   "targets": args.targets, "held_out_rows": 8192},
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
                 "its per-dictionary rate for n dictionaries one at a time is its single-dictionary rate. "
                 "Curves (single dictionary, each library): explained variance on the 8192 held-out rows before every "
                 "eval_every-th step and after the last, with the wall clock paused around each evaluation (also for "
                 "wall_s and tokens_per_s of those rows; eval_time_excluded_s says how much was paused). Time to target: "
                 "the first evaluated point from which the curve stays at or above the target (resolution eval_every "
                 "steps; 'first' gives the first point at or above it), null with a note when the run ends below it; the anchor target is sparsify's final explained variance in the same run. Each library "
                 "uses its own optimiser and learning rate (exact calls in 'call').",
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
    p.add_argument("--lr-saelens", type=float, default=None, help="SAELens' learning rate (default: its own default, 3e-4)")
    p.add_argument("--eval-every", type=int, default=5, help="evaluate on the held-out rows every this many steps (0: no curves)")
    p.add_argument("--targets", type=float, nargs="*", default=[0.5, 0.7, 0.8], help="explained-variance targets")
    p.add_argument("--figure", default=None, help="PNG of the curves (default: next to the JSON, same name)")
    p.add_argument("--zoo", default=None, help="train on a zoo preset's site instead of planted data (e.g. tiny_pythia; "
                                               "benchmarks/zoo_site.py) and add CE-loss-recovered targets")
    p.add_argument("--zoo-site", default="blocks.1.hook_resid_post", help="the site of --zoo")
    p.add_argument("--zoo-docs", type=int, default=60, help="Shakespeare documents the --zoo model trains and is read on")
    p.add_argument("--without-auxk", action=argparse.BooleanOptionalAction, default=True,
                   help="also time this project with remedy='none' (no AuxK), like for like with sparsify's default auxk_alpha=0")
    p.add_argument("--ce-targets", type=float, nargs="*", default=[0.9], help="CE-loss-recovered targets (with --zoo)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    from bench_memory import PeakMemory

    mem = PeakMemory().start()
    doc = run(args)
    doc["memory"] = mem.stop().as_dict()
    root = Path(__file__).resolve().parents[1]
    out = Path(args.out) if args.out else root / "benchmarks" / "results" / f"train-{doc['machine']['name']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Path(args.figure) if args.figure else out.with_suffix(".png")
    c = doc["config"]
    for res in doc["results"]:
        path = fig if len(doc["results"]) == 1 else fig.with_name(f"{fig.stem}-{res['device'].replace(':', '')}{fig.suffix}")
        title = (f"TopK d_in {c['d_in']}, d_sae {c['d_sae']}, k {c['k']}, batch {c['batch']} on {res['device_name']} "
                 + (f"[{c['data']}] " if c.get("zoo") else "")
                 + f"({c['threads']} thread(s)); dashed: targets, dotted: sparsify's final EV")
        drawn = plot_curves(res["libraries"], res.get("time_to_target"), path, title)
        res["figure"] = os.path.relpath(drawn, out.parent) if drawn else None
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    print("wrote", out, "and", fig)
    return doc


if __name__ == "__main__":
    main()
