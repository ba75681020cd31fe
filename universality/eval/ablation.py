"""Ablation agreement: do two matched latents *do* the same job in their own models?

For a latent ``f`` of a dictionary at a site, its ablation removes its decoder contribution,
``x' = x - z_f(x) W_dec[f]``, at every position (``adapter.forward(replace=...)``); its effect is the
change of the log-probability of each actual next token, over the predicted positions of the
evaluation batch. For a matched pair (latent ``a`` of model A, latent ``b`` of model B, read on the
same token ids: the same tokenizer) the **ablation agreement** is the Pearson correlation of the two
effect vectors (Cunningham et al. 2023 compare features by ablation effects; Wang et al. 2024 ask
the same of matched features across architectures). Baselines: random pairs of the same latents'
sets (floor) and matched pairs between two SAE seeds of one model (skyline, :func:`agreement_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import ConfigError, MatchError
from universality.progress import progress_bar
from universality.sites import Site, as_site

__all__ = ["ablation_effects", "pair_agreement", "agreement_rows", "check_same_tokens", "AblationInputs", "best_pairs", "features_per_pass", "PASS_TOKENS", "block_ablation"]


#: tokens per forward pass that blocks of latents aim for when ``batch_features`` is left to choose
#: (``benchmarks/links.py``: on the CPU, repeating a batch past ~1k tokens per pass is slower than
#: one latent per pass, since activations fall out of cache; a GPU keeps gaining up to far larger passes)
PASS_TOKENS = {"cpu": 1024, "cuda": 65536}


def features_per_pass(requested: int | None, batch_tokens: int, device: Any) -> int:
    """``requested`` latents per forward pass, or (``None``) as many as keep a pass near
    :data:`PASS_TOKENS` tokens on ``device`` (at least 1, at most 64)."""
    if requested is not None:
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
            raise ConfigError(f"batch_features must be a positive integer or None, got {requested!r}",
                              "pass e.g. 16, or None to choose from the batch size")
        return requested
    budget = PASS_TOKENS["cuda" if torch.device(device).type == "cuda" else "cpu"]
    return int(max(1, min(64, budget // max(1, int(batch_tokens)))))


def block_ablation(sae: Any, block: Sequence[int]) -> Callable[[Tensor], Tensor]:
    """The replacement for a batch repeated ``len(block)`` times: copy ``i`` loses latent ``block[i]``'s
    decoder contribution, ``x - z_f(x) W_dec[f]`` (the reconstruction error stays)."""
    W = sae.W_dec.detach()
    rows = torch.tensor([int(f) for f in block], device=W.device)
    k = len(block)

    def remove(x: Tensor) -> Tensor:
        flat = x.reshape(k, -1, x.shape[-1]).to(W.dtype).to(W.device)
        z = sae.encode(flat.reshape(-1, flat.shape[-1])).reshape(k, flat.shape[1], -1)
        zf = z.gather(2, rows[:, None, None].expand(k, flat.shape[1], 1))
        return (flat - zf * W[rows][:, None, :]).to(x.dtype).to(x.device).reshape(x.shape)

    return remove


def _next_logp(logits: Tensor, input_ids: Tensor, mask: Tensor) -> Tensor:
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    got = logp.gather(-1, input_ids[:, 1:, None].to(logp.device)).squeeze(-1)
    return got[mask.to(got.device)].cpu()


@torch.no_grad()
def ablation_effects(adapter: Any, sae: Any, site: str | Site, latents: Sequence[int], input_ids: Int[Tensor, "batch pos"],
                     attention_mask: Int[Tensor, "batch pos"] | None = None, progress: bool = True,
                     batch_features: int | None = None) -> Float[Tensor, "n positions"]:
    """Change of ``log p(next token)`` at each predicted position when each of ``latents`` is ablated.

    ``batch_features`` latents run in one forward pass: the batch is repeated once per latent of a
    block and each copy ablates its own latent (the results do not depend on it); ``None`` chooses
    :func:`features_per_pass`."""
    batch_features = features_per_pass(batch_features, input_ids.numel(), getattr(adapter, "device", "cpu"))
    s = as_site(site)
    am = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    mask = am[:, :-1].bool() & am[:, 1:].bool()
    base = _next_logp(adapter.forward(input_ids, attention_mask=am), input_ids, mask)
    latents = [int(f) for f in latents]
    out = torch.zeros(len(latents), base.numel(), dtype=torch.float64)
    blocks = [latents[i:i + batch_features] for i in range(0, len(latents), batch_features)]
    done = 0
    for block in progress_bar(blocks, "ablate latents", progress=progress, work=len(latents) * 1e5):
        k = len(block)
        logits = adapter.forward(input_ids.repeat(k, 1), attention_mask=am.repeat(k, 1),
                                 replace={s: block_ablation(sae, block)})
        ids_k, mask_k = input_ids.repeat(k, 1), mask.repeat(k, 1)
        got = _next_logp(logits, ids_k, mask_k).reshape(k, -1)
        out[done:done + k] = got - base
        done += k
    return out


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def pair_agreement(effects_a: Tensor, effects_b: Tensor) -> np.ndarray:
    """Pearson correlation of row ``i`` of ``effects_a`` with row ``i`` of ``effects_b`` (NaN when a
    latent's ablation changes nothing on this text)."""
    return np.array([_pearson(effects_a[i], effects_b[i]) for i in range(effects_a.shape[0])])


def check_same_tokens(tokenizer_a: Any, tokenizer_b: Any) -> None:
    """Ablation effects are compared token by token: both models must use one vocabulary."""
    va = tokenizer_a.get_vocab() if hasattr(tokenizer_a, "get_vocab") else None
    vb = tokenizer_b.get_vocab() if hasattr(tokenizer_b, "get_vocab") else None
    if va is None or va != vb:
        raise MatchError("the two models use different tokenizers, so their next-token effects cannot be compared "
                         "position by position", "compare models that share a tokenizer")


def agreement_rows(effects_a: Tensor, effects_b: Tensor, sky_a: Tensor | None = None, sky_b: Tensor | None = None,
                   n_random: int = 200, seed: int = 0) -> dict[str, Any]:
    """Mean ablation agreement of the matched pairs (rows ``i`` of ``effects_a`` and ``effects_b``),
    its floor (random pairs: row ``i`` of A with a random other row of B, ``n_random`` draws) and, with
    ``sky_a``/``sky_b`` (matched pairs of two SAE seeds of one model), its skyline."""
    per_pair = pair_agreement(effects_a, effects_b)
    g = np.random.default_rng(seed)
    n = effects_a.shape[0]
    rand = []
    if n > 1:
        for _ in range(n_random):
            i, j = g.integers(n), g.integers(n - 1)
            j = j + (j >= i)
            rand.append(_pearson(effects_a[i], effects_b[j]))
    sky = pair_agreement(sky_a, sky_b) if sky_a is not None and sky_b is not None else None
    return {"per_pair": per_pair, "value": float(np.nanmean(per_pair)) if np.isfinite(per_pair).any() else float("nan"),
            "floor": float(np.nanmean(rand)) if rand else float("nan"),
            "skyline": float(np.nanmean(sky)) if sky is not None and np.isfinite(sky).any() else float("nan"),
            "n_pairs": int(np.isfinite(per_pair).sum())}


@dataclass(frozen=True)
class AblationInputs:
    """What the ``ablation_agreement`` row of :func:`universality.match.compare` needs besides the two
    dictionaries: the model and site each one reads (``adapter_a``/``site_a``, ``adapter_b``/``site_b``;
    one tokenizer), the evaluation tokens, how many of the best matched pairs to ablate and how many
    latents share one forward pass."""

    adapter_a: Any
    site_a: str
    adapter_b: Any
    site_b: str
    input_ids: Tensor
    attention_mask: Tensor | None = None
    n_pairs: int = 12
    batch_features: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n_pairs, int) or self.n_pairs < 2:
            raise ConfigError(f"AblationInputs.n_pairs must be an integer >= 2, got {self.n_pairs!r}", "pass e.g. n_pairs=12")

    def effects(self, side: str, sae: Any, latents: Sequence[int]) -> Tensor:
        adapter, site = (self.adapter_a, self.site_a) if side == "a" else (self.adapter_b, self.site_b)
        return ablation_effects(adapter, sae, site, latents, self.input_ids, self.attention_mask, progress=False,
                                batch_features=self.batch_features)


def best_pairs(result: Any, n: int) -> tuple[list[int], list[int]]:
    """The ``n`` highest-scoring pairs of a :class:`~universality.match.result.MatchResult` as two latent lists."""
    top = result.pairs[(-np.asarray(result.scores)).argsort(kind="stable")[:n]]
    return [int(i) for i in top[:, 0]], [int(j) for j in top[:, 1]]
