"""Calibration of the two arms - a crosscoder, and separate dictionaries matched to each other - on planted
N-source worlds with a known answer (:mod:`universality.crosscoder.worlds`).

Scenarios (two sources unless said; 12 shared features, 6 exclusive per source, 4 weakened ones present in
both sources but at ``weak`` amplitude in one, power-law firing frequencies):

- ``same_basis``: widths 24 + 24 in one basis, source 1 five times larger (gain), weakened at 5%;
- ``weak30``: as ``same_basis`` with the weakened features at 30% (a feature plainly present in both:
  any latent that calls it exclusive is a false exclusive);
- ``unequal``: widths 24 + 32, each source in its own rotated basis (Pythia-vs-Mamba-like; Latent
  Scaling needs one space and is not defined);
- ``wide4x``: as ``same_basis`` with dictionaries about 4x the true features (dead and duplicate latents);
- ``series``: four sources of width 16 (checkpoints), 8 shared, 3 rotating and 6 features born at
  sources 1, 2, 3 - the planted births.

Arms, every dictionary with its own seed: ``batchtopk`` crosscoder (k = 3, Minder et al. 2025) and ``l1``
crosscoder (L1 weighted by the sum of per-source decoder norms, Lindsey et al. 2024) of width ``2 x`` the
per-source dictionaries; ``matching``: one TopK SAE (k = 3) per source, paired by the Hungarian assignment
on activation correlation at rho >= 0.5 (:func:`universality.crosscoder.known_answer.matching_report`).
Each arm is trained with ``--seeds`` seeds; the table gives the mean and, in brackets, the spread (max -
min) over seeds. Scoring is :mod:`universality.crosscoder.known_answer` (decoder cosine >= 0.9 to a planted
direction in every source where it lives).

Writes ``benchmarks/results/calibration_crosscoder.json`` and the tables in ``docs/calibration.md``.
Usage: ``python benchmarks/calibrate_crosscoder.py [--steps 1500] [--seeds 2] [--scenarios same_basis,series]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

BATCH, LR, K = 256, 1e-2, 3
L1_COEFF = 1.0
TWO = dict(n_shared=12, n_exclusive=6, n_weakened=4)
SCENARIOS: dict[str, dict[str, Any]] = {  # world fields, per-source dictionary width
    "same_basis": dict(world=dict(widths=(24, 24), weak_ratio=0.05, gains=(1.0, 5.0), rotate=False, **TWO), width=32),
    "weak30": dict(world=dict(widths=(24, 24), weak_ratio=0.3, rotate=False, **TWO), width=32),
    "unequal": dict(world=dict(widths=(24, 32), weak_ratio=0.05, gains=(1.0, 5.0), rotate=True, **TWO), width=32),
    "wide4x": dict(world=dict(widths=(24, 24), weak_ratio=0.05, rotate=False, **TWO), width=96),
    "series": dict(world=dict(widths=(16,) * 4, n_shared=8, n_exclusive=0, n_rotated=3, rotation_deg=90.0,
                              births=(1, 2, 3, 1, 2, 3), rotate=False), width=24),
}
NOTES = {
    "same_basis": "24 + 24 dims, one basis, gain 5 on source 1, weakened at 5%, 2 x 32-latent SAEs vs 64-latent crosscoders",
    "weak30": "24 + 24 dims, one basis, weakened at 30%, 2 x 32 vs 64 latents",
    "unequal": "24 + 32 dims, two rotated bases, gain 5, 2 x 32 vs 64 latents",
    "wide4x": "24 + 24 dims, weakened at 5%, 2 x 96 vs 192 latents (about 4x the 22 features of a source)",
    "series": "4 checkpoints of 16 dims, 8 shared, 3 rotating, 6 born at sources 1-3; 4 x 24-latent SAEs vs 48-latent crosscoders",
}
ARMS = ("batchtopk", "l1", "matching")


def world_of(name: str, seed: int = 0):
    from universality.crosscoder.worlds import CrossWorldConfig, make_cross_world

    return make_cross_world(CrossWorldConfig(seed=seed, **SCENARIOS[name]["world"]))


def train_arms(world, width: int, seeds: int, steps: int, arms: tuple[str, ...] = ARMS) -> dict[str, list]:
    """``{arm: [dictionary or tuple of per-source dictionaries, one per seed]}``; every dictionary has its own seed."""
    from universality.sae import sae_config
    from universality.sae.crosscoder_config import crosscoder_config
    from universality.train import TrainConfig, train_saes

    widths = world.cfg.widths
    cc_width = 2 * width
    joint, per_source = [], []
    for s in range(seeds):
        if "batchtopk" in arms:
            joint.append(("batchtopk", TrainConfig(crosscoder_config(widths, cc_width, k=K), site="joint", lr=LR, seed=100 + s,
                                                   name=f"joint/batchtopk-s{s}")))
        if "l1" in arms:
            joint.append(("l1", TrainConfig(crosscoder_config(widths, cc_width, sparsity="l1", sparsity_coeff=L1_COEFF),
                                            site="joint", lr=LR, seed=200 + s, name=f"joint/l1-s{s}")))
        if "matching" in arms:
            per_source.append([TrainConfig(sae_config("topk", w, width, k=K), site=f"s{i}", lr=LR, seed=300 + 10 * s + i,
                                           name=f"s{i}/topk-s{s}") for i, w in enumerate(widths)])
    out: dict[str, list] = {a: [] for a in arms}
    if joint:
        got = train_saes(world.source(BATCH), [c for _, c in joint], steps=steps, progress=False)
        for arm, c in joint:
            out[arm].append(got[c.key])
    if per_source:
        got = train_saes(world.source(BATCH, site=None), [c for cs in per_source for c in cs], steps=steps, progress=False)
        for cs in per_source:
            out["matching"].append(tuple(got[c.key] for c in cs))
    return out


def score(world, arm: str, dictionary, xs: list[torch.Tensor]) -> dict[str, Any]:
    from universality.crosscoder.known_answer import birth_report, known_answer_report, matching_report

    if world.cfg.n_sources == 2:
        if arm == "matching":
            return matching_report(world, dictionary, tuple(xs))
        return known_answer_report(world, dictionary, torch.cat(xs, dim=1))
    if arm == "matching":
        return birth_report(world, dictionaries=dictionary, xs=tuple(xs))["matching"]
    return birth_report(world, crosscoder=dictionary, xs=tuple(xs))["crosscoder"]


TWO_SOURCE_KEYS = {
    "shared recall": lambda r: r["shared"]["recall"],
    "shared precision": lambda r: r["shared"]["precision"],
    "exclusive recall": lambda r: r["exclusive"]["recall"],
    "exclusive precision": lambda r: r["exclusive"]["precision"],
    "false-exclusive rate": lambda r: r["false_exclusive_rate"],
    "false-exclusive rate after Latent Scaling": lambda r: r["false_exclusive_rate_latent_scaling"],
}
SERIES_KEYS = {
    "born features found": lambda r: r["found"],
    "birth within one source": lambda r: r["within_one"],
    "birth exact": lambda r: r["exact"],
    "false births (steady features read as born later)": lambda r: r["false_birth_rate"],
}


def summarise(reports: list[dict], keys: dict) -> dict[str, dict[str, float | None]]:
    out = {}
    for name, get in keys.items():
        vals = [get(r) for r in reports]
        vals = [float(v) for v in vals if v is not None and not (isinstance(v, float) and np.isnan(v))]
        out[name] = {"mean": float(np.mean(vals)), "spread": float(np.ptp(vals))} if vals else {"mean": None, "spread": None}
    return out


def run(scenarios: list[str], steps: int, seeds: int, arms: tuple[str, ...] = ARMS) -> dict:
    result: dict[str, Any] = {"settings": {"steps": steps, "seeds": seeds, "batch": BATCH, "lr": LR, "k": K, "l1_coeff": L1_COEFF,
                                           "arms": list(arms)}, "scenarios": {}}
    for name in scenarios:
        t0 = time.time()
        world = world_of(name)
        xs, _ = world.sample(4096, seed=99)
        trained = train_arms(world, SCENARIOS[name]["width"], seeds, steps, arms)
        reports = {arm: [score(world, arm, d, xs) for d in ds] for arm, ds in trained.items()}
        keys = SERIES_KEYS if world.cfg.n_sources > 2 else TWO_SOURCE_KEYS
        result["scenarios"][name] = {"note": NOTES[name], "world": {k: list(v) if isinstance(v, tuple) else v
                                                                     for k, v in SCENARIOS[name]["world"].items()},
                                     "summary": {arm: summarise(rs, keys) for arm, rs in reports.items()},
                                     "reports": {arm: [_jsonable(r) for r in rs] for arm, rs in reports.items()},
                                     "seconds": time.time() - t0}
    return result


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and np.isnan(x):
        return None
    return x


def _cell(v: dict) -> str:
    if v["mean"] is None:
        return "n/a"
    return f"{v['mean']:.2f}" + (f" ({v['spread']:.2f})" if v["spread"] > 0 else "")


def markdown(result: dict) -> str:
    parts = []
    for name, block in result["scenarios"].items():
        arms = list(block["summary"])
        rows = list(next(iter(block["summary"].values())))
        lines = [f"### `{name}`: {block['note']}\n", "| reading | " + " | ".join(f"`{a}`" for a in arms) + " |",
                 "|---|" + "---|" * len(arms)]
        for row in rows:
            lines.append(f"| {row} | " + " | ".join(_cell(block["summary"][a][row]) for a in arms) + " |")
        parts.append("\n".join(lines) + "\n")
    s = result["settings"]
    parts.append(f"({s['seeds']} seeds per arm, {s['steps']} steps of {s['batch']} tokens; mean (spread over seeds); "
                 f"`n/a`: not defined for that arm or world.)\n")
    return "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration_crosscoder.json")
    p.add_argument("--doc", type=Path, default=Path(__file__).parents[1] / "docs" / "calibration.md")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(2)
    from universality.errors import ConfigError
    from universality.io import replace_marked_block, write_json

    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        raise ConfigError(f"unknown scenario(s) {', '.join(unknown)}", f"use some of {', '.join(SCENARIOS)}")
    t0 = time.time()
    result = run(scenarios, args.steps, args.seeds)
    result["settings"]["total_seconds"] = time.time() - t0
    write_json(args.out, result)
    table = markdown(result)
    replace_marked_block(args.doc, "crosscoder-table", table)
    print(table)
    print(f"total {result['settings']['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
