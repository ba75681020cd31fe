"""Sparse linear maps between two dictionaries' codes, evaluated on held-out tokens.

Given the codes of two dictionaries on the *same* tokens, ``z_src`` (tokens x ``d_src``) and ``z_tgt``
(tokens x ``d_tgt``) - e.g. the MLP-output features of a block and the residual features after it -
:func:`fit_code_map` learns a transcoder-like sparse linear map from one to the other,

.. math::
    \\hat y = \\tilde z_{src} W + b, \\qquad
    \\min_{W, b}\\; \\tfrac1B \\lVert \\tilde z_{src} W + b - \\tilde z_{tgt} \\rVert_F^2 + \\lambda \\lVert W \\rVert_1,

on columns standardised with the training split's mean and standard deviation (so ``W`` holds
standardised coefficients and one L1 strength :math:`\\lambda` means the same for every latent: a
source enters a target's map only where twice its correlation with the residual exceeds
:math:`\\lambda`). The fit is Adam with a proximal (soft-threshold) step for the L1 term, scaled per
weight by Adam's preconditioner, so unused weights are exactly zero. It is scored by explained variance
of the target codes on a held-out *contiguous* block of tokens (the last ``holdout`` share: neighbouring
tokens share context, so a random split would leak). This is the learned counterpart of the
activation-matching view (Wang et al. 2024, *Towards Universality*, MPPC): :func:`matching_map_ev`
predicts each target latent from its one matched source latent only, on the same split, and
:func:`agreement` asks whether the map's strongest source for a target is its matched partner. Reading
the map's weights as feature flow across layers and components follows Laptev et al. 2025 (*Analyze
Feature Flow to Enhance Interpretation and Steering in Language Models*).

Baselines: :func:`shuffled_floor_ev` fits the same map on token-shuffled source codes (chance level).
Latents that never vary on the training split are *dead* there: dead sources get no weight, dead targets
are left out of every explained-variance average, and both are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from universality.errors import ConfigError, DataError
from universality.match.assignment import hungarian
from universality.match.baselines import token_permutation
from universality.match.result import MatchResult
from universality.match.similarity import check_codes, dense_similarity
from universality.match.views import FeatureCodes, codes_from_dense

__all__ = [
    "CodeMapConfig",
    "CodeMap",
    "DENSITY_TOL",
    "split_tokens",
    "fit_code_map",
    "shuffled_floor_ev",
    "correlation_pairs",
    "matching_map_ev",
    "agreement",
]

DENSITY_TOL = 1e-3
"""A weight counts towards :attr:`CodeMap.density` when its magnitude (standardised units) exceeds this."""
_EPS = 1e-8  # Adam's epsilon
_BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class CodeMapConfig:
    """How :func:`fit_code_map` fits: L1 strength ``l1`` on standardised weights, Adam ``steps`` at
    learning rate ``lr`` on minibatches of ``batch_size`` training tokens (all of them when fewer),
    ``holdout`` share of the tokens (the last contiguous block) held out for scoring, ``seed`` for the
    minibatches (and the floor's token shuffle)."""

    l1: float = 0.05
    steps: int = 300
    lr: float = 0.02
    batch_size: int = 1024
    holdout: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.l1, (int, float)) and math.isfinite(self.l1) and self.l1 >= 0):
            raise ConfigError(f"code map l1 must be a finite number >= 0, got {self.l1!r}", "use e.g. l1=0.05")
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"code map {name} must be a positive integer, got {v!r}", f"use e.g. {name}={CodeMapConfig.__dataclass_fields__[name].default}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"code map lr must be a finite number > 0, got {self.lr!r}", "use e.g. lr=0.02")
        if not (isinstance(self.holdout, (int, float)) and 0 < self.holdout < 1):
            raise ConfigError(f"code map holdout must be a share strictly between 0 and 1, got {self.holdout!r}",
                              "use e.g. holdout=0.25 (the last quarter of the tokens)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"code map seed must be an integer, got {self.seed!r}", "use e.g. seed=0")


@dataclass(frozen=True)
class CodeMap:
    """A fitted map. ``weights`` ``(d_src, d_tgt)`` and ``bias`` ``(d_tgt,)`` act on standardised codes
    (training-split mean and standard deviation); ``r2`` ``(d_tgt,)`` is each target's held-out
    :math:`R^2` (NaN for targets dead on the training split or constant on the held-out tokens); ``ev``
    is the pooled held-out explained variance :math:`1 - \\sum_j SSE_j / \\sum_j SST_j` over the live
    targets, in standardised units (every live latent weighs by its held-out variance relative to its
    training variance, not by its raw scale)."""

    weights: Float[Tensor, "d_src d_tgt"]
    bias: Float[Tensor, " d_tgt"]
    r2: Float[np.ndarray, " d_tgt"]
    ev: float
    n_train: int
    n_test: int
    dead_sources: int
    dead_targets: int
    live_targets: Any  # bool (d_tgt,) array: the targets in the averages

    @property
    def density(self) -> float:
        """Share of the weights with magnitude above :data:`DENSITY_TOL`."""
        return float((self.weights.abs() > DENSITY_TOL).double().mean()) if self.weights.numel() else 0.0

    def edges(self, min_weight: float = DENSITY_TOL) -> pd.DataFrame:
        """Every ``(source, target, weight)`` with ``|weight| >= min_weight``, strongest first."""
        W = self.weights.numpy()
        src, tgt = np.nonzero(np.abs(W) >= min_weight)
        df = pd.DataFrame({"source": src.astype(np.int64), "target": tgt.astype(np.int64), "weight": W[src, tgt].astype(np.float64)})
        return df.iloc[np.argsort(-np.abs(df["weight"].to_numpy()), kind="stable")].reset_index(drop=True)

    def top_sources(self, k: int = 1) -> pd.DataFrame:
        """Per target, its ``k`` largest-magnitude non-zero sources: ``(target, rank, source, weight)``."""
        if k < 1:
            raise ConfigError(f"top_sources needs k >= 1, got {k}", "use e.g. k=3")
        W = self.weights.numpy()
        order = np.argsort(-np.abs(W), axis=0, kind="stable")[: min(k, W.shape[0])]  # (k, d_tgt)
        rows = [(j, r, int(order[r, j]), float(W[order[r, j], j]))
                for j in range(W.shape[1]) for r in range(order.shape[0]) if W[order[r, j], j] != 0]
        return pd.DataFrame(rows, columns=["target", "rank", "source", "weight"]).astype({"target": "int64", "rank": "int64", "source": "int64"})


def _dense(z: Any) -> Tensor:
    if isinstance(z, FeatureCodes):
        return z.rows(0, z.n).T.contiguous().cpu().double()
    t = torch.as_tensor(z).detach().cpu().double()
    if t.ndim != 2:
        raise DataError(f"codes must be (tokens, latents), got shape {tuple(t.shape)}", "pass a 2-D matrix")
    return t


def _pair(z_src: Any, z_tgt: Any) -> tuple[Tensor, Tensor]:
    if isinstance(z_src, FeatureCodes) and isinstance(z_tgt, FeatureCodes):
        check_codes(z_src, z_tgt)
    a, b = _dense(z_src), _dense(z_tgt)
    if a.shape[0] != b.shape[0]:
        raise DataError(f"source and target codes cover different tokens ({a.shape[0]} vs {b.shape[0]} rows)",
                        "encode the same tokens with both dictionaries")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise DataError("codes contain NaN or Inf", "check the dictionaries and the activations")
    return a, b


def split_tokens(n_tokens: int, holdout: float) -> tuple[slice, slice]:
    """``(train, test)`` slices: the last ``ceil(holdout * n)`` tokens are held out (a contiguous block)."""
    n_test = int(math.ceil(holdout * n_tokens))
    if n_test < 2 or n_tokens - n_test < 2:
        raise DataError(f"{n_tokens} tokens are too few to hold out {holdout:.0%} of them",
                        "encode more evaluation tokens or change holdout")
    return slice(0, n_tokens - n_test), slice(n_tokens - n_test, n_tokens)


def _standardise(z: Tensor, train: slice) -> tuple[Tensor, Tensor]:
    """Columns standardised by the training split; ``live``: columns that vary there (others set to 0)."""
    mu, sd = z[train].mean(0), z[train].std(0, unbiased=False)
    live = sd > 1e-6 * torch.sqrt(sd * sd + mu * mu)
    out = torch.where(live, (z - mu) / torch.where(live, sd, torch.ones_like(sd)), torch.zeros_like(z))
    return out, live


def _scores(y: Tensor, pred: Tensor, live: Tensor) -> tuple[np.ndarray, float, Tensor]:
    """Held-out per-target R^2 (NaN when not scored), pooled EV, and the scored-target mask."""
    sse = ((y - pred) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    scored = live & (sst > 1e-12 * y.shape[0])
    r2 = torch.where(scored, 1 - sse / torch.where(scored, sst, torch.ones_like(sst)), torch.full_like(sse, float("nan")))
    ev = float(1 - sse[scored].sum() / sst[scored].sum()) if bool(scored.any()) else float("nan")
    return r2.numpy(), ev, scored


def fit_code_map(z_src: Any, z_tgt: Any, cfg: CodeMapConfig = CodeMapConfig()) -> CodeMap:
    """Fit the sparse map from ``z_src`` to ``z_tgt`` (``(tokens, latents)`` matrices or
    :class:`~universality.match.views.FeatureCodes` on the same tokens) on the training split and score
    it on the held-out block. Deterministic for a fixed ``cfg.seed`` (CPU, float64)."""
    a, b = _pair(z_src, z_tgt)
    train, test = split_tokens(a.shape[0], cfg.holdout)
    x, live_s = _standardise(a, train)
    y, live_t = _standardise(b, train)
    xt, yt = x[train], y[train]
    n, d_s, d_t = xt.shape[0], x.shape[1], y.shape[1]
    W, bias = torch.zeros(d_s, d_t, dtype=torch.float64), torch.zeros(d_t, dtype=torch.float64)
    mW, vW, mb, vb = torch.zeros_like(W), torch.zeros_like(W), torch.zeros_like(bias), torch.zeros_like(bias)
    g = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, n)
    (b1, b2) = _BETAS
    for step in range(1, cfg.steps + 1):
        idx = torch.randperm(n, generator=g)[:bs] if bs < n else slice(None)
        xb, yb = xt[idx], yt[idx]
        err = xb @ W + bias - yb  # (B, d_t)
        gW, gb = (2.0 / bs) * (xb.T @ err), (2.0 / bs) * err.sum(0)
        mW.mul_(b1).add_(gW, alpha=1 - b1)
        vW.mul_(b2).addcmul_(gW, gW, value=1 - b2)
        mb.mul_(b1).add_(gb, alpha=1 - b1)
        vb.mul_(b2).addcmul_(gb, gb, value=1 - b2)
        c1, c2 = 1 - b1**step, 1 - b2**step
        denW = (vW / c2).sqrt() + _EPS
        W = W - cfg.lr * (mW / c1) / denW
        W = torch.sign(W) * (W.abs() - cfg.lr * cfg.l1 / denW).clamp_min(0)  # proximal L1 step, preconditioned
        bias = bias - cfg.lr * (mb / c1) / ((vb / c2).sqrt() + _EPS)
    W = W * live_s[:, None] * live_t[None, :]
    bias = bias * live_t
    r2, ev, scored = _scores(y[test], x[test] @ W + bias, live_t)
    return CodeMap(W.float(), bias.float(), r2, ev, n, a.shape[0] - n, int((~live_s).sum()), int((~live_t).sum()),
                   scored.numpy())


def shuffled_floor_ev(z_src: Any, z_tgt: Any, cfg: CodeMapConfig = CodeMapConfig()) -> float:
    """Held-out EV of the same fit on token-shuffled source codes (rows permuted with the seeded
    :func:`~universality.match.baselines.token_permutation`): the chance level of the map."""
    a, b = _pair(z_src, z_tgt)
    return fit_code_map(a[token_permutation(a.shape[0], cfg.seed)], b, cfg).ev


def _pairs(pairs: Any) -> np.ndarray:
    arr = pairs.pairs if isinstance(pairs, MatchResult) else np.asarray(pairs, dtype=np.int64)
    return np.asarray(arr, dtype=np.int64).reshape(-1, 2)


def correlation_pairs(z_src: Any, z_tgt: Any, holdout: float = CodeMapConfig.holdout) -> MatchResult:
    """Hungarian one-to-one matching of ``(source, target)`` latents by Pearson correlation of their
    codes on the *training* split only (the held-out block stays unseen by the baseline too)."""
    a, b = _pair(z_src, z_tgt)
    train, _ = split_tokens(a.shape[0], holdout)
    ca = codes_from_dense(a[train].float(), fingerprint="codemap-train")
    cb = codes_from_dense(b[train].float(), fingerprint="codemap-train")
    return hungarian(dense_similarity(ca, cb, "pearson"), meta={"view": "activations", "split": "train"})


def matching_map_ev(z_src: Any, z_tgt: Any, pairs: Any, holdout: float = CodeMapConfig.holdout) -> float:
    """Held-out EV when each target latent is predicted from its matched source latent only (least
    squares scale and offset per pair, fit on the training split); unmatched targets are predicted by
    their training mean. Same split, standardisation and live targets as :func:`fit_code_map`, so the
    two EVs compare directly. ``pairs``: a :class:`MatchResult` or ``(k, 2)`` ``(source, target)`` rows."""
    a, b = _pair(z_src, z_tgt)
    train, test = split_tokens(a.shape[0], holdout)
    x, _ = _standardise(a, train)
    y, live_t = _standardise(b, train)
    p = _pairs(pairs)
    if len(p) and (p[:, 0].max() >= x.shape[1] or p[:, 1].max() >= y.shape[1] or p.min() < 0):
        raise DataError("matched pairs name latents outside the codes", "pass (source, target) pairs of these two code sets")
    pred = torch.zeros_like(y[test])
    if len(p):
        s, t = torch.from_numpy(p[:, 0]), torch.from_numpy(p[:, 1])
        xs, ys = x[train][:, s], y[train][:, t]  # standardised: mean 0 on train, so the offset is 0
        var = (xs * xs).mean(0)
        coef = torch.where(var > 0, (xs * ys).mean(0) / var.clamp_min(1e-300), torch.zeros_like(var))
        pred[:, t] = x[test][:, s] * coef
    return _scores(y[test], pred, live_t)[1]


def agreement(code_map: CodeMap, pairs: Any) -> float:
    """Share of the matched, scored target latents whose largest-magnitude source in ``code_map`` is
    their matched source (a target with an all-zero column disagrees); NaN when none is scored."""
    p = _pairs(pairs)
    W = code_map.weights.abs().numpy()
    live = np.asarray(code_map.live_targets, dtype=bool)
    p = p[live[p[:, 1]]] if len(p) else p
    if not len(p):
        return float("nan")
    col = W[:, p[:, 1]]
    best = col.argmax(0)
    return float(np.mean((best == p[:, 0]) & (col.max(0) > 0)))
