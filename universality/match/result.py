"""The one result object every matcher returns (modelled on POT's ``OTResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

__all__ = ["MatchResult", "VALUE_MEANINGS", "SELF_MATCH_NOTE"]

SELF_MATCH_NOTE = "a dictionary matched with itself"
"""``meta['note']`` of a match of a dictionary with itself (the same object or identical features)."""

_OT = "transport cost <P, 1 - S> of the {} plan between uniform masses (lower = closer; not a similarity)"
VALUE_MEANINGS: dict[str, str] = {
    "hungarian": "sum of the matched pairs' similarities (their mean is mean_score)",
    "sparse": "sum of the matched pairs' similarities on the top-k graph (their mean is mean_score)",
    "mnn": "sum of the similarities of the mutual-nearest-neighbour pairs (their mean is mean_score)",
    "many_to_one": "sum of the similarities of b's features to their best a feature above the threshold",
    "emd": _OT.format("exact"),
    "sinkhorn": _OT.format("entropic") + ", without the entropy term",
    "unbalanced": "transport cost <P, 1 - S> of the KL-relaxed plan, which moves meta['mass'] (lower = closer)",
    "partial": "transport cost <P, 1 - S> of the plan moving meta['mass'] (lower = closer)",
    "gw": "Gromov-Wasserstein discrepancy of the within-dictionary costs (POT's gw_dist; lower = closer)",
    "fgw": "fused Gromov-Wasserstein discrepancy (POT's fgw_dist; lower = closer)",
}
"""What :attr:`MatchResult.value` is, per built-in method."""


@dataclass(frozen=True)
class MatchResult:
    """Pairs of matched features with their scores, the transport plan if any, and provenance.

    Attributes:
        pairs: ``(k, 2)`` int64 array; row ``(i, j)`` pairs latent ``i`` of ``a`` with latent ``j`` of ``b``.
        scores: ``(k,)`` float array; the similarity of each pair in the matched view (cosine or Pearson).
        plan: the coupling (dense ``(n, m)`` array, ``scipy.sparse`` matrix) for transport methods, else ``None``.
        value: the objective the method optimised (sum of matched similarities, or the OT cost);
            :attr:`value_meaning` says which.
        meta: ``{"method", "view", "n_a", "n_b", "params", ...}``; method-specific extras (gaps, groups).
    """

    pairs: Int[np.ndarray, "k 2"]
    scores: Float[np.ndarray, " k"]
    plan: Any = None
    value: float = float("nan")
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pairs = np.asarray(self.pairs.cpu() if isinstance(self.pairs, torch.Tensor) else self.pairs)
        scores = np.asarray(self.scores.cpu() if isinstance(self.scores, torch.Tensor) else self.scores)
        pairs = pairs.astype(np.int64).reshape(-1, 2)
        scores = scores.astype(np.float64).reshape(-1)
        if len(pairs) != len(scores):
            raise ValueError(f"pairs has {len(pairs)} rows but scores has {len(scores)}")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "value", float(self.value))

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def value_meaning(self) -> str:
        """What :attr:`value` is for this result's method (``meta['method']``, :data:`VALUE_MEANINGS`)."""
        method = self.meta.get("method")
        if method in VALUE_MEANINGS:
            return VALUE_MEANINGS[method]
        return f"the objective method {method!r} reported (see its docstring)"

    @property
    def mean_score(self) -> float:
        """Mean similarity over the matched pairs (NaN when nothing matched)."""
        return float(self.scores.mean()) if len(self.scores) else float("nan")

    def as_dict(self) -> dict[int, int]:
        """``{i: j}`` for every pair (the last pair wins for a many-to-one match)."""
        return {int(i): int(j) for i, j in self.pairs}

    def fraction_above(self, threshold: float, n: int | None = None) -> float:
        """Fraction of ``n`` latents (default ``meta['n_a']``) whose matched score exceeds ``threshold``."""
        n = int(n if n is not None else self.meta.get("n_a", len(self.pairs)))
        if n == 0:
            return float("nan")
        return float(len(np.unique(self.pairs[self.scores > threshold, 0])) / n)
