"""Paired synthetic worlds with a known shared fraction, for validating and calibrating matchers.

Two planted worlds ``A`` and ``B`` have ``n_features`` and ``n_features_b`` (default: the same)
ground-truth features; ``n_shared = round(shared_fraction * n_features)`` of them (so ``shared_fraction``
is relative to A; relative to B it is ``n_shared / n_features_b``) are *the same latent events*: on every
token they fire together with the same magnitude in both worlds. World ``B`` lives in a different space: its shared
directions are ``A``'s rotated and embedded by a random ``(d_a, d_b)`` matrix with orthonormal rows
(``rotate=True``, ``d_b >= d_a``), so decoder cosines between worlds mean nothing while activation
correlations on shared tokens still find the shared features. The other features are private, drawn
independently in each world (directions and events). ``shared_fraction=0`` gives independent worlds
(the null). Built on :mod:`universality.synthetic` (``planted_dictionary``, ``feature_probabilities``,
``sample_codes``, ``embed``), which provides single worlds and fully-shared code samples only. Firing
frequencies decay exponentially (``decay``, as in :mod:`universality.synthetic`) or, with ``zipf > 0``,
like a power law :math:`p_i \\propto (i+1)^{-s}` (:func:`zipf_probabilities`; token and feature
frequencies in language are Zipf-like).

:func:`seed_like_pair` builds two dictionaries that look like two seeds of one SAE (a common planted
dictionary, each copy perturbed and permuted independently, a fraction of rows replaced by seed-specific
ones), used by the benchmark where training 65k-latent SAEs on the CPU is infeasible.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality import synthetic as syn
from universality.errors import ConfigError, DataError

__all__ = [
    "PairedWorldConfig",
    "PairedWorld",
    "WorldSample",
    "PairedSource",
    "make_paired_world",
    "zipf_probabilities",
    "seed_like_pair",
]


@dataclass(frozen=True)
class PairedWorldConfig:
    """Sizes, shared fraction, sparsity and basis change of two paired planted worlds."""

    n_features: int = 64
    d_a: int = 32
    d_b: int = 48
    shared_fraction: float = 0.5
    mean_active: float = 3.0
    decay: float = 1.0
    noise_std: float = 0.0
    rotate: bool = True
    seed: int = 0
    n_features_b: int | None = None
    zipf: float = 0.0

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.d_a < 1 or self.d_b < 1 or (self.n_features_b is not None
                                                                   and self.n_features_b < 1):
            raise ConfigError("PairedWorldConfig sizes must be positive", "use e.g. n_features=64, d_a=32, d_b=48")
        if not 0.0 <= self.shared_fraction <= 1.0:
            raise ConfigError(f"shared_fraction must be in [0, 1], got {self.shared_fraction}", "use e.g. 0.5")
        if self.rotate and self.d_b < self.d_a:
            raise ConfigError(f"rotate=True embeds R^{self.d_a} into R^{self.d_b}, which needs d_b >= d_a",
                              "make d_b >= d_a")
        if not self.rotate and self.d_b != self.d_a:
            raise ConfigError("rotate=False keeps one basis, so d_a must equal d_b", "set d_b = d_a or rotate=True")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}", "use 0 for noiseless worlds")
        if self.zipf < 0:
            raise ConfigError(f"zipf must be >= 0, got {self.zipf}", "use 0 for exponential decay, e.g. 1.0 for Zipf")
        if self.n_shared > self.n_b:
            raise ConfigError(f"{self.n_shared} shared features do not fit in B's {self.n_b}",
                              "lower shared_fraction or raise n_features_b")
        for n in {self.n_features, self.n_b}:
            if not 0 < self.mean_active <= n:
                raise ConfigError(f"mean_active must be in (0, {n}], got {self.mean_active}", "use e.g. 3")

    @property
    def n_b(self) -> int:
        """World B's number of features (``n_features_b``, default ``n_features``)."""
        return self.n_features if self.n_features_b is None else int(self.n_features_b)

    @property
    def n_shared(self) -> int:
        return int(round(self.shared_fraction * self.n_features))


