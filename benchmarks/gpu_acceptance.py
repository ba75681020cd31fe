"""The GPU acceptance run: one H100/H200, ten minutes, one JSON and one Markdown report.

Steps, each in its own process group with its own timeout (one hang cannot eat the budget; a step
whose timeout no longer fits the time left is recorded as ``skipped``):

1. ``preflight``: the GPU, driver, torch/CUDA versions and whether mamba-ssm is installed;
2. ``tests-gpu``: ``pytest tests/gpu`` (counts from its JUnit XML);
3. ``bench-capture``, ``bench-activations``, ``bench-train``, ``bench-match``: the ``gpu-real``
   profile of ``benchmarks/run_all.py``, one benchmark per step (``--only``; the same report file,
   so the run_all JSON/Markdown holds all four): capture overhead, harvest and store reads,
   TopK training (tokens/s, useful FLOP fraction of the bf16 peak), 65,536^2 matching;
4. ``mamba``: a Mamba-130m-shaped model (random weights) through ``models.load`` on CUDA with the
   mamba-ssm kernels: forward and capture tokens/s, a small harvest, and the captured activations
   against transformers' reference (slow) path. Without mamba-ssm (and causal-conv1d) the step is
   ``skipped`` with the reason.

Writes ``benchmarks/results/gpu-acceptance-<gpu>.json`` and ``.md``: each step's status (``passed``,
``failed``, ``timeout``, ``skipped``), wall time, exit code, the tail of its output and its key
figures (tokens/s, useful FLOP fraction, peak GPU and resident memory where the benchmarks report
them).

Usage::

    bash benchmarks/gpu_acceptance.sh              # on the GPU machine
    bash benchmarks/gpu_acceptance.sh --dry-run    # anywhere: print and write the plan, run nothing

Without CUDA (and without ``--dry-run``) it refuses with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 600  # the whole run, steps and reports
RESERVE_S = 15  # kept back for starting the driver and writing the reports
PROFILE = "gpu-real"
REFUSAL = "gpu_acceptance: CUDA is not available here (torch.cuda.is_available() is False); run it on an H100/H200, or pass --dry-run for the plan"


def plan(python: str = sys.executable, out_dir: Path | None = None, machine: str = "gpu-acceptance") -> dict:
    """The steps (name, what, command, timeout), the budget and where the reports go. Builds nothing, needs no GPU."""
    out_dir = Path(out_dir) if out_dir is not None else ROOT / "benchmarks" / "results"
    work = out_dir / f"{machine}-work"
    bench = machine + "-" + PROFILE  # run_all's report name for the four benchmark steps
    steps = [
        {"name": "preflight", "what": "GPU, driver, torch/CUDA versions, mamba-ssm present or not",
         "command": [python, str(Path(__file__)), "--step", "preflight", "--step-out", str(work / "preflight.json")],
         "timeout_s": 15, "result": str(work / "preflight.json")},
        {"name": "tests-gpu", "what": "pytest tests/gpu",
         "command": [python, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider", "--junitxml", str(work / "tests-gpu.xml")],
         "timeout_s": 75, "result": str(work / "tests-gpu.xml")},
    ]
    timeouts = {"capture": 50, "activations": 135, "train": 160, "match": 90}
    whats = {"capture": "capture overhead vs bare forward (GPT-2 / Pythia shapes, bf16, batch 32 x 1024)",
             "activations": "harvest of 4M tokens (Pythia-70m shape) vs bare forward; store reads vs a plain copy",
             "train": "TopK SAE training d_in 768, 24,576 latents, k 32, batch 4,096, 4 stacked, compiled; vs SAELens and sparsify",
             "match": "65,536 x 65,536 one-to-one matching and 4,096^2 Sinkhorn/EMD vs POT on the GPU"}
    for name, timeout in timeouts.items():
        steps.append({"name": f"bench-{name}", "what": f"run_all.py --profile {PROFILE} --only {name}: {whats[name]}",
                      "command": [python, str(ROOT / "benchmarks" / "run_all.py"), "--profile", PROFILE, "--only", name,
                                  "--machine", bench, "--out-dir", str(work)],
                      "timeout_s": timeout, "result": str(work / f"{bench}.json"), "benchmark": name})
    steps.append({"name": "mamba", "what": "Mamba-130m shape (random weights) on CUDA with the mamba-ssm kernels: forward, capture, "
                                           "harvest, activations vs the reference path (skipped without mamba-ssm)",
                  "command": [python, str(Path(__file__)), "--step", "mamba", "--step-out", str(work / "mamba.json")],
                  "timeout_s": 60, "result": str(work / "mamba.json")})
    total = sum(s["timeout_s"] for s in steps)
    return {"budget_s": BUDGET_S, "reserve_s": RESERVE_S, "steps_timeout_total_s": total, "fits_budget": total + RESERVE_S <= BUDGET_S,
            "profile": PROFILE, "work_dir": str(work), "out_dir": str(out_dir), "steps": steps}


# ---------------------------------------------------------------------- running one step
def run_step(step: dict, timeout: float, env: dict) -> dict:
    """Run ``step['command']`` in its own process group; on timeout the whole group is killed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(step["command"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        status = "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        out, _ = proc.communicate()
        status = "timeout"
    wall = time.perf_counter() - t0
    tail = (out or "")[-3000:]
    return {"status": status, "returncode": proc.returncode, "wall_s": round(wall, 2), "timeout_s": round(timeout, 1), "output_tail": tail}


def _junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _get(d, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def key_figures(step: dict) -> dict:
    """The figures that matter from a step's own result file (empty when it wrote none)."""
    path = Path(step["result"])
    if step["name"] == "tests-gpu":
        return _junit_counts(path)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if "benchmark" not in step:
        return doc.get("figures", doc)
    name = step["benchmark"]
    run = _get(doc, "benchmarks", name) or {}
    res = run.get("result") or {}
    mem = run.get("memory") or {}
    figs: dict = {"error": run.get("error"), "wall_s": run.get("wall_s"),
                  "peak_rss_mib": mem.get("rss_peak_mib"), "peak_gpu_mib": mem.get("gpu_allocator_peak_mib"),
                  "goals": [{k: r.get(k) for k in ("measure", "ratio", "goal", "met")} for r in doc.get("summary", []) if r.get("benchmark") == name
                            or (name == "activations" and r.get("benchmark") in ("harvest", "read"))]}
    try:
        if name == "capture":
            figs["models"] = {label: {"capture_all_resid_over_bare": _get(m, "ratios", "capture_all_resid/bare_full"),
                                      "tokens_per_s_capture_all_resid": m["tokens_per_batch"] / m["median_s"]["capture_all_resid"],
                                      "tokens_per_s_bare": m["tokens_per_batch"] / m["median_s"]["bare_full"]}
                              for label, m in (res.get("models") or {}).items()}
        elif name == "activations":
            figs |= {"tokens_per_s": res.get("tokens_per_s"), "harvest_over_bare": res.get("ratio_harvest_over_bare"),
                     "read": res.get("read_summary")}
        elif name == "train":
            for r in res.get("results", []):
                figs[r.get("device", "?")] = {lib: {k: row.get(k) for k in ("tokens_per_s", "fraction_of_bf16_peak", "peak_gpu_mem_mib",
                                                                         "explained_variance", "error") if k in row}
                                              for lib, row in (r.get("libraries") or {}).items()}
        elif name == "match":
            for r in res.get("results", []):
                sp = r.get("platform_sparse", {})
                figs[f"n={r.get('n')}"] = {"seconds": sp.get("seconds"), "peak_gpu_mem_mib": sp.get("peak_gpu_mem_mib"),
                                           "gap": r.get("optimality_gap"), "device": r.get("device")}
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        figs["figures_error"] = f"{type(exc).__name__}: {exc}"
    return figs


# ---------------------------------------------------------------------- steps run in a child process
def step_preflight(out: Path) -> int:
    import importlib.util
    import platform

    import torch

    doc = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "mamba_ssm": importlib.util.find_spec("mamba_ssm") is not None,
           "causal_conv1d": importlib.util.find_spec("causal_conv1d") is not None}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        doc |= {"gpu": p.name, "gpu_memory_gib": p.total_memory / 2**30, "capability": f"{p.major}.{p.minor}",
                "device_count": torch.cuda.device_count()}
        try:
            doc["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu",
                                                "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            doc["nvidia_smi"] = f"unavailable: {exc}"
    _write(out, {"figures": doc})
    print(json.dumps(doc))
    return 0 if doc["cuda_available"] else 1


def mamba_skip_reason() -> str | None:
    """Why the mamba-ssm kernel step cannot run here (``None`` when it can)."""
    import importlib
    import importlib.util

    missing = [m for m, mod in (("mamba-ssm", "mamba_ssm"), ("causal-conv1d", "causal_conv1d")) if importlib.util.find_spec(mod) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (pip install mamba-ssm causal-conv1d): transformers would run its PyTorch reference path"
    for mod, fn in (("mamba_ssm", "selective_scan_fn"), ("causal_conv1d", "causal_conv1d_fn")):
        try:
            if getattr(importlib.import_module(mod), fn, None) is None:
                return f"{mod} is installed but has no {fn}"
        except Exception as exc:  # an ABI mismatch with this torch raises all sorts of errors
            return f"{mod} is installed but does not import ({type(exc).__name__}: {exc})"
    try:
        from transformers.models.mamba import modeling_mamba
    except ImportError as exc:
        return f"transformers has no Mamba model ({exc})"
    if getattr(modeling_mamba, "is_fast_path_available", True) is False:
        return "mamba-ssm is installed but transformers does not see its kernels (is_fast_path_available is False)"
    return None


class _ReferencePath:
    """Within the block, transformers' Mamba runs its PyTorch reference path instead of the kernels:
    older transformers check ``is_fast_path_available``; newer ones call module-level functions
    wrapped around the kernels (``__wrapped__`` is the PyTorch one). ``switched`` names what was swapped."""

    NAMES = ("mamba_inner_fn", "mamba_selective_scan", "selective_scan_fn", "causal_conv1d_fn", "causal_conv1d_update",
             "mamba_selective_state_update", "selective_state_update")

    def __init__(self, module) -> None:
        self.module = module
        self.saved: dict = {}
        self.switched: list[str] = []

    def __enter__(self):
        m = self.module
        if isinstance(getattr(m, "is_fast_path_available", None), bool):
            self.saved["is_fast_path_available"] = m.is_fast_path_available
            m.is_fast_path_available = False
        for name in self.NAMES:
            ref = getattr(getattr(m, name, None), "__wrapped__", None)
            if ref is not None:
                self.saved[name] = getattr(m, name)
                setattr(m, name, ref)
        self.switched = sorted(self.saved)
        return self

    def __exit__(self, *exc) -> None:
        for name, value in self.saved.items():
            setattr(self.module, name, value)


def step_mamba(out: Path) -> int:
    import torch

    reason = mamba_skip_reason()
    if reason is None and not torch.cuda.is_available():
        reason = "no CUDA device"
    if reason is not None:
        _write(out, {"status": "skipped", "reason": reason})
        print(f"skipped: {reason}")
        return 0
    figs = mamba_figures("cuda")
    ok = figs["kernels_match_reference"] is not False
    _write(out, {"status": "passed" if ok else "failed", "figures": figs})
    print(json.dumps(figs))
    return 0 if ok else 1


def mamba_figures(device: str = "cuda", d_model: int = 768, n_layers: int = 24, seq: int = 1024, batch: int = 16,
                  n_batches: int = 8, harvest_tokens: int = 200_000, dtype: str = "bfloat16") -> dict:
    """Mamba (default: the 130m shape, random weights) through ``models.load``: forward and capture
    tokens/s, activations against transformers' PyTorch reference path, a small harvest."""
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT))
    import models
    from transformers import AutoModelForCausalLM, MambaConfig
    from transformers.models.mamba import modeling_mamba

    from models.tokenizer import train_byte_level_bpe
    from universality.activations import harvest
    from universality.data import Packer, PackingConfig, shakespeare

    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    figs: dict = {"shape": f"mamba d_model {d_model}, {n_layers} layers, d_state 16, random weights", "dtype": dtype, "device": device}
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-mamba-") as tmp:
        tmp = Path(tmp)
        docs = list(shakespeare())
        tok = train_byte_level_bpe([d.text for d in docs[:200]], 4096, tmp / "model")
        eos = tok.convert_tokens_to_ids(tok.eos_token)
        cfg = MambaConfig(vocab_size=len(tok), hidden_size=d_model, num_hidden_layers=n_layers, state_size=16, expand=2, conv_kernel=4,
                          bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, use_cache=False)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp / "model"))
        adapter = models.load(str(tmp / "model"), device=device, dtype=getattr(torch, dtype))
        L = adapter.n_layers
        sites = [f"blocks.{L // 2}.hook_resid_post", f"blocks.{L - 1}.hook_resid_post"]
        packing = PackingConfig(context_len=seq)
        batches = []
        for b in Packer(adapter.tokenizer, packing).batches(docs, batch):
            batches.append(b.input_ids.to(dev))
            if len(batches) >= n_batches:
                break
        tokens = sum(int(ids.numel()) for ids in batches)
        trunk = adapter.model.base_model
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)

        def timed(fn) -> float:
            fn()  # warm-up (kernel compilation, autotuning)
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - t0

        def forward():
            with torch.no_grad():
                for ids in batches:
                    trunk(input_ids=ids, use_cache=False)

        def capture():
            for ids in batches:
                adapter.capture(ids, sites)

        figs["is_fast_path_available"] = getattr(modeling_mamba, "is_fast_path_available", None)
        t_fwd, t_cap = timed(forward), timed(capture)
        figs |= {"tokens": tokens, "forward_tokens_per_s": tokens / t_fwd, "capture_tokens_per_s": tokens / t_cap,
                 "capture_over_forward": t_cap / t_fwd}
        # the kernels' activations against transformers' PyTorch reference path on two short contexts
        ids = batches[0][:2, :256]
        fast = adapter.capture(ids, sites)
        t_fast = timed(lambda: adapter.capture(ids, sites))
        with _ReferencePath(modeling_mamba) as ref:
            slow = adapter.capture(ids, sites)
            t_slow = timed(lambda: adapter.capture(ids, sites))
        figs["reference_switch"] = ref.switched
        figs["kernel_speedup_over_reference"] = t_slow / t_fast if t_fast > 0 else None
        figs["max_rel_diff_vs_reference"] = {s: float((fast[s].float() - slow[s].float()).norm() / slow[s].float().norm().clamp_min(1e-12))
                                             for s in sites}
        t0 = time.perf_counter()
        store = harvest(adapter, docs, sites, tmp / "store", packing=packing, batch_size=batch, shard_rows=1 << 16,
                        max_tokens=harvest_tokens, dtype=dtype, progress=False)
        sync()
        dt = time.perf_counter() - t0
        figs |= {"harvest_rows": store.n_rows, "harvest_tokens_per_s": store.n_rows / dt,
                 "peak_gpu_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None}
    # bf16 through many layers: the two paths round differently, so a relative difference of a few percent is expected
    ok = all(v < 5e-2 for v in figs["max_rel_diff_vs_reference"].values())
    figs["kernels_match_reference"] = ok if figs["reference_switch"] else None  # None: no reference path to switch to
    return figs


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------- reports
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


def headline(name: str, figs: dict) -> str:
    """One table cell of the step's key figures."""
    def num(v, unit=""):
        return "-" if v is None else (f"{v:.3g}{unit}" if isinstance(v, float) else f"{v}{unit}")

    parts = []
    try:
        if name == "preflight":
            parts = [f"{figs.get('gpu')}", f"torch {figs.get('torch')} / CUDA {figs.get('cuda')}",
                     f"mamba-ssm {'yes' if figs.get('mamba_ssm') else 'no'}"]
        elif name == "tests-gpu":
            parts = [f"{k} {figs[k]}" for k in ("passed", "failures", "errors", "skipped") if k in figs]
        elif name == "bench-capture":
            parts = [f"{label}: capture/bare {num(m.get('capture_all_resid_over_bare'))}, {num(m.get('tokens_per_s_capture_all_resid'))} tok/s"
                     for label, m in (figs.get("models") or {}).items()]
        elif name == "bench-activations":
            tps, rd = figs.get("tokens_per_s") or {}, figs.get("read") or {}
            parts = [f"harvest/bare {num(figs.get('harvest_over_bare'))}", f"harvest {num(tps.get('harvest'))} tok/s",
                     f"shuffled read {num(rd.get('shuffled_GB_per_s'))} GB/s = {num(rd.get('shuffled_over_plain_copy'))} x plain copy"]
        elif name == "bench-train":
            for dev, libs in figs.items():
                if isinstance(libs, dict) and dev.startswith("cuda"):
                    for lib, row in libs.items():
                        if lib.startswith("universality") and isinstance(row, dict):
                            parts.append(f"{lib}: {num(row.get('tokens_per_s'))} tok/s, FLOP frac {num(row.get('fraction_of_bf16_peak'))}, "
                                         f"GPU {num(row.get('peak_gpu_mem_mib'), ' MiB')}")
        elif name == "bench-match":
            parts = [f"{k}: {num(v.get('seconds'), ' s')}, GPU {num(v.get('peak_gpu_mem_mib'), ' MiB')}"
                     for k, v in figs.items() if k.startswith("n=") and isinstance(v, dict)]
        elif name == "mamba":
            parts = [f"forward {num(figs.get('forward_tokens_per_s'))} tok/s", f"capture {num(figs.get('capture_tokens_per_s'))} tok/s",
                     f"harvest {num(figs.get('harvest_tokens_per_s'))} rows/s", f"rel. diff vs reference {num(max((figs.get('max_rel_diff_vs_reference') or {}).values(), default=None))}",
                     f"GPU {num(figs.get('peak_gpu_mib'), ' MiB')}"] if figs else []
        if name.startswith("bench-") and figs:
            parts.append(f"peak RSS {num(figs.get('peak_rss_mib'), ' MiB')}, GPU {num(figs.get('peak_gpu_mib'), ' MiB')}")
            if figs.get("error"):
                parts.append(f"error: {figs['error']}")
    except (AttributeError, TypeError, ValueError) as exc:
        parts.append(f"(figures unreadable: {exc})")
    return "; ".join(parts)


def markdown(doc: dict) -> str:
    lines = [f"# GPU acceptance: {doc['gpu']}", "",
             f"{doc['date_utc']}; commit `{doc['git_commit']}`; torch {doc['torch']} (CUDA {doc['cuda']}); "
             f"budget {doc['plan']['budget_s']} s, used {doc['wall_s']:.0f} s. Overall: **{doc['overall']}**.", "",
             "| step | status | wall (s) | timeout (s) | key figures |", "|---|---|---|---|---|"]
    for s in doc["steps"]:
        figs = s.get("figures") or {}
        text = headline(s["name"], figs)
        if s["status"] == "skipped" or s.get("reason"):
            text = (s.get("reason") or "") + ("; " + text if text else "")
        lines.append(f"| {s['name']} | {s['status']} | {s.get('wall_s', 0):.1f} | {s['timeout_s']:.0f} | {text.replace('|', '/')} |")
    for s in doc["steps"]:
        figs = s.get("figures") or {}
        detail = {k: v for k, v in figs.items() if isinstance(v, (dict, list)) and v}
        if detail:
            lines += ["", f"## {s['name']}", "", "```json", json.dumps(detail, indent=1, default=str)[:4000], "```"]
        if s["status"] in ("failed", "timeout"):
            lines += ["", f"Output tail of {s['name']}:", "", "```", s.get("output_tail", "")[-1500:], "```"]
    lines += ["", "Each step ran in its own process group with its own timeout; a step that no longer fitted the time "
              "left is `skipped`. Full benchmark documents: the run_all JSON in the work folder."]
    return "\n".join(lines) + "\n"


def print_plan(p: dict) -> None:
    print(f"GPU acceptance plan: {len(p['steps'])} steps, budget {p['budget_s']} s "
          f"(step timeouts {p['steps_timeout_total_s']} s + {p['reserve_s']} s reserve; fits: {p['fits_budget']})")
    for s in p["steps"]:
        print(f"  {s['name']:<18} timeout {s['timeout_s']:>4} s  {s['what']}")
        print(f"  {'':<18} $ {' '.join(s['command'])}")
    print(f"reports: {p['out_dir']}/gpu-acceptance-<gpu>.json and .md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", "--plan", dest="dry_run", action="store_true", help="print and write the plan; run nothing (no GPU needed)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--only", nargs="+", default=None, help="run only these steps (names from the plan)")
    ap.add_argument("--step", choices=["preflight", "mamba"], help=argparse.SUPPRESS)
    ap.add_argument("--step-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:
        return {"preflight": step_preflight, "mamba": step_mamba}[args.step](Path(args.step_out))
    t_start = time.perf_counter()
    out_dir = Path(args.out_dir)
    if args.dry_run:
        p = plan(out_dir=out_dir)
        print_plan(p)
        _write(out_dir / "gpu-acceptance-plan.json", p)
        print(f"wrote {out_dir / 'gpu-acceptance-plan.json'}")
        return 0 if p["fits_budget"] else 1
    import torch

    if not torch.cuda.is_available():
        print(REFUSAL, file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0)
    p = plan(out_dir=out_dir, machine="gpu-acceptance-" + _slug(gpu))
    print_plan(p)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]))
    Path(p["work_dir"]).mkdir(parents=True, exist_ok=True)
    stale = Path(p["work_dir"]) / f"gpu-acceptance-{_slug(gpu)}-{PROFILE}.json"
    if stale.exists():
        stale.unlink()  # run_all merges into an existing report: start this run's afresh
    results = []
    for step in p["steps"]:
        left = BUDGET_S - RESERVE_S - (time.perf_counter() - t_start)
        row = {"name": step["name"], "what": step["what"], "command": " ".join(step["command"]), "timeout_s": step["timeout_s"]}
        if args.only and step["name"] not in args.only:
            row |= {"status": "skipped", "reason": "not in --only", "wall_s": 0.0}
        elif left < min(step["timeout_s"], 10):
            row |= {"status": "skipped", "reason": f"{left:.0f} s of the budget left", "wall_s": 0.0}
        else:
            print(f"== {step['name']} (timeout {min(step['timeout_s'], left):.0f} s)", flush=True)
            row |= run_step(step, min(step["timeout_s"], left), env)
            row["figures"] = key_figures(step)
            if step["name"] == "mamba" and Path(step["result"]).is_file():
                mdoc = json.loads(Path(step["result"]).read_text())
                if mdoc.get("status") == "skipped" and row["status"] == "passed":
                    row |= {"status": "skipped", "reason": mdoc.get("reason")}
            if step.get("benchmark") and row["status"] == "passed" and row["figures"].get("error"):
                row["status"] = "failed"  # run_all keeps going past a broken benchmark; the step did not pass
            if step["name"] == "tests-gpu" and row["status"] == "passed" and row["figures"].get("skipped") == row["figures"].get("tests"):
                row["status"] = "failed"
                row["reason"] = "every GPU test was skipped"
            print(f"== {step['name']}: {row['status']} in {row['wall_s']:.0f} s", flush=True)
        results.append(row)
    statuses = {r["status"] for r in results}
    overall = "failed" if statuses & {"failed", "timeout"} else "passed"
    doc = {"report": "benchmarks/gpu_acceptance.py", "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
           "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None,
           "overall": overall, "wall_s": time.perf_counter() - t_start, "plan": p, "steps": results}
    name = "gpu-acceptance-" + _slug(gpu)
    _write(out_dir / f"{name}.json", doc)
    (out_dir / f"{name}.md").write_text(markdown(doc))
    print(markdown(doc))
    print(f"wrote {out_dir / name}.json and .md")
    return 0 if overall == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
