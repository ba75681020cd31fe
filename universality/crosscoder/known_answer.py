"""Scoring both arms - a crosscoder, and separately trained dictionaries matched to each other - against a
planted :class:`~universality.crosscoder.worlds.CrossWorld`.

Matching. Latent ``j`` and planted feature ``i`` score ``min_{s: i present in s} cos(d_j^s, u_{s,i})``
(every source where the feature lives must be matched; a decoder block is compared by direction only,
so the per-source normalisation does not matter). Each latent's feature is its best-scoring one, and
each feature's latent its best-scoring live latent; a pair counts when the score is at least
``match_min`` (0.9).

Classes. A planted feature's true class is ``shared`` (kinds ``shared`` and ``rotated``: present with
one amplitude in every source) or ``exclusive`` (kind ``exclusive``, with its source); ``weakened`` and
``born`` features are present in several sources but not equally, and count only in the false-exclusive
rate. Recall of a class: fraction of its planted features whose latent is matched and classified so (an
exclusive one with the right source). Precision: fraction of the live latents classified so whose
feature is matched and of that class (latents matched to a weakened or born feature are left out of
precision: the false-exclusive rate scores them). False-exclusive rate: fraction of the matched latents classified
exclusive whose feature is present in more than one source, before and after Latent Scaling (a latent
stays exclusive when ``|nu| < nu_max`` against every other source for both targets, ``"error"`` (which
catches shrinkage) and ``"activation"`` (which catches decoupling); only for sources of one width).

Matching arm (:func:`matching_report`, two sources): one dictionary per source, trained on its own; their
live latents are paired one-to-one by the Hungarian assignment on activation correlation over the same
tokens (the platform's default matcher); a pair with Pearson ``rho >= corr_min`` (0.5) is *shared*, every
other live latent is *exclusive* to its source. A latent's planted feature is the feature present in its
source with the highest decoder cosine (at least ``match_min``). Recall, precision and the false-exclusive
rate are then defined as for the crosscoder (a shared pair counts once, and is right when both latents
have the same shared feature). Series (:func:`birth_report`): a planted feature's birth read by the
crosscoder is :func:`~universality.crosscoder.analysis.birth_indices` of its latent; read by matching it is
the first source of the chain of matched pairs (``rho >= corr_min`` between consecutive sources) that ends
at its latent in the last source.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from universality.crosscoder.analysis import (birth_indices, classify_latents, decoder_norm_trajectories, latent_scaling,
                                              live_latents, relative_decoder_norms)
from universality.crosscoder.worlds import CrossWorld
from universality.errors import DataError
from universality.match import match
from universality.sae.crosscoder import CrosscoderSAE

__all__ = ["match_scores", "known_answer_report", "matching_report", "birth_report"]


@torch.no_grad()
def match_scores(world: CrossWorld, cc: CrosscoderSAE) -> Float[Tensor, "d_sae n_features"]:
    """``score[j, i]`` as in the module docstring."""
    if tuple(cc.cfg.source_widths) != tuple(world.cfg.widths):
        raise DataError(f"the crosscoder reads widths {cc.cfg.source_widths}, the world has {world.cfg.widths}",
                        "score a crosscoder trained on this world")
    present = world.present()
    blocks = cc.W_dec.detach().float().split(list(cc.cfg.source_widths), dim=1)
    score = torch.full((cc.cfg.d_sae, present.shape[1]), float("inf"))
    for s, (B, D) in enumerate(zip(blocks, world.directions)):
        cos = torch.nn.functional.normalize(B, dim=1, eps=1e-12) @ torch.nn.functional.normalize(D, dim=1, eps=1e-12).T
        score = torch.where(present[s][None, :], torch.minimum(score, cos), score)
    return score


def _truth(world: CrossWorld) -> list[str]:
    return ["shared" if k in ("shared", "rotated") else "exclusive" if k == "exclusive" else "other" for k in world.kinds]


@torch.no_grad()
def known_answer_report(world: CrossWorld, cc: CrosscoderSAE, x: Float[Tensor, "batch d_in"], match_min: float = 0.9,
                        nu_max: float = 0.3, exclusive_min: float = 0.9, shared_min_fraction: float = 0.6,
                        min_mass_share: float = 0.0) -> dict[str, Any]:
    """Precision and recall of the shared and exclusive classes, and the false-exclusive rate with and
    without Latent Scaling (``None`` when the sources' widths differ), on raw activations ``x``.

    ``min_mass_share > 0`` leaves out near-dead latents: a latent counts as live only when it carries at least
    this share of the total activation mass on ``x`` (BatchTopK's inference threshold lets a few latents
    through on a fraction of a percent of tokens with activations ~25x below the planted features'). The
    calibration table in ``docs/calibration.md`` uses the default, 0 (every latent that fires once)."""
    live = live_latents(cc, x)
    if min_mass_share > 0:
        mass = cc.encode(x).clamp_min(0).sum(dim=0)
        live &= mass >= min_mass_share * mass.sum()
    labels, owner = classify_latents(relative_decoder_norms(cc), exclusive_min, shared_min_fraction)
    score = match_scores(world, cc)
    truth = _truth(world)
    n_src = world.cfg.n_sources
    best_feat_score, best_feat = score.max(dim=1)
    live_score = score.masked_fill(~live[:, None], float("-inf"))
    best_lat_score, best_lat = live_score.max(dim=0)
    out: dict[str, Any] = {"live_latents": int(live.sum()), "d_sae": cc.cfg.d_sae, "min_mass_share": min_mass_share}

    def latent_ok(j: int, cls: str) -> bool:
        if float(best_feat_score[j]) < match_min:
            return False
        i = int(best_feat[j])
        return truth[i] == cls and (cls != "exclusive" or world.home[i] == int(owner[j]))

    def matched_other(j: int) -> bool:  # a latent of a weakened or born feature: scored by the false-exclusive rate
        return float(best_feat_score[j]) >= match_min and truth[int(best_feat[j])] == "other"

    for cls in ("shared", "exclusive"):
        feats = [i for i, t in enumerate(truth) if t == cls]
        hits = [i for i in feats if float(best_lat_score[i]) >= match_min and labels[int(best_lat[i])] == cls
                and (cls != "exclusive" or int(owner[int(best_lat[i])]) == world.home[i])]
        pred = [j for j in range(cc.cfg.d_sae) if bool(live[j]) and labels[j] == cls and not matched_other(j)]
        good = [j for j in pred if latent_ok(j, cls)]
        out[cls] = {"planted": len(feats), "recall": len(hits) / len(feats) if feats else float("nan"),
                    "predicted": len(pred), "precision": len(good) / len(pred) if pred else float("nan")}

    # false exclusives: matched latents called exclusive whose feature lives in several sources
    excl = [j for j in range(cc.cfg.d_sae) if bool(live[j]) and labels[j] == "exclusive" and float(best_feat_score[j]) >= match_min]
    multi = world.present().sum(dim=0) > 1

    def false_rate(js: list[int]) -> float:
        return sum(bool(multi[int(best_feat[j])]) for j in js) / len(js) if js else float("nan")

    out["false_exclusive_rate"] = false_rate(excl)
    out["false_exclusive_n"] = len(excl)
    out["false_exclusive_rate_latent_scaling"] = None
    if len(set(world.cfg.widths)) == 1 and excl:
        idx = torch.tensor(excl)
        keep = torch.ones(len(excl), dtype=torch.bool)
        nus = torch.zeros(len(excl))
        for other in range(n_src):
            others = torch.tensor([other] * len(excl))
            mask = owner[idx] != other
            if not bool(mask.any()):
                continue
            nu = torch.zeros(int(mask.sum()))
            for target in ("error", "activation"):  # shrinkage and decoupling (Minder et al.'s two failure modes)
                ls = latent_scaling(cc, x, idx[mask], owner[idx][mask], others[mask], target=target)
                nu = torch.maximum(nu, ls["nu"].nan_to_num(nan=float("inf")).abs())
            nus[mask] = torch.maximum(nus[mask], nu)
            keep[mask] &= nu < nu_max
        kept = [j for j, k in zip(excl, keep.tolist()) if k]
        out["false_exclusive_rate_latent_scaling"] = false_rate(kept)
        out["exclusive_after_latent_scaling"] = len(kept)
        out["nu_by_kind"] = {k: [float(v) for v, j in zip(nus, excl) if world.kinds[int(best_feat[j])] == k]
                             for k in sorted({world.kinds[int(best_feat[j])] for j in excl})}
    return out


@torch.no_grad()
def _feature_of(dictionary: Any, directions: Float[Tensor, "n_features d"], present: Tensor) -> tuple[Tensor, Tensor]:
    """``(score, feature)`` per latent of a per-source dictionary: best decoder cosine over present features."""
    W = torch.nn.functional.normalize(dictionary.W_dec.detach().float(), dim=1, eps=1e-12)
    cos = W @ torch.nn.functional.normalize(directions, dim=1, eps=1e-12).T
    return cos.masked_fill(~present[None, :], float("-inf")).max(dim=1)


@torch.no_grad()
def _live(dictionary: Any, x: Tensor) -> Tensor:
    return (dictionary.encode(x) > 0).any(dim=0)


def _shared_pairs(a: Any, b: Any, xa: Tensor, xb: Tensor, corr_min: float) -> tuple[list[tuple[int, int]], Tensor, Tensor]:
    """Pairs of live latents matched by the Hungarian assignment on activation correlation at ``rho >= corr_min``."""
    live_a, live_b = _live(a, xa), _live(b, xb)
    res = match(a, b, "hungarian", view="activations", activations=(xa, xb),
                token_ids=torch.arange(xa.shape[0]))  # one code drives every source: the rows are the same tokens
    pairs = [(int(i), int(j)) for (i, j), r in zip(res.pairs, res.scores)
             if r >= corr_min and bool(live_a[i]) and bool(live_b[j])]
    return pairs, live_a, live_b


@torch.no_grad()
def matching_report(world: CrossWorld, dictionaries: tuple[Any, Any], xs: tuple[Tensor, Tensor], corr_min: float = 0.5,
                    match_min: float = 0.9) -> dict[str, Any]:
    """The matching arm on a two-source world: shared/exclusive precision and recall and the false-exclusive
    rate (module docstring), from one dictionary per source and each source's raw activations ``xs``."""
    if world.cfg.n_sources != 2 or len(dictionaries) != 2 or len(xs) != 2:
        raise DataError("matching_report scores a two-source world with one dictionary per source",
                        "pass a world with two sources, two dictionaries and their two activation sets")
    for s, (d, x) in enumerate(zip(dictionaries, xs)):
        if d.cfg.d_in != world.cfg.widths[s] or x.shape[1] != world.cfg.widths[s]:
            raise DataError(f"source {s} has width {world.cfg.widths[s]}, its dictionary reads {d.cfg.d_in} and x has {x.shape[1]}",
                            "pass the dictionary and activations of each source in source order")
    present = world.present()
    truth = _truth(world)
    pairs, live_a, live_b = _shared_pairs(dictionaries[0], dictionaries[1], xs[0], xs[1], corr_min)
    lives = (live_a, live_b)
    feats = [_feature_of(d, world.directions[s], present[s]) for s, d in enumerate(dictionaries)]
    partner = [dict(pairs), {j: i for i, j in pairs}]

    def feat(s: int, j: int) -> int | None:
        score, f = feats[s]
        return int(f[j]) if float(score[j]) >= match_min else None

    def best_latent(s: int, i: int) -> int | None:
        score = (torch.nn.functional.normalize(dictionaries[s].W_dec.detach().float(), dim=1, eps=1e-12)
                 @ torch.nn.functional.normalize(world.directions[s][i], dim=0, eps=1e-12))
        score = score.masked_fill(~lives[s], float("-inf"))
        j = int(score.argmax())
        return j if float(score[j]) >= match_min else None

    out: dict[str, Any] = {"live_latents": [int(v.sum()) for v in lives], "shared_pairs": len(pairs)}
    # shared: pairs count once; a pair whose latents carry a weakened or born feature is left to the false-exclusive rate
    shared_feats = [i for i, t in enumerate(truth) if t == "shared"]
    hits = 0
    for i in shared_feats:
        a, b = best_latent(0, i), best_latent(1, i)
        hits += a is not None and b is not None and partner[0].get(a) == b
    scored = [(a, b) for a, b in pairs if not any(f is not None and truth[f] == "other" for f in (feat(0, a), feat(1, b)))]
    good = [(a, b) for a, b in scored if feat(0, a) is not None and feat(0, a) == feat(1, b) and truth[feat(0, a)] == "shared"]
    out["shared"] = {"planted": len(shared_feats), "recall": hits / len(shared_feats) if shared_feats else float("nan"),
                     "predicted": len(scored), "precision": len(good) / len(scored) if scored else float("nan")}
    excl_feats = [i for i, t in enumerate(truth) if t == "exclusive"]
    hits = 0
    for i in excl_feats:
        s = world.home[i]
        j = best_latent(s, i)
        hits += j is not None and j not in partner[s]
    pred = [(s, j) for s in range(2) for j in range(dictionaries[s].cfg.d_sae)
            if bool(lives[s][j]) and j not in partner[s] and not (feat(s, j) is not None and truth[feat(s, j)] == "other")]
    good_e = [(s, j) for s, j in pred if feat(s, j) is not None and truth[feat(s, j)] == "exclusive" and world.home[feat(s, j)] == s]
    out["exclusive"] = {"planted": len(excl_feats), "recall": hits / len(excl_feats) if excl_feats else float("nan"),
                        "predicted": len(pred), "precision": len(good_e) / len(pred) if pred else float("nan")}
    multi = present.sum(dim=0) > 1
    called = [(s, j) for s in range(2) for j in range(dictionaries[s].cfg.d_sae)
              if bool(lives[s][j]) and j not in partner[s] and feat(s, j) is not None]
    out["false_exclusive_rate"] = (sum(bool(multi[feat(s, j)]) for s, j in called) / len(called)) if called else float("nan")
    out["false_exclusive_n"] = len(called)
    out["false_exclusive_rate_latent_scaling"] = None  # latent scaling is a crosscoder read-out
    return out


@torch.no_grad()
def birth_report(world: CrossWorld, crosscoder: CrosscoderSAE | None = None, dictionaries: tuple[Any, ...] | None = None,
                 xs: tuple[Tensor, ...] | None = None, fraction: float = 0.5, corr_min: float = 0.5,
                 match_min: float = 0.9) -> dict[str, Any]:
    """Planted births along a series read by the crosscoder (decoder-norm trajectories) and/or by matching
    consecutive per-source dictionaries: per born feature the planted and read birth, the fraction read
    within one source (``within_one``) and exactly (``exact``), and the fraction of features present from
    the first source that are read as born later (``false_birth_rate``)."""
    if "born" not in world.kinds:
        raise DataError("the world plants no feature born after the first source", "plant births, e.g. births=(1, 2)")
    n_src = world.cfg.n_sources
    out: dict[str, Any] = {}
    born = [i for i, k in enumerate(world.kinds) if k == "born"]
    steady = [i for i, k in enumerate(world.kinds) if k in ("shared", "rotated")]

    def summary(read: dict[int, int | None]) -> dict[str, Any]:
        got = [(world.birth[i], read.get(i)) for i in born]
        found = [(t, r) for t, r in got if r is not None]
        false = [read.get(i) for i in steady if read.get(i) is not None]
        return {"planted": [t for t, _ in got], "read": [r for _, r in got],
                "found": len(found) / len(born),
                "within_one": sum(abs(t - r) <= 1 for t, r in found) / len(born),
                "exact": sum(t == r for t, r in found) / len(born),
                "false_birth_rate": (sum(r > 0 for r in false) / len(false)) if false else float("nan")}

    if crosscoder is not None:
        x = torch.cat(list(xs), dim=1) if xs is not None else world.joint(4096, seed=99)
        score = match_scores(world, crosscoder).masked_fill(~live_latents(crosscoder, x)[:, None], float("-inf"))
        best_score, best = score.max(dim=0)
        births = birth_indices(decoder_norm_trajectories(crosscoder), fraction)
        out["crosscoder"] = summary({i: int(births[int(best[i])]) if float(best_score[i]) >= match_min else None
                                     for i in born + steady})
    if dictionaries is not None:
        if xs is None or len(dictionaries) != n_src or len(xs) != n_src:
            raise DataError("matching births need one dictionary and one activation set per source", "pass dictionaries= and xs= in source order")
        back = []  # back[s]: latent of source s+1 -> its partner in source s
        for s in range(n_src - 1):
            pairs, _, _ = _shared_pairs(dictionaries[s], dictionaries[s + 1], xs[s], xs[s + 1], corr_min)
            back.append({j: i for i, j in pairs})
        read: dict[int, int | None] = {}
        for i in born + steady:
            t = n_src - 1  # the feature as the last source has it, traced back
            W = torch.nn.functional.normalize(dictionaries[t].W_dec.detach().float(), dim=1, eps=1e-12)
            cos = (W @ torch.nn.functional.normalize(world.directions[t][i], dim=0, eps=1e-12)).masked_fill(~_live(dictionaries[t], xs[t]), float("-inf"))
            j = int(cos.argmax())
            if float(cos[j]) < match_min:
                read[i] = None
                continue
            s = t
            while s > 0 and j in back[s - 1]:
                j, s = back[s - 1][j], s - 1
            read[i] = s
        out["matching"] = summary(read)
    return out
