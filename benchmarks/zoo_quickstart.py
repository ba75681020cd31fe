"""Time the quickstart zoo: one shared tokenizer and the tiny presets trained on the shipped corpus.

    python benchmarks/zoo_quickstart.py [--presets tiny_gpt2 tiny_mamba ...] [--threads 2]
        [--out benchmarks/results/zoo_quickstart.json]

Writes the seconds to read the corpus, train the tokenizer and pack the corpus (once per process;
``train_lm`` reuses the packed rows), then per preset: wall seconds of ``train_lm`` (checkpoints and
evals included), parameter count, final train loss (mean of the last 10 updates) and eval loss
at step 0 and at the last step. The machine's load average is recorded: on a shared machine the
timings are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from universality.io import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny_gpt2", "tiny_pythia", "tiny_mamba", "tiny_moe"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--out", default="benchmarks/results/zoo_quickstart.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from universality.data import shakespeare
    from universality.zoo import load_preset, read_manifest, train_lm, train_tokenizer
    from universality.zoo import tokenizer_hash
    from universality.zoo.corpus import as_subset, cached_rows
    from universality.zoo.families import mamba_scan

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_avg_1m_at_start": os.getloadavg()[0],
                    "python": platform.python_version(), "torch": torch.__version__, "mamba_scan": mamba_scan()},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        docs = list(shakespeare())
        results["read_corpus_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tok = train_tokenizer([d.text for d in docs], args.vocab, Path(tmp) / "tokenizer")
        results["train_tokenizer_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()  # pack once (train_lm reuses the packed rows within this process)
        subset = as_subset(docs)
        rows = cached_rows((tokenizer_hash(tok), subset.hash, 64), subset.documents, tok, 64)
        results["pack_corpus_s"] = time.perf_counter() - t0
        results["corpus_tokens"] = int(rows.numel())
        for name in args.presets:
            cfg = load_preset(name, vocab_size=args.vocab)
            t0 = time.perf_counter()
            out = train_lm(cfg, docs, Path(tmp) / name, tokenizer=tok, progress=False)
            seconds = time.perf_counter() - t0
            m = read_manifest(out)
            results["models"][name] = {
                "family": cfg.family, "seconds": round(seconds, 2), "ms_per_step": round(1000 * seconds / cfg.steps, 1),
                "n_params": m["n_params"],
                "steps": cfg.steps, "batch_size": cfg.batch_size, "context_length": cfg.context_length,
                "final_train_loss": round(m["final_train_loss"], 4),
                "eval_loss_step0": round(m["eval_loss"]["step0"], 4),
                "eval_loss_final": round(m["eval_loss"][f"step{cfg.steps}"], 4),
            }
            print(name, results["models"][name], flush=True)
    results["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
