"""N-source planted worlds with known crosscoder answers (the paired worlds of
:mod:`universality.match.worlds`, extended to ``N`` sources and to features that change along them).

One sparse code ``z`` (``(T, n_features)``, :func:`universality.synthetic.sample_codes`) drives every
source: ``x_s = sum_i z_i a_{s,i} u_{s,i} E_s + noise``, with ``a_{s,i}`` the amplitude of feature ``i``
in source ``s`` (0 where it is absent), ``u_{s,i}`` its unit direction in a base space of dimension
``min(widths)`` and ``E_s`` the source's embedding (a random matrix with orthonormal rows when
``rotate=True``, so every source has its own basis; the identity when ``rotate=False``, which needs equal
widths, as checkpoints of one model have). Feature kinds, in index order:

- ``shared``: amplitude 1 and one direction in every source;
- ``exclusive``: ``n_exclusive`` per source, present in that source only;
- ``rotated``: present everywhere, the direction turning in a plane by ``rotation_deg`` from the first
  source to the last (linearly in the source index), so the per-source decoder cosine between sources
  ``s`` and ``t`` is ``cos((t - s) * rotation_deg / (N - 1))``;
- ``weakened``: present everywhere, amplitude 1 in one source (cycling) and ``weak_ratio`` in the others
  (present in both, so a crosscoder that calls it exclusive is wrong: the false exclusives that Latent
  Scaling should catch);
- ``born``: one feature per entry of ``births``, absent before that source index and present (amplitude
  1, one direction) from it on - a feature born during training in a checkpoint series.

``gains`` multiplies each source's activations (sources of different scale; the trainer's per-source
normalisation should undo it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from universality import synthetic as syn
from universality.errors import ConfigError, DataError

__all__ = ["CrossWorldConfig", "CrossWorld", "CrossWorldSource", "make_cross_world", "KINDS"]

KINDS = ("shared", "exclusive", "rotated", "weakened", "born")


@dataclass(frozen=True)
class CrossWorldConfig:
    """Sources, feature counts per kind, sparsity and basis of an N-source planted world."""

    widths: tuple[int, ...] = (24, 24)
    n_shared: int = 12
    n_exclusive: int = 6
    n_rotated: int = 0
    rotation_deg: float = 60.0
    n_weakened: int = 0
    weak_ratio: float = 0.1
    births: tuple[int, ...] = ()
    gains: tuple[float, ...] | None = None
    rotate: bool = True
    mean_active: float = 3.0
    decay: float = 1.0
    noise_std: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        widths = tuple(self.widths)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "births", tuple(self.births))
        if len(widths) < 2 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ConfigError(f"CrossWorldConfig.widths must be at least two positive widths, got {widths}", "use e.g. (24, 24)")
        for name in ("n_shared", "n_exclusive", "n_rotated", "n_weakened"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"CrossWorldConfig.{name} must be an integer >= 0, got {getattr(self, name)!r}", "use e.g. 8")
        if self.n_features < 1:
            raise ConfigError("CrossWorldConfig plants no feature", "set n_shared or n_exclusive above 0")
        if not self.rotate and len(set(widths)) != 1:
            raise ConfigError(f"rotate=False keeps one basis, so every width must be equal, got {widths}", "set rotate=True or equal widths")
        if any(not isinstance(t, int) or not 0 <= t < len(widths) for t in self.births):
            raise ConfigError(f"births must be source indices in [0, {len(widths) - 1}], got {self.births}", "use e.g. (1, 2)")
        if self.gains is not None:
            object.__setattr__(self, "gains", tuple(float(g) for g in self.gains))
            if len(self.gains) != len(widths) or any(not g > 0 for g in self.gains):
                raise ConfigError(f"gains must give one positive factor per source, got {self.gains}", "use e.g. (1.0, 5.0)")
        if not 0.0 < self.weak_ratio < 1.0:
            raise ConfigError(f"weak_ratio must be in (0, 1), got {self.weak_ratio}", "use e.g. 0.1")
        if not 0 < self.mean_active <= self.n_features:
            raise ConfigError(f"mean_active must be in (0, {self.n_features}], got {self.mean_active}", "use e.g. 3")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}", "use 0 for noiseless worlds")

    @property
    def n_sources(self) -> int:
        return len(self.widths)

    @property
    def n_features(self) -> int:
        return (self.n_shared + self.n_exclusive * self.n_sources + self.n_rotated + self.n_weakened
                + len(self.births))


@dataclass(frozen=True)
class CrossWorld:
    """Ground truth: per-source directions (raw units, zero rows where absent) and amplitudes.

    ``amplitude`` ``(N, n)``; ``kinds`` the kind of each feature; ``home`` the source of an exclusive or
    weakened feature (``-1`` otherwise); ``birth`` the first source where a feature is present.
    """

    cfg: CrossWorldConfig
    directions: tuple[Tensor, ...]
    amplitude: Float[Tensor, "n_sources n"]
    probs: Float[Tensor, " n"]
    kinds: tuple[str, ...]
    home: tuple[int, ...]
    birth: tuple[int, ...] = field(default=())

    def present(self) -> Tensor:
        """``(N, n)`` bool: where each feature is present."""
        return self.amplitude > 0

    def sample(self, n_tokens: int, seed: int = 0) -> tuple[list[Tensor], Tensor]:
        """``([x_1, ..., x_N], z)`` on ``n_tokens`` tokens (one code for every source)."""
        if n_tokens < 1:
            raise ConfigError(f"n_tokens must be >= 1, got {n_tokens}", "ask for at least one token")
        g = syn.generator(self.cfg.seed * 7_919 + seed * 104_729 + 23)
        z = syn.sample_codes(n_tokens, self.probs, g)
        gains = self.cfg.gains or (1.0,) * self.cfg.n_sources
        xs = []
        for s, D in enumerate(self.directions):
            x = (z * self.amplitude[s]) @ D
            if self.cfg.noise_std > 0:
                x = x + self.cfg.noise_std * torch.randn(x.shape, generator=g)
            xs.append(gains[s] * x)
        return xs, z

    def joint(self, n_tokens: int, seed: int = 0) -> Float[Tensor, "T d_total"]:
        """The concatenated sources (what a crosscoder reads)."""
        return torch.cat(self.sample(n_tokens, seed)[0], dim=1)

    def source(self, batch_size: int, seed: int = 0, n_batches: int | None = None, site: str = "joint") -> CrossWorldSource:
        """An activation source yielding ``{site: joint batch}`` (``site=None``: ``{"s0": x_0, ...}``)."""
        return CrossWorldSource(self, batch_size, seed, n_batches, site)


class CrossWorldSource:
    """Batch ``i`` depends on ``(seed, i)`` only; ``state_dict``/``load_state_dict`` resume at the next batch."""

    def __init__(self, world: CrossWorld, batch_size: int, seed: int = 0, n_batches: int | None = None,
                 site: str | None = "joint") -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}", "use e.g. 256")
        self.world, self.batch_size, self.seed, self.n_batches, self.site = world, int(batch_size), int(seed), n_batches, site
        self.next_batch = 0

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while self.n_batches is None or self.next_batch < self.n_batches:
            xs, _ = self.world.sample(self.batch_size, seed=1 + self.seed * 1_000_003 + self.next_batch)
            self.next_batch += 1
            yield {self.site: torch.cat(xs, dim=1)} if self.site else {f"s{i}": x for i, x in enumerate(xs)}

    def provenance(self) -> dict[str, Any]:
        c = self.world.cfg
        return {"dataset": "synthetic-crossworld", "subset_hash": f"seed{c.seed}",
                "sources": [{"model": "synthetic", "revision": f"source{i}", "site": f"s{i}", "dataset": "synthetic-crossworld",
                             "subset_hash": f"seed{c.seed}", "index": i} for i in range(c.n_sources)]}

    def state_dict(self) -> dict[str, Any]:
        return {"next_batch": self.next_batch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise DataError(f"source state is for seed {state.get('seed')}, this source has seed {self.seed}", "resume with the same source")
        self.next_batch = int(state["next_batch"])


def _embeddings(cfg: CrossWorldConfig, d0: int, g: torch.Generator) -> list[Tensor]:
    if not cfg.rotate:
        return [torch.eye(d0) for _ in cfg.widths]
    out = []
    for w in cfg.widths:
        Q, _ = torch.linalg.qr(torch.randn(w, d0, generator=g))  # (w, d0), orthonormal columns
        out.append(Q.T.contiguous())  # (d0, w): orthonormal rows, inner products preserved
    return out


def make_cross_world(cfg: CrossWorldConfig) -> CrossWorld:
    """Draw directions, amplitudes and firing probabilities from ``cfg.seed``."""
    N, n, d0 = cfg.n_sources, cfg.n_features, min(cfg.widths)
    g = syn.generator(cfg.seed)
    base = syn.planted_dictionary(n, d0, seed=cfg.seed * 2 + 1)  # (n, d0)
    amp = torch.zeros(N, n)
    dirs = base.unsqueeze(0).repeat(N, 1, 1)  # (N, n, d0)
    kinds: list[str] = []
    home: list[int] = []
    birth: list[int] = []
    i = 0
    for _ in range(cfg.n_shared):
        amp[:, i] = 1.0
        kinds.append("shared"), home.append(-1), birth.append(0)
        i += 1
    for s in range(N):
        for _ in range(cfg.n_exclusive):
            amp[s, i] = 1.0
            kinds.append("exclusive"), home.append(s), birth.append(s)
            i += 1
    for _ in range(cfg.n_rotated):
        u = base[i]
        v = torch.randn(d0, generator=g)
        v = v - (v @ u) * u
        v = v / v.norm()
        for s in range(N):
            theta = math.radians(cfg.rotation_deg) * s / (N - 1)
            dirs[s, i] = math.cos(theta) * u + math.sin(theta) * v
        amp[:, i] = 1.0
        kinds.append("rotated"), home.append(-1), birth.append(0)
        i += 1
    for w in range(cfg.n_weakened):
        strong = w % N
        amp[:, i] = cfg.weak_ratio
        amp[strong, i] = 1.0
        kinds.append("weakened"), home.append(strong), birth.append(0)
        i += 1
    for t in cfg.births:
        amp[t:, i] = 1.0
        kinds.append("born"), home.append(-1), birth.append(t)
        i += 1
    E = _embeddings(cfg, d0, g)
    directions = tuple(dirs[s] @ E[s] for s in range(N))
    probs = syn.feature_probabilities(n, cfg.mean_active, cfg.decay)[torch.randperm(n, generator=g)]
    return CrossWorld(cfg, directions, amp, probs, tuple(kinds), tuple(home), tuple(birth))
