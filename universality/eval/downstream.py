"""Downstream metrics: splice an SAE's reconstruction into the model and compare the logits.

Uses ``adapter.forward(input_ids, attention_mask, replace={site: fn})`` (see
``docs/INTERFACES.md``): ``fn`` maps the site's ``(batch, pos, d)`` activation to the value used
instead. Conventions follow SAELens' evaluation (Bloom et al.) and Gao et al. 2024:

- next-token cross-entropy, averaged over the positions whose *next* token is a real token;
- **CE loss recovered** against an ablation (zero or mean)

  .. math::  \\frac{CE_{abl} - CE_{sae}}{CE_{abl} - CE_{clean}}

  (1 = as good as the clean model, 0 = no better than ablating the site; some libraries report
  the reciprocal ratio - this one is the SAELens "ce_loss_score" orientation);
- **KL divergence** ``KL(p_clean || p_sae)`` of the next-token distributions, averaged over the
  same positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import DataError
from universality.sites import Site, as_site

__all__ = ["next_token_ce", "kl_divergence", "ce_loss_recovered", "sae_replacement", "splice_metrics", "splice_reference",
           "splice_scores", "SpliceReference"]


def _positions(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mask ``(batch, pos-1)`` of positions whose next token is real."""
    if attention_mask is None:
        return torch.ones(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool, device=input_ids.device)
    m = attention_mask.bool().to(input_ids.device)
    return m[:, :-1] & m[:, 1:]


def next_token_ce(
    logits: Float[Tensor, "batch pos vocab"], input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"] | None = None
) -> float:
    """Mean over predicted positions of ``-log p(token_{t+1} | tokens_{<=t})``."""
    if input_ids.shape[1] < 2:
        raise DataError("next-token cross-entropy needs sequences of at least 2 tokens", "pass longer sequences")
    mask = _positions(input_ids, attention_mask)
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:, None].to(logp.device)).squeeze(-1)
    return float(nll[mask.to(nll.device)].mean())


def kl_divergence(
    clean_logits: Float[Tensor, "batch pos vocab"],
    logits: Float[Tensor, "batch pos vocab"],
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> float:
    """Mean over predicted positions of ``sum_v p_clean(v) (log p_clean(v) - log p(v))``."""
    mask = _positions(input_ids, attention_mask).to(logits.device)
    lp_clean = F.log_softmax(clean_logits[:, :-1].double(), dim=-1)
    lp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    kl = (lp_clean.exp() * (lp_clean - lp)).sum(-1)
    return float(kl[mask].mean())


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_ablated: float) -> float:
    """``(CE_abl - CE_sae) / (CE_abl - CE_clean)``; NaN when the ablation does not change the loss."""
    denom = ce_ablated - ce_clean
    return float("nan") if denom == 0 else (ce_ablated - ce_sae) / denom


def sae_replacement(sae) -> Callable[[Tensor], Tensor]:
    """``act (..., d) -> sae(act)`` in the activation's shape and dtype (for ``replace=``)."""

    def fn(act: Tensor) -> Tensor:
        flat = act.reshape(-1, act.shape[-1])
        return sae(flat.to(sae.W_dec.dtype).to(sae.W_dec.device)).to(act.dtype).to(act.device).reshape(act.shape)

    return fn


@dataclass(frozen=True)
class SpliceReference:
    """What every dictionary spliced into one model at one site is scored against, computed once:
    the clean logits and CE, and per ablation its CE and KL; ``acts`` holds the site's activations
    over the real tokens, ``(n_tokens, d)``."""

    site: Site
    clean: Tensor
    ce_clean: float
    ce_ablated: dict[str, float]
    kl_ablated: dict[str, float]
    acts: Tensor


@torch.no_grad()
def splice_reference(adapter, site: str | Site, input_ids: Int[Tensor, "batch pos"],
                     attention_mask: Int[Tensor, "batch pos"] | None = None,
                     ablations: Sequence[str] = ("zero", "mean")) -> SpliceReference:
    """The reference passes of :func:`splice_metrics` (clean, and each ablation). The mean ablation
    replaces every position by the mean activation of the site over the real (unpadded) tokens."""
    unknown = set(ablations) - {"zero", "mean"}
    if unknown:
        raise DataError(f"unknown ablations {sorted(unknown)}", "use 'zero' and/or 'mean'")
    site = as_site(site)
    clean = adapter.forward(input_ids, attention_mask=attention_mask)
    act = adapter.capture(input_ids, [site], attention_mask=attention_mask)[site.name]
    m = attention_mask.bool().to(act.device) if attention_mask is not None else torch.ones(act.shape[:2], dtype=torch.bool, device=act.device)
    acts = act[m]
    ce_abl, kl_abl = {}, {}
    for kind in ablations:
        if kind == "zero":
            fn = torch.zeros_like
        else:
            mean_D = acts.double().mean(dim=0).to(act.dtype)

            def fn(a: Tensor, mean_D: Tensor = mean_D) -> Tensor:
                return mean_D.to(a.device, a.dtype).expand_as(a).clone()

        ablated = adapter.forward(input_ids, attention_mask=attention_mask, replace={site: fn})
        ce_abl[kind] = next_token_ce(ablated, input_ids, attention_mask)
        kl_abl[kind] = kl_divergence(clean, ablated, input_ids, attention_mask)
    return SpliceReference(site, clean, next_token_ce(clean, input_ids, attention_mask), ce_abl, kl_abl, acts)


@torch.no_grad()
def splice_scores(adapter, ref: SpliceReference, sae, input_ids: Int[Tensor, "batch pos"],
                  attention_mask: Int[Tensor, "batch pos"] | None = None) -> dict[str, float]:
    """``ce_sae``, ``kl_sae`` and CE loss recovered per ablation of ``ref`` for ``sae`` spliced in."""
    spliced = adapter.forward(input_ids, attention_mask=attention_mask, replace={ref.site: sae_replacement(sae)})
    out = {"ce_sae": next_token_ce(spliced, input_ids, attention_mask),
           "kl_sae": kl_divergence(ref.clean, spliced, input_ids, attention_mask)}
    for kind, ce_abl in ref.ce_ablated.items():
        out[f"ce_loss_recovered_{kind}"] = ce_loss_recovered(ref.ce_clean, out["ce_sae"], ce_abl)
    return out


@torch.no_grad()
def splice_metrics(
    adapter,
    sae,
    site: str | Site,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    ablations: Sequence[str] = ("zero", "mean"),
) -> dict[str, float]:
    """Clean, SAE-spliced and ablated CE, CE loss recovered per ablation, and KL to the clean logits
    (:func:`splice_reference` then :func:`splice_scores`).

    The mean ablation replaces every position by the mean activation of the site over the real
    (unpadded) tokens of this batch.
    """
    ref = splice_reference(adapter, site, input_ids, attention_mask, ablations)
    got = splice_scores(adapter, ref, sae, input_ids, attention_mask)
    out = {"ce_clean": ref.ce_clean, "ce_sae": got["ce_sae"], "kl_sae": got["kl_sae"]}
    for kind in ablations:
        out[f"ce_{kind}_ablation"] = ref.ce_ablated[kind]
        out[f"ce_loss_recovered_{kind}"] = got[f"ce_loss_recovered_{kind}"]
        out[f"kl_{kind}_ablation"] = ref.kl_ablated[kind]
    return out
