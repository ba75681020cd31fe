"""Calibration of the shared-fraction estimators against paired synthetic worlds with a known answer.

For each true shared fraction (0 = two independent worlds, the null; 0.25, 0.5, 0.75) two planted worlds
are drawn (:mod:`universality.match.worlds`), the second in a rotated, wider basis; one TopK SAE is trained
on each world with ``universality.train_saes``; a second-seed SAE on world A is the seed skyline. Every
method then estimates the shared fraction of A's latents:

- ``activation_corr``: Hungarian on activation correlation over shared tokens, fraction of pairs with
  rho > 0.5 (the platform's default reading);
- ``mppc_fraction``: fraction of A latents whose max correlation exceeds 0.5 (no one-to-one constraint);
- ``unbalanced_ot``: unbalanced-OT mass on the correlation cost, calibrated between the seed skyline
  (two seeds on world A) and the pair's own token-shuffled null (``transport.calibrated_mass``);
- ``partial_ot``: largest partial-OT mass whose marginal cost stays below 1 - 0.5;
- ``gw_small``: Gromov-Wasserstein on the SAEs' within-dictionary decoder geometry, pairs then checked on
  activation correlation (> 0.5);
- ``cosine_same_basis``: the same worlds without the rotation (``rotate=False``, same width), SAEs
  trained there, Paulo & Belrose shared fraction at 0.7 on encoder+decoder cosines.

The truth is reported two ways: the world's planted fraction and the SAE-level truth (fraction of A's
SAE latents whose best planted feature, cos > 0.9, is a shared one). Writes
``benchmarks/results/calibration.json`` and the table in ``docs/calibration.md``.
Usage: ``python benchmarks/calibrate_match.py [--steps 200] [--batch 2048] [--features 48]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

FRACTIONS = (0.0, 0.25, 0.5, 0.75)
CORR_T = 0.5


def train_all(worlds: dict, steps: int, batch: int, k: int, lr: float = 1e-2) -> dict:
    """One ``train_saes`` pass over every world: a TopK SAE on each side, plus a second seed on the
    null world's side A (the seed-to-seed skyline)."""
    from universality.match.worlds import PairedSource
    from universality.sae import sae_config
    from universality.train import TrainConfig, train_saes

    cfgs = []
    for name, w in worlds.items():
        for side, d in (("a", w.cfg.d_a), ("b", w.cfg.d_b)):
            sae = sae_config("topk", d_in=d, d_sae=w.cfg.n_features, k=k)
            cfgs.append(TrainConfig(sae, site=f"{name}/{side}", seed=0, lr=lr, name=f"{name}/{side}"))
    w0 = worlds["rot0"]
    cfgs.append(TrainConfig(sae_config("topk", d_in=w0.cfg.d_a, d_sae=w0.cfg.n_features, k=k), site="rot0/a",
                            seed=1, lr=lr, name="rot0/a-seed1"))
    return train_saes(PairedSource(worlds, batch, seed=0, n_batches=steps), cfgs, steps=steps, progress=False)


def sae_truth(sae, D: torch.Tensor, shared_idx: torch.Tensor) -> float:
    """Fraction of the SAE's latents whose best planted feature (cos > 0.9) is a shared one."""
    W = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
    cos = W @ D.T
    best_v, best_i = cos.max(1)
    is_shared = torch.zeros(D.shape[0], dtype=torch.bool)
    is_shared[shared_idx] = True
    return float(((best_v > 0.9) & is_shared[best_i]).float().mean())


