"""The one result object every matcher returns (modelled on POT's ``OTResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

__all__ = ["MatchResult"]


@dataclass(frozen=True)
class MatchResult:
    """Pairs of matched features with their scores, the transport plan if any, and provenance.

    Attributes:
        pairs: ``(k, 2)`` int64 array; row ``(i, j)`` pairs latent ``i`` of ``a`` with latent ``j`` of ``b``.
        scores: ``(k,)`` float array; the similarity of each pair in the matched view (cosine or Pearson).
        plan: the coupling (dense ``(n, m)`` array, ``scipy.sparse`` matrix) for transport methods, else ``None``.
        value: the objective the method optimised (sum of matched similarities, or the OT cost).
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
