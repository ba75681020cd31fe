"""One benchmark report: capture, harvest, training and matching, each beside its anchor.

Runs the four benchmark scripts of this folder in one process with the sizes of a profile,

* ``cpu-small``: tiny shapes that finish in minutes on a busy 2-core CPU (what CI machines have);
* ``gpu-real``: the real sizes on a GPU (TopK training at d_in 768, 24,576 latents, k 32,
  batch 4,096, 4 dictionaries stacked; a Pythia-70m-shaped GPT-NeoX with random weights for
  capture and harvesting; 65,536 x 65,536 matching and Sinkhorn against POT on the GPU),

records the peak memory of each (process RSS sampled every 20 ms; on CUDA also the allocator's
peak) and writes

* ``benchmarks/results/<machine>.json``: every benchmark's full result document, the versions,
  the git commit, the device, the exact anchor calls and the summary rows;
* ``benchmarks/results/<machine>.md``: a Markdown table of ratios (ours / anchor) with the goal of
  each and whether it was met.

``<machine>`` is ``cpu-<host>`` or ``gpu-<gpu name>`` (lower case, dashes), suffixed by the profile.
Usage::

    python benchmarks/run_all.py --profile cpu-small
    python benchmarks/run_all.py --profile gpu-real [--only train match]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from universality.io import read_json, write_json  # noqa: E402
from universality.io import atomic_write_text  # noqa: E402
from bench_memory import PeakMemory, rss_mib  # noqa: E402,F401  (shared with every benchmark script)

BENCHES = ("capture", "activations", "train", "match")

#: Command-line arguments of each benchmark script, per profile.
PROFILES: dict[str, dict[str, list[str]]] = {
    "cpu-small": {
        "capture": ["--small", "--device", "cpu", "--batch", "2", "--seq", "128", "--repeats", "9", "--threads", "1"],
        "activations": ["--family", "gpt_neox", "--device", "cpu", "--tokens", "4000", "--batch", "8",
                        "--seq", "128", "--repeats", "2", "--read-batch", "1024", "--buffer", "16384", "--shard-rows", "4096"],
        "train": ["--d-in", "64", "--d-sae", "512", "--k", "16", "--batch", "512", "--steps", "150", "--lr", "2e-3",
                  "--n-features", "1024", "--active", "12", "--n-stack", "4", "--repeats", "3", "--devices", "cpu", "--threads", "1"],
        "match": ["--sizes", "1024", "4096", "--ot", "256", "--exact-max", "4096", "--d", "256", "--threads", "2", "--device", "cpu"],
    },
    "gpu-real": {
        "capture": ["--device", "cuda", "--dtype", "bfloat16", "--batch", "32", "--seq", "1024", "--repeats", "20"],
        "activations": ["--family", "gpt_neox", "--device", "cuda", "--dtype", "bfloat16", "--tokens", "4000000",
                        "--batch", "64", "--seq", "1024", "--repeats", "2", "--read-repeats", "1"],
        "train": ["--d-in", "768", "--d-sae", "24576", "--k", "32", "--batch", "4096", "--steps", "500", "--lr", "1e-3",
                  "--n-features", "8192", "--active", "32", "--unique-batches", "100", "--n-stack", "4", "--compile",
                  "--repeats", "2", "--devices", "cuda", "--threads", "8"],
        "match": ["--sizes", "4096", "--large", "--ot", "4096", "--exact-max", "4096", "--d", "512", "--threads", "8",
                  "--device", "cuda"],
    },
}

#: The anchors each benchmark is measured against (the exact calls are also inside each result).
ANCHORS = {
    "capture": "bare trunk forward: model.base_model(input_ids=ids, use_cache=False) with the block list sliced to the "
               "same depth (benchmarks/capture.py::_Trunk), no hooks",
    "activations": "bare trunk forward: model.base_model(input_ids=ids, attention_mask=mask, use_cache=False) over the "
                   "same packed contexts, tokenisation excluded",
    "train": "sae_lens.SAETrainer(SAETrainerConfig(...), TopKTrainingSAE(TopKTrainingSAEConfig(d_in, d_sae, k)), "
             "data_provider=iter(batches)).fit(); sparsify.SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k)) "
             "with ScheduleFreeWrapper(SignSGD) stepped per batch (exact strings in results.train.*.call)",
    "match": "scipy.optimize.linear_sum_assignment(D1 @ D2.T, maximize=True); ot.emd(a, a, 1 - S); "
             "ot.sinkhorn(a, a, 1 - S, 0.01, method='sinkhorn_log', numItermax=2000, stopThr=1e-7) (numpy, and torch CUDA "
             "tensors on a GPU)",
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


def machine_name(profile: str) -> str:
    if torch.cuda.is_available() and profile.startswith("gpu"):
        base = "gpu-" + torch.cuda.get_device_name(0)
    else:
        base = "cpu-" + (platform.node() or "host")
    return _slug(base) + "-" + profile


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_bench(name: str, argv: list[str], workdir: Path, figure: Path | None = None) -> dict:
    """Import ``benchmarks/<name>.py`` and call its ``main(argv)``; its own JSON goes to ``workdir`` (its
    figure, if it draws one and ``figure`` is given, there)."""
    import importlib

    module = importlib.import_module(name)
    out = workdir / f"{name}.json"
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        try:
            doc = module.main(argv + ["--out", str(out)] + (["--figure", str(figure)] if figure else []))
            error = None
        except Exception as exc:  # one broken benchmark must not hide the others
            doc, error = None, f"{type(exc).__name__}: {exc}"
    if doc is None and out.is_file():
        doc = read_json(out)
    return {"argv": argv, "wall_s": time.perf_counter() - t0, "memory": mem.as_dict(), "error": error, "result": doc}


# ---------------------------------------------------------------------- summary rows
def _row(bench, measure, ours, anchor, ratio, goal, met, peak=None):
    return {"benchmark": bench, "measure": measure, "ours": ours, "anchor": anchor, "ratio": ratio, "goal": goal,
            "met": met, "peak_memory_mib": peak}


def summarise(runs: dict) -> list[dict]:
    """The ratio rows of the report (ours / anchor) with their goals."""
    rows: list[dict] = []
    cap = (runs.get("capture") or {}).get("result")
    if cap:
        peak = runs["capture"]["memory"]
        for label, m in cap["models"].items():
            r = m["ratios"]["capture_all_resid/bare_full"]
            rows.append(_row("capture", f"{label}: capture all resid sites / bare forward (s/s)", m["median_s"]["capture_all_resid"],
                             m["median_s"]["bare_full"], r, "<= 1.10", r <= 1.10, peak))
    act = (runs.get("activations") or {}).get("result")
    if act:
        peak = runs["activations"]["memory"]
        b = act["best_s"]
        r = act["ratio_harvest_over_bare"]
        rows.append(_row("harvest", f"{act['model']['shape']}: harvest with writing / bare forward (s/s)", b["harvest"], b["bare_forward"],
                         r, "<= 1.2", r <= 1.2, peak))
        rows.append(_row("harvest", "capture only / bare forward (s/s)", b["capture_only"], b["bare_forward"],
                         act["ratio_capture_over_bare"], "<= 1.10", act["ratio_capture_over_bare"] <= 1.10, peak))
        rd = act.get("read_summary")
        if rd:
            rows.append(_row("read", "shuffled store read / plain copy of the same bytes, same run (GB/s / GB/s)",
                             rd["shuffled_GB_per_s"], rd["plain_copy_GB_per_s"], rd["shuffled_over_plain_copy"], ">= 0.8",
                             rd["shuffled_over_plain_copy"] >= 0.8, peak))
    tr = (runs.get("train") or {}).get("result")
    if tr:
        peak = runs["train"]["memory"]
        n = tr["config"]["n_stack"]
        for res in tr["results"]:
            libs = res["libraries"]

            def rate(name):
                return libs.get(name, {}).get("tokens_per_s")

            def ev(name):
                return libs.get(name, {}).get("explained_variance")

            for anchor, goal in (("sparsify", 1.2), ("sae_lens", 2.0)):
                if rate("universality") and rate(anchor):
                    r = rate("universality") / rate(anchor)
                    ev_ok = ev("universality") >= ev(anchor) - 1e-3
                    rows.append(_row("train", f"tokens/s per dictionary vs {anchor} (EV ours {ev('universality'):.3f} vs {ev(anchor):.3f})",
                                     rate("universality"), rate(anchor), r, f">= {goal} at >= EV", r >= goal and ev_ok,
                                     libs["universality"].get("peak_gpu_mem_mib") or peak))
            if rate("universality_no_auxk") and rate("sparsify"):  # like for like: sparsify's default has no AuxK either
                r = rate("universality_no_auxk") / rate("sparsify")
                rows.append(_row("train", f"tokens/s without AuxK vs sparsify (its default, auxk_alpha=0; EV ours "
                                          f"{ev('universality_no_auxk'):.3f})", rate("universality_no_auxk"), rate("sparsify"), r,
                                 ">= 1.0 (equal settings)", r >= 1.0, libs["universality_no_auxk"].get("peak_gpu_mem_mib") or peak))
            st, sep, spn = f"universality_stacked_x{n}", f"universality_separate_x{n}", f"sparsify_x{n}"
            if n > 1 and rate(st):
                if rate(sep):
                    rows.append(_row("train", f"{n} stacked / {n} separate dictionaries (tokens/s per dictionary)", rate(st), rate(sep),
                                     rate(st) / rate(sep), "> 1 (informational)", None, libs[st].get("peak_gpu_mem_mib") or peak))
                if rate(spn):
                    r = rate(st) / rate(spn)
                    rows.append(_row("train", f"{n} stacked vs sparsify with {n} coders (EV {ev(st):.3f} vs {ev(spn):.3f})", rate(st), rate(spn),
                                     r, ">= 1.2 at >= EV", r >= 1.2 and ev(st) >= ev(spn) - 1e-3, libs[st].get("peak_gpu_mem_mib") or peak))
                if rate("sae_lens"):
                    r = rate(st) / rate("sae_lens")
                    rows.append(_row("train", f"{n} stacked vs SAELens one at a time", rate(st), rate("sae_lens"), r, ">= 2.0",
                                     r >= 2.0, libs[st].get("peak_gpu_mem_mib") or peak))
            ttt = res.get("time_to_target") or {}
            for label, per in (ttt.get("table") or {}).items():  # wall time to each explained-variance target
                ours = (per.get("universality") or {}).get("wall_s")
                for anchor in ("sparsify", "sae_lens"):
                    theirs = (per.get(anchor) or {}).get("wall_s")
                    anchor_goal = label.startswith("anchor") and anchor == "sparsify"
                    r = ours / theirs if ours and theirs else None
                    note = "" if ours and theirs else " (" + "; ".join(
                        f"{who}: {(per.get(who) or {}).get('note', 'never reached')}" for who, t in
                        (("universality", ours), (anchor, theirs)) if not t) + ")"
                    rows.append(_row("train", f"time to EV {label} vs {anchor} (s/s){note}", ours, theirs, r,
                                     "<= 0.8" if anchor_goal else "< 1 (informational)", (r <= 0.8) if anchor_goal and r else None,
                                     libs["universality"].get("peak_gpu_mem_mib") or peak))
            if res.get("bf16_peak_flops"):
                for name in ("universality", st, f"universality_stacked_compiled_x{n}"):
                    frac = libs.get(name, {}).get("fraction_of_bf16_peak")
                    if frac is not None:
                        rows.append(_row("train", f"{name}: useful FLOP/s / bf16 peak ({tr['useful_flops_formula']})",
                                         libs[name]["useful_flops_per_s"], res["bf16_peak_flops"], frac, ">= 0.40", frac >= 0.40,
                                         libs[name].get("peak_gpu_mem_mib") or peak))
    mt = (runs.get("match") or {}).get("result")
    if mt:
        peak = runs["match"]["memory"]
        for r in mt.get("results", []):
            n, sp = r["n"], r["platform_sparse"]
            if "scipy_dense" in r:
                anchor = r["scipy_dense"]["similarity_seconds"] + r["scipy_dense"]["lsa_seconds"]
                rows.append(_row("match", f"{n}^2 one-to-one: sparse matcher / scipy dense+LSA (s/s), gap {r['optimality_gap']:.1e}",
                                 sp["seconds"], anchor, sp["seconds"] / anchor, "<= 1/3 at gap < 0.1% (16k)", None,
                                 sp.get("peak_gpu_mem_mib") or peak))
            if n >= 65536:
                on_gpu = r.get("device", "cpu").startswith("cuda")
                rows.append(_row("match", f"{n}^2 one-to-one on {r.get('device', 'cpu')} (s)", sp["seconds"], 60.0 if on_gpu else 600.0,
                                 sp["seconds"] / (60.0 if on_gpu else 600.0), "<= 60 s on a GPU (<= 600 s on 2 CPU cores)",
                                 sp["seconds"] <= (60.0 if on_gpu else 600.0), sp.get("peak_gpu_mem_mib") or peak))
            if "platform_sinkhorn" in r:
                for pot in ("pot_sinkhorn_log", "pot_sinkhorn_log_cuda"):
                    if pot in r:
                        ratio = r["platform_sinkhorn"]["seconds"] / r[pot]["seconds"]
                        rows.append(_row("match", f"{n}^2 Sinkhorn (reg 0.01): platform on {r.get('device', 'cpu')} / {pot} (s/s)",
                                         r["platform_sinkhorn"]["seconds"], r[pot]["seconds"], ratio, "<= 1 (informational)", None, peak))
            if "platform_emd" in r:
                rows.append(_row("match", f"{n}^2 exact OT: platform emd / ot.emd (s/s)", r["platform_emd"]["seconds"],
                                 r["pot_emd"]["seconds"], r["platform_emd"]["seconds"] / r["pot_emd"]["seconds"],
                                 "~1 (informational)", None, peak))
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _peak(p) -> str:
    if p is None:
        return "-"
    if isinstance(p, dict):
        gpu = p.get("gpu_allocator_peak_mib")
        return f"RSS {p['rss_peak_mib']:.0f}" + (f", GPU {gpu:.0f}" if gpu else "")
    return f"GPU {p:.0f}"


def markdown(doc: dict) -> str:
    lines = [
        f"# Benchmark report: {doc['machine']}",
        "",
        f"Profile `{doc['profile']}` on {doc['device']}; commit `{doc['git_commit']}`"
        f"{' (uncommitted changes)' if doc['git_dirty'] else ''}; {doc['date_utc']}; torch {doc['versions']['torch']}.",
        f"Command: `{doc['command']}`. Full results: `{doc['machine']}.json`.",
        "",
        "| benchmark | measure | ours | anchor | ratio | goal | met | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["summary"]:
        lines.append(f"| {r['benchmark']} | {r['measure']} | {_fmt(r['ours'])} | {_fmt(r['anchor'])} | {_fmt(r['ratio'])} | "
                     f"{r['goal']} | {_fmt(r['met'])} | {_peak(r['peak_memory_mib'])} |")
    errors = {k: v["error"] for k, v in doc["benchmarks"].items() if v.get("error")}
    fig = (doc["benchmarks"].get("train") or {}).get("figure")
    if fig:
        lines += ["", f"Training curves (explained variance against wall time and tokens, evaluation excluded): ![curves]({fig})"]
    lines += ["", "Anchors:", ""] + [f"- **{k}**: {v}" for k, v in ANCHORS.items() if k in doc["benchmarks"]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- **{k}**: {v}" for k, v in errors.items()]
    lines += ["", "Ratios are ours / anchor: for times (s/s) lower is better, for rates (tokens/s) higher is better. "
              "Goals are those of the performance issue; on the CPU profile the sizes are far below the real ones, so "
              "the GPU goals are not expected to hold there. Peak memory: the process's resident set during the "
              "benchmark (sampled) and, on CUDA, the allocator's peak (per run for training and matching)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu-small")
    ap.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    ap.add_argument("--machine", default=None, help="name of the result files (default: device and profile)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.profile.startswith("gpu") and not torch.cuda.is_available():
        raise SystemExit("the gpu-real profile needs CUDA; use --profile cpu-small here")
    machine = args.machine or machine_name(args.profile)
    out_dir = Path(args.out_dir)
    json_path = out_dir / f"{machine}.json"
    previous = read_json(json_path) if json_path.is_file() else {}
    runs = dict(previous.get("benchmarks", {})) if set(args.only) != set(BENCHES) else {}
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        for name in args.only:
            print(f"== {name}: {' '.join(PROFILES[args.profile][name])}", flush=True)
            figure = out_dir / f"{machine}-train-curves.png" if name == "train" else None
            runs[name] = run_bench(name, list(PROFILES[args.profile][name]), Path(tmp), figure)
            if figure and figure.is_file():
                runs[name]["figure"] = figure.name
            print(f"== {name} done in {runs[name]['wall_s']:.0f}s" + (f" (error: {runs[name]['error']})" if runs[name]["error"] else ""), flush=True)
    device = torch.cuda.get_device_name(0) if (torch.cuda.is_available() and args.profile.startswith("gpu")) else \
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    doc = {
        "report": "benchmarks/run_all.py",
        "profile": args.profile,
        "machine": machine,
        "device": device,
        "command": "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     **{k: _version(k) for k in ("transformers", "sae-lens", "eai-sparsify", "POT", "scipy", "numpy", "universality")}},
        "anchors": ANCHORS,
        "profiles": {args.profile: PROFILES[args.profile]},
        "benchmarks": runs,
    }
    doc["summary"] = summarise(runs)
    write_json(json_path, doc)
    md_path = out_dir / f"{machine}.md"
    atomic_write_text(md_path, markdown(doc))
    print(markdown(doc))
    print(f"wrote {json_path} and {md_path}")
    return doc


if __name__ == "__main__":
    main()
