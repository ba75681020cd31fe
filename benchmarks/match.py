"""Benchmark: the platform's matchers against direct scipy and POT calls, side by side.

Pairs are *seed-like*: one planted dictionary copied twice, each copy perturbed independently
(``noise``), 30% of each copy's rows replaced by copy-specific directions, the second copy permuted
(:func:`universality.match.worlds.seed_like_pair`). Training two 65k-latent SAEs per size on this 2-core
CPU is infeasible, so these stand in for two SAEs trained on the same activations with different seeds.

For each size ``n`` (``n x n`` latents, ``d`` dimensions):

- ``platform_sparse``: ``universality.match(method="sparse")`` end to end (blocked cosine + streaming
  top-k + sparse LAPJV + completion), wall time, value, and the optimality gap against scipy's exact answer;
- ``scipy_dense``: building the dense ``n x n`` cosine matrix, then ``scipy.optimize.linear_sum_assignment``
  on it (times reported separately), skipped above ``--exact-max`` (65,536^2 float32 is 16 GiB);
- with ``--ot N``: at size ``N`` (default 1024) also ``platform_hungarian`` vs scipy, ``platform_emd`` vs
  ``ot.emd`` and ``platform_sinkhorn`` vs ``ot.sinkhorn(method='sinkhorn_log')`` (dense OT is far too slow
  for 16k on a CPU: exact network simplex at 4096^2 did not finish in 15 minutes here).

Goals (README): 16,384^2 one-to-one >= 3x faster than scipy with gap < 0.1%; 65,536^2 < 10 min on 2 cores.
Usage: ``python benchmarks/match.py [--sizes 4096 16384] [--large] [--machine NAME]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_size(n: int, d: int, k: int, exact_max: int, with_ot: bool, seed: int = 0, device: str = "cpu") -> dict:
    import ot
    from scipy.optimize import linear_sum_assignment

    from universality.match import match
    from universality.match.worlds import seed_like_pair

    D1, D2, perm = seed_like_pair(n, d, noise=0.3, replaced=0.3, seed=seed)
    row: dict = {"n": n, "d": d, "k": k, "pair": "seed_like_pair(noise=0.3, replaced=0.3)", "device": device}
    if device.startswith("cuda"):  # untimed warm-up of the GPU kernels on a small pair
        w1, w2, _ = seed_like_pair(512, d, noise=0.3, replaced=0.3, seed=seed + 1)
        match(w1, w2, method="sparse", k=k, exact_limit=0, device=device)
        torch.cuda.reset_peak_memory_stats()
    res, t = _timed(lambda: (match(D1, D2, method="sparse", k=k, exact_limit=0, device=device), _sync(device))[0])
    truth = perm.numpy()[res.pairs[:, 0]] == res.pairs[:, 1]
    row["platform_sparse"] = {"seconds": t, "value": res.value, "n_pairs": len(res),
                              "call": f"universality.match(D1, D2, method='sparse', k={k}, exact_limit=0, device='{device}')",
                              "n_completed": res.meta["n_completed"], "n_edges": res.meta["n_candidate_edges"],
                              "true_counterparts_recovered": float(truth.mean()),
                              "peak_gpu_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None}
    print(f"[{n}] platform sparse: {t:.1f}s value {res.value:.3f}", flush=True)
    if n <= exact_max:
        S, t_sim = _timed(lambda: (D1 @ D2.T).numpy())
        (r, c), t_lsa = _timed(lambda: linear_sum_assignment(S, maximize=True))
        exact = float(S[r, c].astype(np.float64).sum())
        row["scipy_dense"] = {"similarity_seconds": t_sim, "lsa_seconds": t_lsa, "value": exact,
                              "call": "S = (D1 @ D2.T).numpy(); scipy.optimize.linear_sum_assignment(S, maximize=True)"}
        gap = (exact - res.value) / abs(exact)
        row["optimality_gap"] = gap
        row["speedup_vs_lsa"] = t_lsa / row["platform_sparse"]["seconds"]
        row["speedup_vs_dense_plus_lsa"] = (t_sim + t_lsa) / row["platform_sparse"]["seconds"]
        print(f"[{n}] scipy: sim {t_sim:.1f}s lsa {t_lsa:.1f}s; gap {gap:.2e}; speedup {row['speedup_vs_lsa']:.2f}x",
              flush=True)
        if with_ot:
            h, t_h = _timed(lambda: match(D1, D2, method="hungarian", device="cpu"))  # exact LAPJV runs on the CPU
            row["platform_hungarian"] = {"seconds": t_h, "value": h.value, "equals_scipy": bool(
                abs(h.value - exact) < 1e-6 * abs(exact))}
            a = np.full(n, 1.0 / n)
            C = 1.0 - S.astype(np.float64)
            P, t_ot = _timed(lambda: ot.emd(a, a, C, numItermax=10_000_000))
            e, t_e = _timed(lambda: match(D1, D2, method="emd", device="cpu"))  # network simplex: CPU
            row["pot_emd"] = {"seconds": t_ot, "cost": float((P * C).sum()), "call": "ot.emd(a, a, 1 - S, numItermax=10_000_000)"}
            row["platform_emd"] = {"seconds": t_e, "cost": e.value}
            # the platform's settings (universality.match.transport.sinkhorn_match): 2000 iterations at most, stopThr 1e-7
            P2, t_sk = _timed(lambda: ot.sinkhorn(a, a, C, 0.01, method="sinkhorn_log", numItermax=2000, stopThr=1e-7))
            s2, t_s2 = _timed(lambda: (match(D1, D2, method="sinkhorn", reg=0.01, device=device), _sync(device))[0])
            row["pot_sinkhorn_log"] = {"seconds": t_sk, "cost": float((P2 * C).sum()),
                                       "call": "ot.sinkhorn(a, a, C, 0.01, method='sinkhorn_log', numItermax=2000, stopThr=1e-7) on numpy float64"}
            if device.startswith("cuda"):  # POT's torch backend on the same GPU
                a_t = torch.as_tensor(a, device=device)
                C_t = torch.as_tensor(C, device=device)
                P3, t_sk3 = _timed(lambda: (ot.sinkhorn(a_t, a_t, C_t, 0.01, method="sinkhorn_log", numItermax=2000, stopThr=1e-7),
                                            _sync(device))[0])
                row["pot_sinkhorn_log_cuda"] = {"seconds": t_sk3, "cost": float((P3 * C_t).sum()),
                                                "call": "ot.sinkhorn(a, a, C, 0.01, method='sinkhorn_log', numItermax=2000, stopThr=1e-7) on torch CUDA float64 tensors"}
            row["platform_sinkhorn"] = {"seconds": t_s2, "cost": s2.value, "rounded_value": float(s2.scores.sum())}
            print(f"[{n}] hungarian {t_h:.1f}s emd pot {t_ot:.1f}s / platform {t_e:.1f}s; sinkhorn pot {t_sk:.1f}s"
                  f" / platform {t_s2:.1f}s", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="device of the sparse and Sinkhorn matchers (cpu or cuda)")
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--large", action="store_true", help="also run 65,536 x 65,536")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--exact-max", type=int, default=16384, help="largest n for scipy's dense exact answer")
    p.add_argument("--ot", type=int, nargs="?", const=1024, default=0,
                   help="also compare Hungarian/EMD/Sinkhorn with scipy/POT at this size (default 1024)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--machine", default=os.environ.get("BENCH_MACHINE", platform.node() or "cpu"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(args.threads)
    sizes = sorted(set(args.sizes + ([65536] if args.large else []) + ([args.ot] if args.ot else [])))
    from universality.io import read_json, write_json

    out = args.out or Path(__file__).parent / "results" / f"match-{args.machine}.json"
    record = read_json(out) if out.is_file() else {}
    record.update({"machine": args.machine, "threads": args.threads, "torch": torch.__version__,
                   "cpu": platform.processor() or platform.machine(),
                   "note": "seed-like pairs from a shared planted dictionary (training 65k-latent SAEs on this CPU "
                           "is infeasible); timings on a shared 2-core machine vary with its load"})
    results = {int(r["n"]): r for r in record.get("results", [])}
    for n in sizes:
        results[n] = bench_size(n, args.d, args.k, args.exact_max, n == args.ot, device=args.device)
        record["results"] = [results[m] for m in sorted(results)]
        write_json(out, record)
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