@dataclass(frozen=True)
class WorldSample:
    """Activations and true codes of both worlds on the same ``T`` tokens (``token_ids`` = row ids)."""

    x_a: Float[Tensor, "T d_a"]
    x_b: Float[Tensor, "T d_b"]
    z_a: Float[Tensor, "T n"]
    z_b: Float[Tensor, "T n_b"]
    token_ids: Int[Tensor, " T"]


@dataclass(frozen=True)
class PairedWorld:
    """Ground truth of two paired worlds: dictionaries, firing probabilities and the true shared pairs.

    ``shared_pairs`` ``(n_shared, 2)``: feature ``i`` of ``A`` and ``j`` of ``B`` are one latent event.
    """

    cfg: PairedWorldConfig
    D_a: Float[Tensor, "n d_a"]
    D_b: Float[Tensor, "n_b d_b"]
    probs_a: Float[Tensor, " n"]
    probs_b: Float[Tensor, " n_b"]
    shared_pairs: Int[Tensor, "s 2"]
    embedding: Float[Tensor, "d_a d_b"]

    @property
    def true_shared_fraction(self) -> float:
        """Fraction of A's features that are shared (``true_fraction_of_b`` for B's)."""
        return len(self.shared_pairs) / self.cfg.n_features

    @property
    def true_fraction_of_b(self) -> float:
        return len(self.shared_pairs) / self.cfg.n_b

    def sample(self, n_tokens: int, seed: int = 0) -> WorldSample:
        """``n_tokens`` tokens of both worlds; shared features fire identically, private ones independently."""
        if n_tokens < 1:
            raise ConfigError(f"n_tokens must be >= 1, got {n_tokens}", "ask for at least one token")
        g = syn.generator(self.cfg.seed * 7_919 + seed * 104_729 + 17)
        z_a = syn.sample_codes(n_tokens, self.probs_a, g)
        z_b = syn.sample_codes(n_tokens, self.probs_b, g)
        if len(self.shared_pairs):
            z_b[:, self.shared_pairs[:, 1]] = z_a[:, self.shared_pairs[:, 0]]
        x_a = syn.embed(z_a, self.D_a, self.cfg.noise_std, g)
        x_b = syn.embed(z_b, self.D_b, self.cfg.noise_std, g)
        return WorldSample(x_a, x_b, z_a, z_b, torch.arange(n_tokens) + seed * 1_000_000_007)

    def source(self, batch_size: int, seed: int = 0, n_batches: int | None = None) -> PairedSource:
        """An activation source yielding ``{"a": x_a, "b": x_b}`` batches (for ``universality.train_saes``)."""
        return PairedSource(self, batch_size, seed, n_batches)