def run(steps: int, n: int, d_a: int, d_b: int, k: int, batch: int, tokens: int, n_perm: int) -> dict:
    from universality.match import encode_codes, match
    from universality.match import summary as sm
    from universality.match import transport as tr
    from universality.match.baselines import permutation_test, shuffle_tokens
    from universality.match.similarity import dense_similarity
    from universality.match.worlds import PairedWorldConfig, make_paired_world

    from universality.match.views import decoder_directions, encoder_directions

    worlds = {}
    for f in FRACTIONS:
        tag = int(f * 100)
        worlds[f"rot{tag}"] = make_paired_world(PairedWorldConfig(
            n_features=n, d_a=d_a, d_b=d_b, shared_fraction=f, mean_active=3.0, decay=0.0, seed=11))
        worlds[f"same{tag}"] = make_paired_world(PairedWorldConfig(
            n_features=n, d_a=d_a, d_b=d_a, shared_fraction=f, mean_active=3.0, decay=0.0, seed=11, rotate=False))
    t0 = time.time()
    saes = train_all(worlds, steps, batch, k)
    print(f"trained {len(saes)} SAEs in {time.time() - t0:.0f}s", flush=True)
    rows, S_of = [], {}
    for f in FRACTIONS:
        t0 = time.time()
        tag = int(f * 100)
        w, a, b = worlds[f"rot{tag}"], saes[f"rot{tag}/a"], saes[f"rot{tag}/b"]
        s = w.sample(tokens, seed=123)
        ca, cb = encode_codes(a, s.x_a, s.token_ids), encode_codes(b, s.x_b, s.token_ids)
        S = dense_similarity(ca, cb, "pearson")
        S_of[f] = (S, dense_similarity(ca, shuffle_tokens(cb, 7), "pearson"))  # pair, token-shuffled null
        if f == 0.0:  # skyline: two seeds on world A, same tokens
            sky_S = dense_similarity(ca, encode_codes(saes["rot0/a-seed1"], s.x_a, s.token_ids), "pearson")
        hung = match(ca, cb, view="activations", device="cpu")
        est = {"activation_corr": hung.fraction_above(CORR_T, n),
               "mppc_fraction": float((S.max(1).values > CORR_T).float().mean())}
        stat = lambda x, y: match(x, y, view="activations", device="cpu").fraction_above(CORR_T, x.n)  # noqa: E731
        pt = permutation_test(stat, ca, cb, lambda c, r: shuffle_tokens(c, r), n_perm=n_perm)
        est["partial_ot"] = tr.partial_shared_fraction(S, CORR_T, grid=20)["shared_fraction"]
        gw = match(a, b, method="gw", view="decoder", device="cpu")
        est["gw_small"] = float(np.mean(S.numpy()[gw.pairs[:, 0], gw.pairs[:, 1]] > CORR_T)) if len(gw) else 0.0
        w2, a2, b2 = worlds[f"same{tag}"], saes[f"same{tag}/a"], saes[f"same{tag}/b"]
        est["cosine_same_basis"] = sm.shared_fraction(encoder_directions(a2), decoder_directions(a2),
                                                      encoder_directions(b2), decoder_directions(b2), (0.7,))[0.7]
        rows.append({"true_fraction": f, "sae_truth": sae_truth(a, w.D_a, w.shared_pairs[:, 0]),
                     "sae_truth_same_basis": sae_truth(a2, w2.D_a, w2.shared_pairs[:, 0]),
                     "estimates": est, "p_value_activation_corr": pt["p_value"],
                     "null_mean_activation_corr": pt["null_mean"], "seconds": time.time() - t0})
        print(f"f={f}: {est} p={pt['p_value']:.3f} ({time.time() - t0:.0f}s)", flush=True)
    # unbalanced OT, calibrated between the seed skyline and the independent-worlds null
    for row in rows:
        S, S_null = S_of[row["true_fraction"]]
        cal = tr.calibrated_mass(S, sky_S, S_null, reg_m_grid=(0.01, 0.03, 0.1, 0.3))
        row["estimates"]["unbalanced_ot"] = cal["shared_fraction"]
        row["unbalanced_reg_m"] = cal["reg_m"]
        row["unbalanced_raw_mass"] = cal["mass"]
    return {"rows": rows, "settings": {"steps": steps, "n_features": n, "d_a": d_a, "d_b": d_b, "k": k,
                                       "batch": batch, "tokens": tokens, "corr_threshold": CORR_T}}


METHOD_NOTES = {
    "activation_corr": "Hungarian on activation correlation, fraction of pairs with rho > 0.5",
    "mppc_fraction": "fraction of latents whose best correlation exceeds 0.5 (no one-to-one constraint)",
    "unbalanced_ot": "unbalanced-OT mass, calibrated between seed skyline and token-shuffled null",
    "partial_ot": "largest partial-OT mass with marginal cost <= 1 - 0.5",
    "gw_small": "Gromov-Wasserstein on decoder geometry, pairs checked on correlation > 0.5",
    "cosine_same_basis": "Paulo & Belrose shared fraction at 0.7 (same basis, no rotation)",
}


def markdown(result: dict) -> str:
    rows = result["rows"]
    methods = list(METHOD_NOTES)
    head = "| method | " + " | ".join(f"true {r['true_fraction']:.2f}" for r in rows) + " | max abs error |"
    lines = [head, "|" + "---|" * (len(rows) + 2)]
    lines.append("| SAE-level truth (rotated worlds) | " + " | ".join(f"{r['sae_truth']:.2f}" for r in rows) + " | |")
    lines.append("| SAE-level truth (same-basis worlds) | "
                 + " | ".join(f"{r['sae_truth_same_basis']:.2f}" for r in rows) + " | |")
    for m in methods:
        vals = [r["estimates"].get(m, float("nan")) for r in rows]
        err = max(abs(v - r["true_fraction"]) for v, r in zip(vals, rows))
        lines.append(f"| `{m}` | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {err:.2f} |")
    lines.append("| p-value of `activation_corr` (token shuffles) | "
                 + " | ".join(f"{r['p_value_activation_corr']:.3f}" for r in rows) + " | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--features", type=int, default=48)
    p.add_argument("--d-a", type=int, default=24)
    p.add_argument("--d-b", type=int, default=32)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--tokens", type=int, default=8000)
    p.add_argument("--n-perm", type=int, default=19)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration.json")
    p.add_argument("--doc", type=Path, default=Path(__file__).parents[1] / "docs" / "calibration.md")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(2)
    from universality.io import atomic_write_text, write_json

    result = run(args.steps, args.features, args.d_a, args.d_b, args.k, args.batch, args.tokens, args.n_perm)
    write_json(args.out, result)
    table = markdown(result)
    doc = args.doc.read_text() if args.doc.is_file() else ""
    start, end = "<!-- calibration-table:start -->", "<!-- calibration-table:end -->"
    if start in doc and end in doc:
        doc = doc[: doc.index(start) + len(start)] + "\n" + table + "\n" + doc[doc.index(end):]
    else:
        doc = doc + f"\n{start}\n{table}\n{end}\n"
    atomic_write_text(args.doc, doc)
    print(table)


if __name__ == "__main__":
    main()
