"""Scoring a crosscoder against a planted :class:`~universality.crosscoder.worlds.CrossWorld`.

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
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from universality.crosscoder.analysis import classify_latents, latent_scaling, live_latents, relative_decoder_norms
from universality.crosscoder.worlds import CrossWorld
from universality.errors import DataError
from universality.sae.crosscoder import CrosscoderSAE

__all__ = ["match_scores", "known_answer_report"]


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
                        nu_max: float = 0.3, exclusive_min: float = 0.9, shared_min_fraction: float = 0.6) -> dict[str, Any]:
    """Precision and recall of the shared and exclusive classes, and the false-exclusive rate with and
    without Latent Scaling (``None`` when the sources' widths differ), on raw activations ``x``."""
    live = live_latents(cc, x)
    labels, owner = classify_latents(relative_decoder_norms(cc), exclusive_min, shared_min_fraction)
    score = match_scores(world, cc)
    truth = _truth(world)
    n_src = world.cfg.n_sources
    best_feat_score, best_feat = score.max(dim=1)
    live_score = score.masked_fill(~live[:, None], float("-inf"))
    best_lat_score, best_lat = live_score.max(dim=0)
    out: dict[str, Any] = {"live_latents": int(live.sum()), "d_sae": cc.cfg.d_sae}

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
