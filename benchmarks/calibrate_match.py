"""Calibration of the shared-fraction estimators against paired synthetic worlds with a known answer.

For each scenario and each true shared fraction (0 = two independent worlds, the null; 0.25, 0.5, 0.75 in
``equal``, 0.5 and 0.9 in the others) two
planted worlds are drawn (:mod:`universality.match.worlds`), the second in a rotated, wider basis; one TopK
SAE is trained on each world with ``universality.train_saes``, and a second SAE on world A (world A is the
same for every fraction of a scenario) is the seed skyline. Every SAE has its own seed. Scenarios:

- ``equal``: 48 features in each world, equal firing frequencies, 48-latent SAEs on both sides (the
  original table; it also has the same-basis Paulo & Belrose row);
- ``unequal``: 48 features in A, 72 in B, Zipf-like frequencies (p ~ 1/rank), SAEs as wide as their world
  (48 and 72 latents);
- ``wide2x``: 48 features in each world, Zipf-like, 96-latent SAEs (2x the true features);
- ``wide4x``: 48 features in A, 64 in B, Zipf-like, SAEs 4x their world (192 and 256 latents).

Readings (all from :func:`universality.match.fractions.shared_fraction_readings`, threshold rho > 0.5,
fractions of A) per latent and at feature level (live, de-duplicated latents):
``activation_hungarian``, ``partial_ot`` (exact partial OT), ``seed_stable_hungarian`` (of A's units that
the second seed reproduces, the fraction B matches too) and ``calibrated_unbalanced_ot`` (calibrated
between the seed skyline and the pair's token-shuffled null); plus ``mppc_fraction`` (fraction of A's
latents whose best correlation exceeds 0.5), ``gw_small`` (GW on decoder geometry, pairs checked on
correlation) and, in ``equal`` only, ``cosine_same_basis`` (Paulo & Belrose at 0.7 on twin worlds without
the rotation).

Truths: the planted fraction f of A's features; the per-latent SAE truth (fraction of A's SAE latents whose
best planted feature, cos > 0.9, is a shared one); the feature-level SAE truth (shared features learned by
both SAEs / A's features learned by A's SAE, cos > 0.9) - what a perfect feature-level matcher reads.
Writes ``benchmarks/results/calibration.json`` and the tables in ``docs/calibration.md``.
Usage: ``python benchmarks/calibrate_match.py [--steps 150] [--batch 1024] [--scenarios equal,wide2x]``
(the defaults train 38 SAEs on 150 x 1024 tokens each - the original table used 200 x 2048 for 9 SAEs - so
that the whole run stays near 12 minutes on a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

FRACTIONS = {"equal": (0.0, 0.25, 0.5, 0.75)}  # the original table's fractions
NEW_FRACTIONS = (0.0, 0.5, 0.9)  # the other scenarios: fewer worlds keep the run under ~12 minutes
CORR_T = 0.5
D_A, D_B = 24, 32
SCENARIOS = {  # n_features (A), n_features_b, width A, width B, zipf exponent (0 = equal frequencies)
    "equal": (48, 48, 48, 48, 0.0),
    "unequal": (48, 72, 48, 72, 1.0),
    "wide2x": (48, 48, 96, 96, 1.0),
    "wide4x": (48, 64, 192, 256, 1.0),
}
SCENARIO_NOTES = {
    "equal": "48 + 48 features, equal frequencies, 48 + 48 latents",
    "unequal": "48 + 72 features, Zipf-like frequencies, 48 + 72 latents (unequal world and dictionary sizes)",
    "wide2x": "48 + 48 features, Zipf-like frequencies, 96 + 96 latents (2x overcomplete)",
    "wide4x": "48 + 64 features, Zipf-like frequencies, 192 + 256 latents (4x overcomplete, unequal sizes)",
}


def make_worlds(scenarios: list[str]) -> dict:
    from universality.match.worlds import PairedWorldConfig, make_paired_world

    worlds = {}
    for sc in scenarios:
        n_a, n_b, _, _, zipf = SCENARIOS[sc]
        for f in FRACTIONS.get(sc, NEW_FRACTIONS):
            tag = int(round(f * 100))
            kw = dict(n_features=n_a, n_features_b=n_b, shared_fraction=f, mean_active=3.0, decay=0.0, zipf=zipf,
                      seed=11)
            worlds[f"{sc}{tag}"] = make_paired_world(PairedWorldConfig(d_a=D_A, d_b=D_B, **kw))
            if sc == "equal":
                worlds[f"same{tag}"] = make_paired_world(PairedWorldConfig(d_a=D_A, d_b=D_A, rotate=False, **kw))
    return worlds


def train_all(worlds: dict, scenarios: list[str], steps: int, batch: int, k: int, lr: float = 1e-2) -> dict:
    """One ``train_saes`` pass over every world: a TopK SAE on each side of each world plus a skyline SAE
    on each scenario's world A; every SAE has a distinct seed."""
    from universality.match.worlds import PairedSource
    from universality.sae import sae_config
    from universality.train import TrainConfig, train_saes

    cfgs, seed = [], 100
    for name, w in worlds.items():
        sc = "equal" if name.startswith("same") else name.rstrip("0123456789")
        _, _, width_a, width_b, _ = SCENARIOS[sc]
        for side, d, width in (("a", w.cfg.d_a, width_a), ("b", w.cfg.d_b, width_b)):
            seed += 1
            cfgs.append(TrainConfig(sae_config("topk", d_in=d, d_sae=width, k=k), site=f"{name}/{side}", seed=seed,
                                    lr=lr, name=f"{name}/{side}"))
    for sc in scenarios:
        seed += 1
        width_a = SCENARIOS[sc][2]
        cfgs.append(TrainConfig(sae_config("topk", d_in=D_A, d_sae=width_a, k=k), site=f"{sc}0/a", seed=seed, lr=lr,
                                name=f"{sc}/skyline"))
    return train_saes(PairedSource(worlds, batch, seed=0, n_batches=steps), cfgs, steps=steps, progress=False)