class PairedSource:
    """Iterable of ``{"a": (batch, d_a), "b": (batch, d_b)}``; batch ``i`` depends on ``(seed, i)`` only,
    and ``state_dict``/``load_state_dict`` resume at the next batch.

    Given a mapping ``name -> PairedWorld`` it yields ``{"name/a": ..., "name/b": ...}`` for every world, so
    one ``train_saes`` pass trains the SAEs of several worlds.
    """

    def __init__(self, world: PairedWorld | Mapping[str, PairedWorld], batch_size: int, seed: int = 0,
                 n_batches: int | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}", "use e.g. 256")
        self.worlds = dict(world) if isinstance(world, Mapping) else {"": world}
        self.batch_size, self.seed, self.n_batches = int(batch_size), int(seed), n_batches
        self.next_batch = 0

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while self.n_batches is None or self.next_batch < self.n_batches:
            out = {}
            for name, world in self.worlds.items():
                s = world.sample(self.batch_size, seed=1 + self.seed * 1_000_003 + self.next_batch)
                prefix = f"{name}/" if name else ""
                out[prefix + "a"], out[prefix + "b"] = s.x_a, s.x_b
            self.next_batch += 1
            yield out

    def state_dict(self) -> dict[str, Any]:
        return {"next_batch": self.next_batch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise DataError(f"source state is for seed {state.get('seed')}, this source has seed {self.seed}",
                            "resume with the same source")
        self.next_batch = int(state["next_batch"])


def zipf_probabilities(n_features: int, mean_active: float = 3.0, exponent: float = 1.0) -> Float[Tensor, " n"]:
    """Power-law firing probabilities :math:`p_i \\propto (i+1)^{-s}` (Zipf 1949) scaled so that
    :math:`\\sum p = ` ``mean_active``, capped at 1 (then the sum is below ``mean_active``)."""
    if not 0 < mean_active <= n_features:
        raise ConfigError(f"mean_active must be in (0, {n_features}], got {mean_active}", "use e.g. 3")
    w = (torch.arange(n_features, dtype=torch.float64) + 1.0) ** -float(exponent)
    return (w * (mean_active / w.sum())).clamp(max=1.0).to(torch.float32)


def _probabilities(n: int, cfg: PairedWorldConfig) -> Tensor:
    if cfg.zipf > 0:
        return zipf_probabilities(n, cfg.mean_active, cfg.zipf)
    return syn.feature_probabilities(n, cfg.mean_active, cfg.decay)


def make_paired_world(cfg: PairedWorldConfig) -> PairedWorld:
    """Draw the two worlds' dictionaries, probabilities and shared pairs from ``cfg.seed``.

    World A is the same for every ``shared_fraction`` and ``n_features_b`` of one seed (its dictionary and
    probabilities are drawn first), so one second-seed SAE of A serves as the skyline of all of them.
    """
    n, n_b, s = cfg.n_features, cfg.n_b, cfg.n_shared
    g = syn.generator(cfg.seed)
    D_a = syn.planted_dictionary(n, cfg.d_a, seed=cfg.seed * 2 + 1)
    if cfg.rotate:
        Q, _ = torch.linalg.qr(torch.randn(cfg.d_b, cfg.d_a, generator=g))  # (d_b, d_a), orthonormal columns
        E = Q.T.contiguous()  # (d_a, d_b): orthonormal rows, so x -> x E preserves inner products
    else:
        E = torch.eye(cfg.d_a)
    probs = _probabilities(n, cfg)
    probs_a = probs[torch.randperm(n, generator=g)]
    perm_b = torch.randperm(n_b, generator=g)
    shared_a = torch.randperm(n, generator=g)[:s].sort().values
    shared_b = perm_b[:s]
    D_b = syn.planted_dictionary(n_b, cfg.d_b, seed=cfg.seed * 2 + 2)
    D_b[shared_b] = D_a[shared_a] @ E
    probs_b = (probs if n_b == n else _probabilities(n_b, cfg))[torch.randperm(n_b, generator=g)]
    probs_b[shared_b] = probs_a[shared_a]
    pairs = torch.stack([shared_a, shared_b], 1)
    return PairedWorld(cfg, D_a, D_b, probs_a, probs_b, pairs, E)


def seed_like_pair(
    n: int, d: int, noise: float = 0.1, replaced: float = 0.3, seed: int = 0
) -> tuple[Float[Tensor, "n d"], Float[Tensor, "n d"], Int[Tensor, " n"]]:
    """Two unit dictionaries that resemble two seeds of one SAE.

    A common planted dictionary ``D`` is copied twice; each copy gets independent Gaussian perturbation of
    relative size ``noise`` per row, a fraction ``replaced`` of its rows swapped for seed-specific random
    directions (the unshared latents Paulo & Belrose 2025 observe), and the second copy is permuted.
    Returns ``(D1, D2, perm)`` with ``D2[perm[i]]`` the counterpart of ``D1[i]`` where both are kept.
    """
    g = syn.generator(seed)
    D = torch.randn(n, d, generator=g)
    D = D / D.norm(dim=1, keepdim=True)

    def copy() -> Tensor:
        C = D + noise * torch.randn(n, d, generator=g) / d**0.5
        r = torch.rand(n, generator=g) < replaced
        C[r] = torch.randn(int(r.sum()), d, generator=g)
        return C / C.norm(dim=1, keepdim=True)

    D1, D2 = copy(), copy()
    perm = torch.randperm(n, generator=g)
    D2_perm = torch.empty_like(D2)
    D2_perm[perm] = D2
    return D1, D2_perm, perm
