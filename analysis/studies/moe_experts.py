"""How each SAE feature's tokens spread over the experts of an MoE layer.

For a feature at a site of layer ``l``, take the tokens it fires on (evaluation spans) and the
top-1 expert the router of layer ``l`` sends each token to. The feature's *expert entropy* is the
normalised Shannon entropy :math:`H(p) / \\log E` of that expert distribution :math:`p` (0: all
its tokens go to one expert; 1: uniform). The null draws, for each feature, the same number of
tokens at random (the experts' overall load), so a feature is *expert-specific* only if its
entropy is below what random token sets of its size give.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from analysis import plots
from analysis.studies.common import SMALL_N, AnalysisResult, count_or_share
from universality.errors import ConfigError
from universality.sites import site as make_site
from universality.study.pipeline import Cell

NAME = "moe_experts"
MIN_FIRES = 5


def expert_entropy(expert: np.ndarray, n_experts: int) -> tuple[float, float]:
    """Normalised entropy of the expert histogram of ``expert`` (ints), and the top expert's share."""
    counts = np.bincount(expert, minlength=n_experts).astype(float)
    p = counts / counts.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(n_experts)), float(p.max())


def run(ctx, figures_dir) -> AnalysisResult:
    moe = [m.name for m in ctx.cfg.models if ctx.adapter(m.name).family in ("olmoe", "mixtral", "qwen2_moe")]
    if not moe:
        raise ConfigError("moe_experts needs an MoE model (olmoe, mixtral or qwen2_moe)", "add a zoo tiny_moe model")
    model = moe[0]
    rev = ctx.revisions(model)[-1]
    cell = Cell(model, rev, "D")
    acts = ctx.eval_acts(model, rev)
    rng = np.random.default_rng(ctx.cfg.seed)
    res = AnalysisResult(NAME, f"Features and experts in {model}")
    rows, dist, summary = [], [], []
    for s in ctx.sites_of(model):
        site = s.name
        key = make_site(s.layer, "expert_indices").name
        if key not in acts:
            continue
        top1 = acts[key][:, 0].long().numpy()
        n_experts = int(ctx.adapter(model).site_table[make_site(s.layer, "router_logits")])
        sae = ctx.saes(cell)[site][0]
        with torch.no_grad():
            fires = (sae.encode(acts[site].float()) > 0).numpy()
        for f in range(fires.shape[1]):
            idx = np.flatnonzero(fires[:, f])
            if len(idx) < MIN_FIRES:
                continue
            h, top = expert_entropy(top1[idx], n_experts)
            hn, topn = expert_entropy(top1[rng.choice(len(top1), size=len(idx), replace=False)], n_experts)
            rows.append({"site": site, "feature": f, "n_fires": len(idx), "entropy": h, "top_share": top,
                         "null_entropy": hn, "null_top_share": topn})
            dist += [{"comparison": site, "kind": "observed", "score": h}, {"comparison": site, "kind": "floor", "score": hn}]
    if not rows:
        raise ConfigError(f"no MoE site of {model} among the study's sites, or no feature fires {MIN_FIRES} times",
                          "add blocks.{l}.hook_mlp_out of an MoE layer to study.sites")
    table = pd.DataFrame(rows)
    res.tables["feature_experts"] = table
    for site, grp in table.groupby("site"):
        spec = float((grp["top_share"] >= 0.8).mean())
        spec_null = float((grp["null_top_share"] >= 0.8).mean())
        summary.append({"site": site, "features": len(grp), "mean_entropy": grp["entropy"].mean(),
                        "null_mean_entropy": grp["null_entropy"].mean(), "expert_specific": spec,
                        "null_expert_specific": spec_null})
        n = len(grp)
        share = count_or_share(int((grp["top_share"] >= 0.8).sum()), n)
        res.findings.append(f"{site}: {share if n < SMALL_N else f'{share} of {n}'} features send "
                            f">= 80% of their tokens to one expert (random token sets of the same size: "
                            f"{count_or_share(int((grp['null_top_share'] >= 0.8).sum()), n)}); mean expert entropy "
                            f"{grp['entropy'].mean():.3f} against {grp['null_entropy'].mean():.3f} for the null.")
    res.tables["summary"] = pd.DataFrame(summary)
    res.tidy += [{"analysis": NAME, "comparison": s["site"], "metric": "mean expert entropy", "value": s["mean_entropy"],
                  "floor": s["null_mean_entropy"], "note": "floor column = random token sets of the same size"} for s in summary]
    res.figures.append(("Expert entropy per feature against random token sets of the same size",
                        plots.similarity_distributions(pd.DataFrame(dist), figures_dir / "moe_entropy.png",
                                                       "How features spread over experts", ylabel="normalised expert entropy")))
    res.text = ("For every feature, the tokens it fires on are grouped by the expert the router sends them to (top-1). "
                "Low entropy means the feature lives in one expert; the floor draws random tokens of the same count.")
    return res
