"""Benchmark: the platform's matchers against direct scipy and POT calls, side by side.

Pairs are *seed-like*: one planted dictionary copied twice, each copy perturbed independently
(``noise``), 30% of each copy's rows replaced by copy-specific directions, the second copy permuted
(:func:`universality.match.worlds.seed_like_pair`). Training two 65k-latent SAEs per size on this 2-core
CPU is infeasible, so these stand in for two SAEs trained on the same activations with different seeds.

For each size ``n`` (``n x n`` latents, ``d`` dimensions):

- ``platform_sparse``: ``universality.match(method="sparse")`` end to end (blocked cosine + streaming
  top-k + sparse LAPJV + completion + the certified gap bound and its refinement rounds), wall time,
  value, ``gap_bound``, and the optimality gap against scipy's exact answer;
- ``scipy_dense``: building the dense ``n x n`` cosine matrix, then ``scipy.optimize.linear_sum_assignment``
  on it (times reported separately), skipped above ``--exact-max`` (65,536^2 float32 is 16 GiB);
- with ``--ot N``: at size ``N`` (default 1024) also ``platform_hungarian`` vs scipy, ``platform_emd`` vs
  ``ot.emd`` and ``platform_sinkhorn`` vs ``ot.sinkhorn(method='sinkhorn_log')`` (dense OT is far too slow
  for 16k on a CPU: exact network simplex at 4096^2 did not finish in 15 minutes here).

With ``--crossover``: the dense-vs-sparse rule of ``summary.one_to_one`` (``record['assignment_crossover']``):
``one_to_one(..., exact_limit=0)`` (sparse route refined to a certified gap <= 1e-3) against the dense route
(blocked similarity + ``linear_sum_assignment``), side by side in one run, on isotropic and anisotropic pairs
(copies and independent dictionaries) at 1024^2, 2048^2, 4096^2 and 2048 x 3000; each row gives both
wall times, their ratio, the true gap and the certified bound (``--crossover-sizes`` changes the sizes).

Goals (README): 16,384^2 one-to-one >= 3x faster than scipy with gap < 0.1%; 65,536^2 < 10 min on 2 cores.
Usage: ``python benchmarks/match.py [--sizes 4096 16384] [--large] [--crossover] [--machine NAME]``.
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
                              "gap_bound": res.meta["gap_bound"], "rounds": res.meta["rounds"],
                              "n_streamed_rows": res.meta["n_streamed_rows"],
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


def _unit(X: torch.Tensor) -> torch.Tensor:
    return X / X.norm(dim=1, keepdim=True)


def crossover_pairs(n: int, m: int, seed: int = 0) -> dict:
    """The pairs of the crossover section: ``{name: (A, B)}`` of unit dictionaries ``(n, d)`` and ``(m, d)``.

    - ``isotropic_copy``: a seed-like pair (uniform directions in 256 dimensions, noised, permuted);
    - ``isotropic_independent``: two independent uniform dictionaries in 64 dimensions;
    - ``anisotropic_copy``: a permuted noised copy of directions with a power-law covariance (spectrum 1/i, 64 dims);
    - ``anisotropic_independent``: two independent power-law dictionaries, the second in a rotated basis
      (hub columns crowd the top-k lists: the hard case for a top-k graph).
    """
    from universality.match.baselines import random_rotation
    from universality.match.worlds import seed_like_pair

    g = torch.Generator().manual_seed(seed)
    spec = torch.arange(1, 65, dtype=torch.float32) ** -1.0
    big = max(n, m)
    D1, D2, _ = seed_like_pair(big, 256, noise=0.3, replaced=0.3, seed=seed)
    P = _unit(torch.randn(big, 64, generator=g) * spec)
    perm = torch.randperm(big, generator=g)
    Q = torch.empty_like(P)
    Q[perm] = _unit(P + 0.05 * torch.randn(P.shape, generator=g) / 8.0)
    return {
        "isotropic_copy": (D1[:n], D2[:m]),
        "isotropic_independent": (_unit(torch.randn(n, 64, generator=g)), _unit(torch.randn(m, 64, generator=g))),
        "anisotropic_copy": (P[:n], Q[:m]),
        "anisotropic_independent": (_unit(torch.randn(n, 64, generator=g) * spec),
                                    _unit((torch.randn(m, 64, generator=g) * spec) @ random_rotation(64, seed + 3).T)),
    }


def bench_crossover(shapes: list[tuple[int, int]], gap_tol: float = 1e-3) -> list[dict]:
    """Dense exact vs certified sparse one-to-one at each shape and pair kind (see the module docstring)."""
    from universality.match.summary import one_to_one

    rows = []
    for n, m in shapes:
        for name, (A, B) in crossover_pairs(n, m).items():
            dense, t_dense = _timed(lambda: one_to_one(A, B, exact_limit=n * m))
            sparse, t_sparse = _timed(lambda: one_to_one(A, B, exact_limit=0, gap_tol=gap_tol))
            gap = (dense.value - sparse.value) / abs(dense.value)
            row = {"n": n, "m": m, "pair": name, "dense_seconds": t_dense, "sparse_seconds": t_sparse,
                   "dense_over_sparse": t_dense / t_sparse, "true_gap": gap, "gap_bound": sparse.meta["gap_bound"],
                   "bound_covers_gap": bool(sparse.meta["gap_bound"] >= gap - 1e-7),
                   "sparse_solver": sparse.meta["solver"], "rounds": sparse.meta["rounds"],
                   "n_streamed_rows": sparse.meta["n_streamed_rows"], "gap_tol": gap_tol,
                   "dense_call": f"one_to_one(A, B, exact_limit={n * m})",
                   "sparse_call": f"one_to_one(A, B, exact_limit=0, gap_tol={gap_tol})"}
            rows.append(row)
            print(f"[{n}x{m} {name}] dense {t_dense:.2f}s sparse {t_sparse:.2f}s "
                  f"(dense/sparse {row['dense_over_sparse']:.2f}); gap {gap:.1e} <= bound {row['gap_bound']:.1e}, {row['rounds']} rounds", flush=True)
    return rows


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
    p.add_argument("--crossover", action="store_true", help="also time dense vs certified sparse one-to-one")
    p.add_argument("--crossover-sizes", type=int, nargs="+", default=[1024, 2048, 4096],
                   help="square sizes of the crossover section (2048 x 3000 is always added)")
    p.add_argument("--only-crossover", action="store_true", help="run the crossover section only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--machine", default=os.environ.get("BENCH_MACHINE", platform.node() or "cpu"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from bench_memory import PeakMemory

    mem = PeakMemory().start()
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
    if args.crossover or args.only_crossover:
        shapes = [(n, n) for n in sorted(args.crossover_sizes)] + [(2048, 3000)]
        record["assignment_crossover"] = {"threads": args.threads, "rows": bench_crossover(shapes)}
        write_json(out, record)
    for n in [] if args.only_crossover else sizes:
        results[n] = bench_size(n, args.d, args.k, args.exact_max, n == args.ot, device=args.device)
        record["results"] = [results[m] for m in sorted(results)]
        write_json(out, record)
    record["memory"] = mem.stop().as_dict()
    write_json(out, record)
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
