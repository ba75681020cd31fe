"""Features per second of the functional tests: ablation effects and causal links, one latent per
forward pass against blocks of latents per pass (the batch repeated once per latent of a block).

* ``ablation``: :func:`universality.eval.ablation.ablation_effects` over ``--latents`` latents of a
  dictionary at one site, ``batch_features`` = 1 and ``--block``;
* ``links``: :func:`universality.eval.links.causal_links` from that site to the later sites of the
  model (residual, attention and MLP outputs), the same two settings.

plus ``auto`` (``batch_features=None``: :func:`~universality.eval.ablation.features_per_pass`
picks the block from the tokens per pass). The settings run in the same process, alternating, best of ``--repeats``; the ratio is the speed-up
of batching (the results are identical: ``max_abs_diff``). The model is a GPT-2 built from a config
(``--d-model``, ``--layers``; random weights: speed does not depend on them), on the CPU with one
thread unless ``--threads``. Writes ``benchmarks/results/links-<machine>.json``.

Usage: ``python benchmarks/links.py [--latents 64] [--block 16] [--spans 8] [--pos 64]``
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from models.testing import make_tiny_model  # noqa: E402
from universality.eval.ablation import ablation_effects  # noqa: E402
from universality.eval.links import LinkConfig, causal_links  # noqa: E402
from universality.io import write_json  # noqa: E402
from universality.sae import make_sae, sae_config  # noqa: E402


def _timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, default=64)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--spans", type=int, default=8)
    ap.add_argument("--pos", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from bench_memory import PeakMemory

    mem = PeakMemory().start()
    torch.set_num_threads(args.threads)
    d = args.d_model
    with tempfile.TemporaryDirectory(prefix="bench-links-") as tmp:
        adapter = models.load(make_tiny_model("gpt2", Path(tmp) / "gpt2", n_embd=d, n_layer=args.layers, n_head=4,
                                              n_positions=max(128, args.pos)))
    src = "blocks.0.hook_resid_post"
    later = [s for s in sorted(adapter.site_table) if s.layer == 1 and s.hook in ("hook_attn_out", "hook_mlp_out", "hook_resid_post")]
    sae = make_sae(sae_config("topk", d, d * args.expansion, k=16), seed=1)
    targets = {s.name: make_sae(sae_config("topk", d, d * args.expansion, k=16), seed=10 + i) for i, s in enumerate(later)}
    ids = torch.randint(0, adapter.model.config.vocab_size, (args.spans, args.pos), generator=torch.Generator().manual_seed(0))
    latents = list(range(args.latents))
    results: dict = {"machine": "cpu-" + (platform.node() or "host"), "torch": torch.__version__, "threads": args.threads,
                     "model": {"family": "gpt2", "d_model": d, "layers": args.layers},
                     "tokens_per_pass": args.spans * args.pos, "latents": args.latents, "block": args.block,
                     "targets": [s.name for s in later], "d_sae": d * args.expansion}
    for name, run in (("ablation", lambda b: ablation_effects(adapter, sae, src, latents, ids, progress=False, batch_features=b)),
                      ("links", lambda b: causal_links(adapter, (src, sae), targets, ids, latents=latents,
                                                       cfg=LinkConfig(batch_features=b), progress=False))):
        run(args.block)  # warm-up
        t1, one = _timed(lambda: run(1), args.repeats)
        tb, many = _timed(lambda: run(args.block), args.repeats)
        if name == "links":
            diff = max(float((one.shares[k] - many.shares[k]).abs().max()) for k in one.shares)
        else:
            diff = float((one - many).abs().max())
        ta, _ = _timed(lambda: run(None), args.repeats)
        results[name] = {"one_per_pass_s": t1, "block_s": tb, "auto_s": ta, "features_per_s_one": args.latents / t1,
                         "features_per_s_block": args.latents / tb, "features_per_s_auto": args.latents / ta,
                         "speedup": t1 / tb, "auto_speedup": t1 / ta, "max_abs_diff": diff}
    results["memory"] = mem.stop().as_dict()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"links-{results['machine']}.json"
    write_json(out, results)
    print(out)
    for k in ("ablation", "links"):
        print(k, {a: round(v, 4) for a, v in results[k].items()})


if __name__ == "__main__":
    main()
