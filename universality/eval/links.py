"""Causal links between the features of dictionaries at different sites of one model.

For a source dictionary at site ``s`` and target dictionaries at later sites, ablating source latent
``f`` (``x_s' = x_s - z_f(x_s) W_dec[f]`` at every position, as in :mod:`universality.eval.ablation`)
changes the codes ``z_g`` of every target latent ``g``. The link strength is the **share of ``g``'s
activation that depends on ``f``**::

    share(f, g) = sum_t (z_g(t) - z_g'(t)) z_g(t) / sum_t z_g(t)^2

over the valid positions ``t`` of the evaluation text (``z_g'``: the code with ``f`` ablated). It is
1 when ``g`` fires only through ``f``, 0 when ``f`` does not reach ``g``, negative when ``f``
suppresses ``g``; it is scale-free, so targets of different density compare. This is the
feature-to-feature ablation experiment of Cunningham et al. 2023 (section 5, "causal links between
layers"), with the effect on each downstream feature summarised in one number.

Many source latents run in one forward pass: the evaluation batch is repeated once per latent of a
block (``LinkConfig.batch_features``) and each copy ablates its own latent.

Weight-only prediction (Laptev et al. 2025, "feature flow"): in one basis (same width: residual
stream and the component outputs that write into it) the decoder cosine of ``f`` and ``g`` predicts
the link; :func:`flow_agreement` says how often the two views pick the same partner.

:func:`component_attribution` answers where a feature at a later residual site comes from: its
encoder pre-activation splits exactly into the part read from an earlier residual site and the
parts written by each attention/MLP/mixer output in between (the residual stream is their sum).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import ConfigError
from universality.eval.ablation import block_ablation, features_per_pass
from universality.io import stable_hash
from universality.progress import progress_bar
from universality.sites import Site, as_site

__all__ = ["LinkConfig", "LinkGraph", "causal_links", "decoder_flow", "flow_agreement", "edge_precision",
           "component_attribution", "edge_table", "random_directions", "COMPONENT_HOOKS"]

#: hooks of component outputs that are added into the residual stream
COMPONENT_HOOKS = ("hook_attn_out", "hook_mlp_out", "hook_mixer_out")


@dataclass(frozen=True)
class LinkConfig:
    """``batch_features``: source latents ablated per forward pass (the batch is repeated that often;
    ``None``: :func:`~universality.eval.ablation.features_per_pass` chooses from the batch size);
    ``min_share``: the smallest ``|share|`` kept as an edge; ``top_k``: at most this many edges per source
    latent and target site (strongest first)."""

    batch_features: int | None = None
    min_share: float = 0.05
    top_k: int = 8

    def __post_init__(self) -> None:
        if self.batch_features is not None and (not isinstance(self.batch_features, int) or self.batch_features < 1):
            raise ConfigError(f"LinkConfig.batch_features must be a positive integer or None, got {self.batch_features!r}",
                              "set batch_features to e.g. 16, or None to choose from the batch size")
        if not (isinstance(self.min_share, (int, float)) and 0 <= self.min_share < 1):
            raise ConfigError(f"LinkConfig.min_share must be in [0, 1), got {self.min_share!r}", "set min_share to e.g. 0.05")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"LinkConfig.top_k must be a positive integer, got {self.top_k!r}", "set top_k to e.g. 8")


@dataclass(frozen=True)
class LinkGraph:
    """The links of ``latents`` of the dictionary at ``source_site`` to every latent of each target site.

    ``shares[site]``: ``(len(latents), d_sae of that site)``; ``edges``: the kept links, one row each
    (``source_site, source, target_site, target, share``), strongest first per source."""

    source_site: str
    latents: tuple[int, ...]
    shares: Mapping[str, Tensor]
    edges: pd.DataFrame
    config: LinkConfig

    def edge_set(self, target_site: str | None = None) -> set[tuple[int, int]]:
        """``{(source latent, target latent)}`` of the kept edges (of one target site when given)."""
        e = self.edges if target_site is None else self.edges[self.edges["target_site"] == target_site]
        return {(int(a), int(b)) for a, b in zip(e["source"], e["target"])}


def _folded(sae: Any) -> Any:
    return sae.folded() if float(getattr(sae, "input_scale", 1.0)) != 1.0 else sae


def _check_sites(source: Site, targets: Sequence[Site]) -> None:
    for t in targets:
        if not source < t:
            raise ConfigError(f"target site {t.name} does not come after the source site {source.name} in the forward "
                              "pass, so ablating the source cannot change it", "pass target sites downstream of the source")


def _shares(clean: Tensor, ablated: Tensor) -> Tensor:
    """``clean``: ``(n, d)``, ``ablated``: ``(k, n, d)`` -> ``(k, d)`` shares (0 for a target silent here)."""
    energy = (clean * clean).sum(0)
    moved = ((clean[None] - ablated) * clean[None]).sum(1)
    return torch.where(energy > 0, moved / energy.clamp_min(1e-30), torch.zeros_like(moved))


@torch.no_grad()
def causal_links(adapter: Any, source: tuple[str | Site, Any], targets: Mapping[str | Site, Any],
                 input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"] | None = None,
                 latents: Sequence[int] | None = None, cfg: LinkConfig = LinkConfig(), progress: bool = True) -> LinkGraph:
    """Ablate each of ``latents`` (default: every latent that fires on this text) of the dictionary
    ``source = (site, sae)`` and measure the share of every target latent's activation that depends on
    it, at each ``targets[site] = sae`` downstream of the source (one model, one pass per block of
    ``cfg.batch_features`` latents).

    The ablation removes the latent's decoder contribution and leaves the dictionary's reconstruction
    error in place. Downstream of a LayerNorm that matters: what is left of a direction is rescaled, so a
    latent whose code undershoots its direction (a threshold bias) is only partly ablated for the next
    layer. The hand-built test model of ``tests/eval/test_links.py`` uses exact codes for that reason."""
    s_site, s_sae = as_site(source[0]), _folded(source[1])
    tgt = {as_site(k): _folded(v) for k, v in targets.items()}
    if not tgt:
        raise ConfigError("causal_links needs at least one target dictionary", "pass targets={site: sae, ...}")
    _check_sites(s_site, list(tgt))
    am = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    valid = am.reshape(-1).bool()
    d_sae = int(s_sae.W_dec.shape[0])
    seen: dict[Site, Tensor] = {}

    def recorder(site: Site):
        def keep(x: Tensor) -> Tensor:
            seen[site] = x.detach()
            return x
        return keep

    def codes(sae: Any, x: Tensor, copies: int) -> Tensor:
        flat = x.reshape(copies, -1, x.shape[-1])[:, valid.to(x.device)]
        z = sae.encode(flat.reshape(-1, flat.shape[-1]).to(sae.W_dec.dtype).to(sae.W_dec.device))
        return z.reshape(copies, int(valid.sum()), -1).double().cpu()

    adapter.forward(input_ids, attention_mask=am, replace={s: recorder(s) for s in [s_site, *tgt]})
    clean = {s: codes(sae, seen[s], 1)[0] for s, sae in tgt.items()}
    if latents is None:
        fired = codes(s_sae, seen[s_site], 1)[0].gt(0).any(0)
        latents = [int(i) for i in torch.nonzero(fired).flatten()]
    latents = [int(f) for f in latents]
    bad = [f for f in latents if not 0 <= f < d_sae]
    if bad:
        raise ConfigError(f"latents {bad[:5]} are outside the source dictionary's {d_sae} latents", "pass latent indices in range")
    shares = {s.name: torch.zeros(len(latents), v.shape[1], dtype=torch.float64) for s, v in clean.items()}
    per_pass = features_per_pass(cfg.batch_features, input_ids.numel(), getattr(adapter, "device", "cpu"))
    blocks = [latents[i:i + per_pass] for i in range(0, len(latents), per_pass)]
    done = 0
    for block in progress_bar(blocks, f"links from {s_site.name}", progress=progress, work=len(latents) * 1e5):
        k = len(block)
        seen.clear()
        replace: dict[Site, Any] = {s: recorder(s) for s in tgt}
        replace[s_site] = block_ablation(s_sae, block)
        adapter.forward(input_ids.repeat(k, 1), attention_mask=am.repeat(k, 1), replace=replace)
        for s, sae in tgt.items():
            shares[s.name][done:done + k] = _shares(clean[s], codes(sae, seen[s], k))
        done += k
    return LinkGraph(s_site.name, tuple(latents), shares, edge_table(s_site.name, latents, shares, cfg), cfg)


def edge_table(source_site: str, latents: Sequence[int], shares: Mapping[str, Tensor], cfg: LinkConfig) -> pd.DataFrame:
    """The kept links of a share matrix per target site: at most ``cfg.top_k`` per source latent, each of
    ``|share| >= cfg.min_share``."""
    rows = []
    for site, m in shares.items():
        k = min(cfg.top_k, m.shape[1])
        vals, idx = m.abs().topk(k, dim=1)
        for r, f in enumerate(latents):
            for v, g in zip(vals[r].tolist(), idx[r].tolist()):
                if v >= cfg.min_share and v > 0:
                    rows.append({"source_site": source_site, "source": int(f), "target_site": site, "target": int(g),
                                 "share": float(m[r, g])})
    cols = ["source_site", "source", "target_site", "target", "share"]
    return pd.DataFrame(rows, columns=cols)


def random_directions(sae: Any, salt: str) -> Any:
    """The floor of a link: a copy of ``sae`` with the same encoder (so every latent fires where and as
    strongly as before) whose decoder rows point in random directions of the same norms. Ablating its
    latent ``f`` removes a push of the same size at the same positions, in a direction that means nothing."""
    other = copy.deepcopy(_folded(sae))
    seed = int(stable_hash({"link floor": salt, "shape": list(other.W_dec.shape)}), 16) % (2**31 - 1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        R = torch.randn(other.W_dec.shape, generator=g, dtype=torch.float64)
        R = F.normalize(R, dim=1) * other.W_dec.detach().double().cpu().norm(dim=1, keepdim=True)
        other.W_dec.copy_(R.to(other.W_dec.dtype))
    other.meta = {**dict(getattr(other, "meta", {}) or {}), "floor": "random decoder directions", "of": salt}
    return other


def edge_precision(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    """Precision and recall of the edge set ``found`` against ``truth``."""
    hit = len(found & truth)
    return {"precision": hit / len(found) if found else float("nan"),
            "recall": hit / len(truth) if truth else float("nan"), "found": len(found), "true": len(truth)}


def decoder_flow(source_sae: Any, target_sae: Any) -> Float[Tensor, "d_src d_tgt"]:
    """Cosine of every source decoder row with every target decoder row: the weight-only link
    prediction of Laptev et al. 2025 (only meaningful in one basis, so the widths must agree)."""
    Ws, Wt = _folded(source_sae).W_dec.detach().double(), _folded(target_sae).W_dec.detach().double()
    if Ws.shape[1] != Wt.shape[1]:
        raise ConfigError(f"decoder cosines need one basis: the source reads {Ws.shape[1]} dims, the target {Wt.shape[1]}",
                          "compare residual-stream and component-output sites of one model")
    return F.normalize(Ws, dim=1) @ F.normalize(Wt, dim=1).T


def flow_agreement(graph: LinkGraph, target_site: str, cos: Float[Tensor, "d_src d_tgt"],
                   min_share: float | None = None) -> dict[str, float]:
    """For each source latent with a causal link of at least ``min_share`` (default: the graph's) at
    ``target_site``: is its strongest causal target also its highest-cosine target? Returns the share of
    agreeing sources (``value``), the chance level (one over the target's live latents, ``floor``) and
    the number of sources compared."""
    m = graph.shares[target_site]
    thr = graph.config.min_share if min_share is None else min_share
    live = m.abs().amax(0) > 0
    agree, n = 0, 0
    for r, f in enumerate(graph.latents):
        strongest = float(m[r].abs().max())
        if strongest == 0 or strongest < thr:
            continue
        n += 1
        best_causal = int(m[r].abs().argmax())
        c = cos[f].clone()
        c[~live] = -float("inf")
        agree += int(int(c.argmax()) == best_causal)
    n_live = int(live.sum())
    return {"value": agree / n if n else float("nan"), "floor": 1.0 / n_live if n_live else float("nan"), "n_sources": n}


@torch.no_grad()
def component_attribution(adapter: Any, target: tuple[str | Site, Any], base_site: str | Site, latents: Sequence[int],
                          input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"] | None = None
                          ) -> pd.DataFrame:
    """Where the pre-activations of ``latents`` of the residual dictionary ``target = (site, sae)`` come from.

    The residual stream at the target equals the residual at ``base_site`` plus every component output
    (:data:`COMPONENT_HOOKS`) of the layers in between, so ``W_enc[:, g] . x_target`` splits exactly into
    ``W_enc[:, g] . x_base`` and one term per component. Returns one row per latent and part (``base``,
    each component site, ``bias``: ``b_enc - W_enc . b_dec``, and ``rest``: what the parts leave unexplained,
    ~0 for a sequential or parallel residual block) with its mean contribution over the positions where the
    latent fires, that mean as a share of the mean pre-activation there (``share``: signed, the parts add
    up to 1) and its size as a share of the summed sizes of the parts (``abs_share``: in [0, 1], stable
    when parts cancel).
    """
    t_site, sae = as_site(target[0]), _folded(target[1])
    b_site = as_site(base_site)
    if not (t_site.is_residual and b_site.is_residual and b_site < t_site):
        raise ConfigError(f"attribution splits a residual site into an earlier residual site plus the components "
                          f"between; got base {b_site.name} and target {t_site.name}",
                          "pass two residual-stream sites, the base before the target")
    parts = [s for s in sorted(adapter.site_table) if s.hook in COMPONENT_HOOKS and b_site < s < t_site]
    am = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    valid = am.reshape(-1).bool()
    seen: dict[Site, Tensor] = {}

    def recorder(site: Site):
        def keep(x: Tensor) -> Tensor:
            seen[site] = x.detach()
            return x
        return keep

    adapter.forward(input_ids, attention_mask=am, replace={s: recorder(s) for s in [b_site, t_site, *parts]})

    def flat(s: Site) -> Tensor:
        return seen[s].reshape(-1, seen[s].shape[-1]).double().cpu()[valid.cpu()]

    We = sae.W_enc.detach().double().cpu()[:, list(latents)]
    bias = (sae.b_enc.detach().double().cpu()[list(latents)] - sae.b_dec.detach().double().cpu() @ We)
    x_t = flat(t_site)
    pre = x_t @ We + bias
    fires = sae.encode(x_t.to(sae.W_dec.device, sae.W_dec.dtype)).detach().double().cpu()[:, list(latents)] > 0
    contrib = {"base": flat(b_site) @ We, **{s.name: flat(s) @ We for s in parts}}
    contrib["bias"] = bias.expand_as(pre)
    explained = sum(contrib.values())
    contrib["rest"] = pre - explained
    rows = []
    for j, g in enumerate(latents):
        on = fires[:, j]
        means = {part: float(c[on, j].mean()) if on.any() else float("nan") for part, c in contrib.items()}
        total = float(pre[on, j].mean()) if on.any() else float("nan")
        size = sum(abs(v) for part, v in means.items() if part != "rest")
        for part, mean in means.items():
            rows.append({"latent": int(g), "part": part, "contribution": mean,
                         "share": mean / total if on.any() and total != 0 else float("nan"),
                         "abs_share": abs(mean) / size if size > 0 and part != "rest" else float("nan"),
                         "n_firing": int(on.sum())})
    return pd.DataFrame(rows)