def _best_planted(sae, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    W = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
    return (W @ D.T).max(1)


def sae_truth(sae, D: torch.Tensor, shared_idx: torch.Tensor) -> float:
    """Fraction of the SAE's latents whose best planted feature (cos > 0.9) is a shared one."""
    best_v, best_i = _best_planted(sae, D)
    is_shared = torch.zeros(D.shape[0], dtype=torch.bool)
    is_shared[shared_idx] = True
    return float(((best_v > 0.9) & is_shared[best_i]).float().mean())


def learned_features(sae, D: torch.Tensor) -> set[int]:
    """Planted features that some latent of the SAE recovers (cos > 0.9)."""
    best_v, best_i = _best_planted(sae, D)
    return set(best_i[best_v > 0.9].tolist())


def feature_truth(a, b, w) -> float:
    """Shared features learned by both SAEs / features of A learned by A's SAE."""
    la, lb = learned_features(a, w.D_a), learned_features(b, w.D_b)
    both = sum(1 for i, j in w.shared_pairs.tolist() if i in la and j in lb)
    return both / max(len(la), 1)


def run(scenarios: list[str], steps: int, k: int, batch: int, tokens: int, n_perm: int) -> dict:
    from universality.match import encode_codes, match
    from universality.match import summary as sm
    from universality.match.baselines import permutation_test, shuffle_tokens
    from universality.match.fractions import shared_fraction_readings
    from universality.match.similarity import dense_similarity
    from universality.match.views import decoder_directions, encoder_directions

    worlds = make_worlds(scenarios)
    t0 = time.time()
    saes = train_all(worlds, scenarios, steps, batch, k)
    train_s = time.time() - t0
    print(f"trained {len(saes)} SAEs in {train_s:.0f}s", flush=True)
    out = {}
    for sc in scenarios:
        rows = []
        for f in FRACTIONS.get(sc, NEW_FRACTIONS):
            t0 = time.time()
            tag = int(round(f * 100))
            w, a, b = worlds[f"{sc}{tag}"], saes[f"{sc}{tag}/a"], saes[f"{sc}{tag}/b"]
            s = w.sample(tokens, seed=123)
            ca, cb = encode_codes(a, s.x_a, s.token_ids), encode_codes(b, s.x_b, s.token_ids)
            sky = encode_codes(saes[f"{sc}/skyline"], s.x_a, s.token_ids)
            r = shared_fraction_readings(ca, cb, skyline_a=sky, corr_threshold=CORR_T, seed=7)
            S = dense_similarity(ca, cb, "pearson")
            est = {f"{level}.{e}": (r[level][e] or {}).get("fraction_of_a", float("nan"))
                   for level in ("per_latent", "feature_level")
                   for e in ("activation_hungarian", "partial_ot", "seed_stable_hungarian",
                             "calibrated_unbalanced_ot")}
            est["mppc_fraction"] = float((S.max(1).values > CORR_T).float().mean())
            gw = match(a, b, method="gw", view="decoder", device="cpu")
            est["gw_small"] = float(np.mean(S.numpy()[gw.pairs[:, 0], gw.pairs[:, 1]] > CORR_T)) if len(gw) else 0.0
            stat = lambda x, y: match(x, y, view="activations", device="cpu").fraction_above(CORR_T, x.n)  # noqa: E731
            pt = permutation_test(stat, ca, cb, lambda c, rr: shuffle_tokens(c, rr), n_perm=n_perm)
            row = {"true_fraction": f, "true_fraction_of_b": w.true_fraction_of_b,
                   "sae_truth": sae_truth(a, w.D_a, w.shared_pairs[:, 0]), "feature_truth": feature_truth(a, b, w),
                   "estimates": est, "fraction_of_b": {
                       f"{level}.{e}": (r[level][e] or {}).get("fraction_of_b", float("nan"))
                       for level in ("per_latent", "feature_level")
                       for e in ("activation_hungarian", "partial_ot", "seed_stable_hungarian",
                                 "calibrated_unbalanced_ot")},
                   "counts": r["counts"], "p_value_activation_corr": pt["p_value"],
                   "unbalanced_reg_m": r["per_latent"]["calibrated_unbalanced_ot"]["reg_m"],
                   "unbalanced_reg": r["per_latent"]["calibrated_unbalanced_ot"]["reg"],
                   "unbalanced_anchor_mass": r["per_latent"]["calibrated_unbalanced_ot"]["anchor_mass"]}
            if sc == "equal":
                w2, a2, b2 = worlds[f"same{tag}"], saes[f"same{tag}/a"], saes[f"same{tag}/b"]
                est["cosine_same_basis"] = sm.shared_fraction(encoder_directions(a2), decoder_directions(a2),
                                                              encoder_directions(b2), decoder_directions(b2),
                                                              (0.7,))[0.7]
                row["sae_truth_same_basis"] = sae_truth(a2, w2.D_a, w2.shared_pairs[:, 0])
            row["seconds"] = time.time() - t0
            rows.append(row)
            print(f"{sc} f={f}: head={est['feature_level.activation_hungarian']:.2f} "
                  f"latent={est['per_latent.activation_hungarian']:.2f} counts={r['counts']} "
                  f"({row['seconds']:.0f}s)", flush=True)
        n_a, n_b, wa, wb, zipf = SCENARIOS[sc]
        out[sc] = {"rows": rows, "settings": {"n_features_a": n_a, "n_features_b": n_b, "width_a": wa, "width_b": wb,
                                              "zipf": zipf, "note": SCENARIO_NOTES[sc]}}
    return {"scenarios": out, "settings": {"steps": steps, "batch": batch, "k": k, "d_a": D_A, "d_b": D_B,
                                           "tokens": tokens, "corr_threshold": CORR_T, "n_perm": n_perm,
                                           "train_seconds": train_s}}


METHOD_NOTES = {
    "per_latent.activation_hungarian": "Hungarian on activation correlation, pairs with rho > 0.5 / all latents of A",
    "feature_level.activation_hungarian": "the same over live, de-duplicated latent groups (the headline)",
    "per_latent.partial_ot": "exact partial OT, mass with marginal cost <= 1 - 0.5 / all latents of A",
    "feature_level.partial_ot": "the same over latent groups",
    "per_latent.seed_stable_hungarian": "of A's latents a second seed reproduces, the fraction B matches too",
    "feature_level.seed_stable_hungarian": "the same over latent groups",
    "per_latent.calibrated_unbalanced_ot": "unbalanced-OT mass between seed skyline and token-shuffled null",
    "feature_level.calibrated_unbalanced_ot": "the same over latent groups",
    "mppc_fraction": "latents of A whose best correlation exceeds 0.5 (no one-to-one constraint)",
    "gw_small": "Gromov-Wasserstein on decoder geometry, pairs checked on correlation > 0.5",
    "cosine_same_basis": "Paulo & Belrose shared fraction at 0.7 (same basis, no rotation)",
}


def markdown(result: dict) -> str:
    parts = []
    for sc, block in result["scenarios"].items():
        rows = block["rows"]
        parts.append(f"### `{sc}`: {block['settings']['note']}\n")
        head = "| reading (fraction of A) | " + " | ".join(f"true {r['true_fraction']:.2f}" for r in rows)
        lines = [head + " | max abs error |", "|" + "---|" * (len(rows) + 2)]
        lines.append("| SAE truth, per latent | " + " | ".join(f"{r['sae_truth']:.2f}" for r in rows) + " | |")
        lines.append("| SAE truth, feature level | " + " | ".join(f"{r['feature_truth']:.2f}" for r in rows) + " | |")
        if "sae_truth_same_basis" in rows[0]:
            lines.append("| SAE truth, per latent (same-basis worlds) | "
                         + " | ".join(f"{r['sae_truth_same_basis']:.2f}" for r in rows) + " | |")
        a0 = rows[0]["counts"]["a"]
        lines.append("| dead / duplicate latents of A (f = 0) | "
                     + " | ".join(f"{r['counts']['a']['dead']} / {r['counts']['a']['duplicates']}" for r in rows)
                     + f" | of {a0['latents']} |")
        for m in METHOD_NOTES:
            if m not in rows[0]["estimates"]:
                continue
            vals = [r["estimates"][m] for r in rows]
            err = max(abs(v - r["true_fraction"]) for v, r in zip(vals, rows))
            lines.append(f"| `{m}` | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {err:.2f} |")
        lines.append("| p-value of activation matching (token shuffles) | "
                     + " | ".join(f"{r['p_value_activation_corr']:.3f}" for r in rows) + " | |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=8000)
    p.add_argument("--n-perm", type=int, default=19)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration.json")
    p.add_argument("--doc", type=Path, default=Path(__file__).parents[1] / "docs" / "calibration.md")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(2)
    from universality.io import replace_marked_block, write_json

    scenarios = [s for s in args.scenarios.split(",") if s]
    t0 = time.time()
    result = run(scenarios, args.steps, args.k, args.batch, args.tokens, args.n_perm)
    result["settings"]["total_seconds"] = time.time() - t0
    write_json(args.out, result)
    table = markdown(result)
    replace_marked_block(args.doc, "calibration-table", table)
    print(table)
    print(f"total {result['settings']['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
