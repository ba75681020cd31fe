"""Feature-card statistics for every latent of a dictionary in one streaming pass over the tokens.

:class:`CardCollector` reads the codes ``z`` ``(B, n)`` of consecutive chunks of the evaluation text
(whole contexts per chunk) and keeps, per latent:

- the ``n_top`` strongest firings with their windows (:class:`~universality.cards.buffers.TopBuffer`);
- a uniform random sample of ``reservoir`` firings (the firings with the smallest of i.i.d. uniform
  keys), split at the end into ``n_bands`` activation quantile bands (lowest quartile first): the
  examples "from lower activation quantiles" that the maxima alone would hide (SAEDashboard and
  Bricken et al. 2023 show interval samples for the same reason);
- firing count, sum, sum of squares and maximum; a histogram of the positive activations in
  ``hist_bins`` log-spaced bins from ``hist_lo`` to ``hist_hi`` (values outside fall in the end bins);
- sums of activation per (token id, latent), separately for even and odd contexts.

**Token identity share** (``token_identity``): the cross-fitted coefficient of determination of a
lookup table from token id to activation,

.. math::
    R^2_f = 1 - \\frac{\\sum_{h \\in \\{0,1\\}} \\sum_{t \\in h} (z_{tf} - \\bar z^{(1-h)}_{v(t) f})^2}
                    {\\sum_t (z_{tf} - \\bar z_f)^2}

where :math:`\\bar z^{(h)}_{vf}` is the mean activation of latent ``f`` on token id ``v`` over the
contexts of half ``h`` (even or odd context index) and a token id never seen in the other half is
predicted 0. It is the share of the latent's variance that token identity alone explains on held-out
contexts: near 1 for a token detector, near 0 when context decides; clipped to [0, 1], NaN for a
latent with fewer than :data:`MIN_FIRES_IDENTITY` firings. It is the whole-text counterpart of
:func:`analysis.studies.common.context_excess` (which asks the same question on one set of rows).
Cross-fitting keeps a token seen once from explaining itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.cards.buffers import SparseSum, TopBuffer
from universality.errors import ConfigError

__all__ = ["CardOptions", "CardCollector", "CardStats", "MIN_FIRES_IDENTITY"]

#: fewer firings than this leave the token identity share undefined (NaN)
MIN_FIRES_IDENTITY = 4


@dataclass(frozen=True)
class CardOptions:
    """What a card collects: ``n_top`` strongest examples, ``n_bands`` quantile bands of ``n_band``
    examples each (from a uniform sample of ``reservoir`` firings), windows of ``before`` tokens before
    and ``after`` after the firing token, the histogram, ``n_top_tokens`` tokens by activation mass,
    ``n_logit`` promoted and suppressed tokens; ``seed`` fixes the random sample; ``identity_pairs``
    caps the (token id, latent) sums behind the token identity share and the top tokens (16 bytes
    each per half): once both halves hold that many, those two read no further tokens, and the card
    set says on how many tokens they were estimated (``identity_tokens``)."""

    n_top: int = 12
    n_bands: int = 4
    n_band: int = 3
    reservoir: int = 24
    before: int = 10
    after: int = 3
    hist_bins: int = 40
    hist_lo: float = 1e-3
    hist_hi: float = 1e3
    n_top_tokens: int = 5
    n_logit: int = 8
    seed: int = 0
    identity_pairs: int = 1 << 23

    def __post_init__(self) -> None:
        for name in ("n_top", "n_bands", "n_band", "reservoir", "hist_bins", "n_top_tokens", "identity_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"card option {name} must be >= 1, got {getattr(self, name)}", f"set {name} to e.g. 4")
        for name in ("before", "after", "n_logit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"card option {name} must be >= 0, got {getattr(self, name)}", f"set {name} to e.g. 3")
        if self.reservoir < self.n_bands * self.n_band:
            raise ConfigError(f"reservoir {self.reservoir} is smaller than n_bands x n_band = {self.n_bands * self.n_band}",
                              "raise reservoir or lower n_band")
        if not (0 < self.hist_lo < self.hist_hi):
            raise ConfigError(f"histogram range [{self.hist_lo}, {self.hist_hi}] is empty or not positive",
                              "use e.g. hist_lo=1e-3, hist_hi=1e3")

    @property
    def hist_edges(self) -> np.ndarray:
        return np.logspace(math.log10(self.hist_lo), math.log10(self.hist_hi), self.hist_bins + 1)


@dataclass(frozen=True)
class CardStats:
    """Per-latent results of a :class:`CardCollector` (arrays of length ``n_latents``) plus its buffers."""

    n_tokens: int
    fires: np.ndarray
    sums: np.ndarray
    max_value: np.ndarray
    hist_counts: np.ndarray  # (n, bins)
    token_identity: np.ndarray
    top_tokens: list[list[tuple[int, float]]]  # per latent: (token id, share of mass)
    identity_tokens: int  # tokens the token identity share and the top tokens were estimated on
    top: TopBuffer
    sample: TopBuffer
    options: CardOptions


class CardCollector:
    """Streaming card statistics for ``n_latents`` latents; see the module docstring."""

    def __init__(self, n_latents: int, options: CardOptions = CardOptions()) -> None:
        o = options
        self.n, self.o = n_latents, o
        self.top = TopBuffer(o.n_top, n_latents, 1, o.before, o.after, largest=True)
        self.sample = TopBuffer(o.reservoir, n_latents, 1, o.before, o.after, largest=False)
        self.fires = torch.zeros(n_latents, dtype=torch.int64)
        self.sums = torch.zeros(n_latents, dtype=torch.float64)
        self.max = torch.zeros(n_latents, dtype=torch.float64)
        self.hist = torch.zeros(n_latents * o.hist_bins, dtype=torch.int64)
        self.half_sum = [torch.zeros(n_latents, dtype=torch.float64) for _ in range(2)]
        self.half_sq = [torch.zeros(n_latents, dtype=torch.float64) for _ in range(2)]
        self.half_rows = [0, 0]
        self.by_token = [SparseSum(), SparseSum()]
        self.token_count = [torch.zeros(0, dtype=torch.float64) for _ in range(2)]
        self.n_tokens = 0
        self.identity_tokens = 0
        self.gen = torch.Generator().manual_seed(o.seed)
        self._log_lo = math.log10(o.hist_lo)
        self._log_step = (math.log10(o.hist_hi) - self._log_lo) / o.hist_bins

    def update(self, z: Float[Tensor, "B n"], token_ids: Int[Tensor, " B"], context: Int[Tensor, " B"]) -> None:
        """Add one chunk of codes (whole contexts, in text order)."""
        if z.ndim != 2 or z.shape[1] != self.n:
            raise ConfigError(f"codes of shape {tuple(z.shape)} for a collector of {self.n} latents",
                              "encode with the dictionary the collector was made for")
        if z.shape[0] != token_ids.shape[0] or z.shape[0] != context.shape[0]:
            raise ConfigError(f"{z.shape[0]} code rows, {token_ids.shape[0]} token ids, {context.shape[0]} context ids",
                              "give one token id and context id per row")
        z = z.detach().float().cpu()
        token_ids, context = token_ids.long().cpu(), context.long().cpu()
        B = z.shape[0]
        start = self.n_tokens
        fire = z > 0
        self.top.update(torch.where(fire, z, torch.full((), float("-inf"))), [z], token_ids, context, start)
        u = torch.rand(z.shape, generator=self.gen)
        self.sample.update(torch.where(fire, u, torch.full((), float("inf"))), [z], token_ids, context, start)
        r, f = fire.nonzero(as_tuple=True)
        v = z[r, f].double()
        self.fires += torch.bincount(f, minlength=self.n)
        self.sums.index_add_(0, f, v)
        self.max = torch.maximum(self.max, z.max(0).values.double().clamp_min(0))
        b = ((v.log10() - self._log_lo) / self._log_step).floor().long().clamp(0, self.o.hist_bins - 1)
        self.hist += torch.bincount(f * self.o.hist_bins + b, minlength=self.n * self.o.hist_bins)
        if self._identity_full():
            self.n_tokens += B
            return
        self.identity_tokens += B
        vocab = int(token_ids.max()) + 1 if B else 0
        half = context % 2
        grow = vocab - self.token_count[0].numel()
        if grow > 0:  # both halves keep one count per token id seen so far
            self.token_count = [torch.cat([c, torch.zeros(grow, dtype=torch.float64)]) for c in self.token_count]
        for h in (0, 1):
            rows_h = half == h
            self.half_rows[h] += int(rows_h.sum())
            zh = z[rows_h].double()
            self.half_sum[h] += zh.sum(0)
            self.half_sq[h] += (zh * zh).sum(0)
            self.token_count[h].index_add_(0, token_ids[rows_h], torch.ones(int(rows_h.sum()), dtype=torch.float64))
            sel = half[r] == h
            self.by_token[h].add(token_ids[r[sel]] * self.n + f[sel], v[sel])
        self.n_tokens += B

    def _identity_full(self) -> bool:
        return len(self.by_token[0].keys) + len(self.by_token[1].keys) >= self.o.identity_pairs

    # ------------------------------------------------------------------ results
    def _identity(self) -> np.ndarray:
        n = self.n
        sse = torch.zeros(n, dtype=torch.float64)
        for a, b in ((0, 1), (1, 0)):
            sb, cb = self.by_token[b], self.token_count[b]
            ca = self.token_count[a]
            if sb.keys.numel() == 0:
                sse += self.half_sq[a]
                continue
            vb, fb = sb.keys // n, sb.keys % n
            mean_b = sb.sums / cb[vb]
            sa_at_b, _ = self.by_token[a].lookup(sb.keys)
            count_a = ca[vb]
            cross = torch.zeros(n, dtype=torch.float64).index_add_(0, fb, sa_at_b * mean_b)
            pred_sq = torch.zeros(n, dtype=torch.float64).index_add_(0, fb, count_a * mean_b * mean_b)
            sse += self.half_sq[a] - 2 * cross + pred_sq
        total = self.half_rows[0] + self.half_rows[1]
        s1 = self.half_sum[0] + self.half_sum[1]
        sst = self.half_sq[0] + self.half_sq[1] - s1 * s1 / max(total, 1)
        ok = (sst > 0) & (self.fires >= MIN_FIRES_IDENTITY)
        r2 = torch.where(ok, 1 - sse / sst.clamp_min(1e-300), torch.full((), float("nan"), dtype=torch.float64))
        return r2.clamp(0, 1).numpy()

    def _top_tokens(self) -> list[list[tuple[int, float]]]:
        n, k = self.n, self.o.n_top_tokens
        merged = SparseSum()
        for s in self.by_token:
            merged.add(s.keys, s.sums)
        out: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        if merged.keys.numel() == 0:
            return out
        tok, lat, mass = merged.keys // n, merged.keys % n, merged.sums
        order = torch.argsort(-mass, stable=True)
        order = order[torch.argsort(lat[order], stable=True)]
        lat_s = lat[order]
        starts = torch.zeros(n + 1, dtype=torch.int64)
        starts[1:] = torch.cumsum(torch.bincount(lat_s, minlength=n), 0)
        rank = torch.arange(len(order)) - starts[lat_s]
        keep = order[rank < k]
        total = torch.zeros(n, dtype=torch.float64).index_add_(0, lat, mass)  # mass on the tokens these sums read
        for t, f, m in zip(tok[keep].tolist(), lat[keep].tolist(), mass[keep].tolist()):
            out[f].append((t, m / float(total[f]) if total[f] > 0 else 0.0))
        return out

    def finish(self) -> CardStats:
        """The per-latent statistics (the collector may not be updated afterwards)."""
        return CardStats(
            n_tokens=self.n_tokens, fires=self.fires.numpy(), sums=self.sums.numpy(), max_value=self.max.numpy(),
            hist_counts=self.hist.view(self.n, self.o.hist_bins).numpy(), token_identity=self._identity(),
            top_tokens=self._top_tokens(), identity_tokens=self.identity_tokens, top=self.top, sample=self.sample, options=self.o)
