"""Paired synthetic worlds that contain a circular feature family (a planted multi-dimensional feature).

Engels et al. 2024 ("Not all language model features are linear") find days of the week and months
of the year represented on a circle in a 2-D plane of the residual stream. This module plants such a
family: ``n_days`` latent "days" share one 2-D plane; day ``k`` points at angle ``2 pi k / n_days`` (plus
a small angular jitter), its length is ``1 + radial_std * N(0, 1)`` (a small radial component), and at
most one day is active per token (with probability ``p_day``). Next to the circle each world has
ordinary independent sparse features (drawn as in :mod:`universality.synthetic`) and a *pair*: two
1-D features that often co-occur (``p_pair`` both, ``p_pair_alone`` each alone, independent
magnitudes) - a reducible group, the negative control for irreducibility tests.

Two worlds ``A`` and ``B`` see the same circle and pair events on every token (the same day, angle and
radius) but draw their independent features privately (other directions, other events). ``B`` is
either the same basis with the days turned by ``phase_b`` inside the plane (``rotate=False``), or A's
circle and pair embedded into ``R^d_b`` by a random matrix with orthonormal rows (``rotate=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality import synthetic as syn
from universality.errors import ConfigError
from universality.match.worlds import PairedSource

__all__ = ["CircleWorldConfig", "CircleWorld", "CircleSample", "make_circle_world"]


@dataclass(frozen=True)
class CircleWorldConfig:
    """Sizes and firing rates of two worlds that both contain one circular family (and one pair)."""

    d_a: int = 24
    d_b: int = 24
    n_features: int = 24
    n_days: int = 7
    p_day: float = 0.3
    radial_std: float = 0.1
    angle_jitter: float = 0.05
    phase_b: float = 0.3
    p_pair: float = 0.1
    p_pair_alone: float = 0.1
    mean_active: float = 2.0
    decay: float = 1.0
    rotate: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.d_a, self.d_b) < 4 or self.n_features < 1:
            raise ConfigError("CircleWorldConfig needs d_a, d_b >= 4 and n_features >= 1",
                              "use e.g. d_a=24, d_b=24, n_features=24")
        if self.n_days < 3:
            raise ConfigError(f"a circle needs n_days >= 3, got {self.n_days}", "use e.g. n_days=7")
        for name in ("p_day", "p_pair", "p_pair_alone"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}", "use e.g. 0.1")
        if self.p_pair + 2 * self.p_pair_alone > 1.0:
            raise ConfigError("p_pair + 2 * p_pair_alone must be <= 1", "lower p_pair or p_pair_alone")
        if self.radial_std < 0 or self.angle_jitter < 0:
            raise ConfigError("radial_std and angle_jitter must be >= 0", "use e.g. 0.1 and 0.05")
        if self.rotate and self.d_b < self.d_a:
            raise ConfigError(f"rotate=True embeds R^{self.d_a} into R^{self.d_b}, which needs d_b >= d_a",
                              "make d_b >= d_a")
        if not self.rotate and self.d_b != self.d_a:
            raise ConfigError("rotate=False keeps one basis, so d_a must equal d_b", "set d_b = d_a or rotate=True")
        syn.feature_probabilities(self.n_features, self.mean_active, self.decay)  # validates


@dataclass(frozen=True)
class CircleSample:
    """Both worlds' activations on the same ``T`` tokens, and the planted events.

    ``day`` is the active day per token (``-1``: none); ``pair`` ``(T, 2)`` the pair's magnitudes.
    """

    x_a: Float[Tensor, "T d_a"]
    x_b: Float[Tensor, "T d_b"]
    day: Int[Tensor, " T"]
    pair: Float[Tensor, "T 2"]
    token_ids: Int[Tensor, " T"]


@dataclass(frozen=True)
class CircleWorld:
    """Ground truth of two worlds: circle planes, independent features and the pair, per world.

    ``plane_*`` ``(2, d)`` has orthonormal rows; day ``k`` of world A is
    ``cos(2 pi k / K) plane_a[0] + sin(2 pi k / K) plane_a[1]`` and of B the same with ``+ phase_b``.
    """

    cfg: CircleWorldConfig
    plane_a: Float[Tensor, "2 d_a"]
    plane_b: Float[Tensor, "2 d_b"]
    D_a: Float[Tensor, "n d_a"]
    D_b: Float[Tensor, "n d_b"]
    pair_a: Float[Tensor, "2 d_a"]
    pair_b: Float[Tensor, "2 d_b"]
    probs_a: Float[Tensor, " n"]
    probs_b: Float[Tensor, " n"]

    def days(self, side: str = "a") -> Float[Tensor, "K d"]:
        """The unit directions of the ``K`` days in world ``side`` (``"a"`` or ``"b"``)."""
        if side not in ("a", "b"):
            raise ConfigError(f"side must be 'a' or 'b', got {side!r}", "pick one")
        K = self.cfg.n_days
        ang = 2 * math.pi * torch.arange(K, dtype=torch.float32) / K + (self.cfg.phase_b if side == "b" else 0.0)
        plane = self.plane_a if side == "a" else self.plane_b
        return torch.stack([ang.cos(), ang.sin()], 1) @ plane

    def directions(self, side: str = "a") -> tuple[Float[Tensor, "m d"], list[str]]:
        """Every planted direction of world ``side`` with its kind (``"day"``, ``"pair"``, ``"feature"``)."""
        days = self.days(side)
        D, pair = (self.D_a, self.pair_a) if side == "a" else (self.D_b, self.pair_b)
        kinds = ["day"] * len(days) + ["pair"] * 2 + ["feature"] * len(D)
        return torch.cat([days, pair, D]), kinds

    def sample(self, n_tokens: int, seed: int = 0) -> CircleSample:
        """``n_tokens`` tokens of both worlds: shared circle and pair events, private independent features."""
        if n_tokens < 1:
            raise ConfigError(f"n_tokens must be >= 1, got {n_tokens}", "ask for at least one token")
        c = self.cfg
        g = syn.generator(c.seed * 6_007 + seed * 104_729 + 29)
        has_day = torch.rand(n_tokens, generator=g) < c.p_day
        day = torch.where(has_day, torch.randint(c.n_days, (n_tokens,), generator=g), torch.full((n_tokens,), -1))
        angle = 2 * math.pi * day.clamp_min(0).float() / c.n_days + c.angle_jitter * torch.randn(n_tokens, generator=g)
        radius = has_day * (1.0 + c.radial_std * torch.randn(n_tokens, generator=g))
        u = torch.rand(n_tokens, generator=g)
        on = torch.stack([u < c.p_pair + c.p_pair_alone,
                          (u < c.p_pair) | ((u >= c.p_pair + c.p_pair_alone) & (u < c.p_pair + 2 * c.p_pair_alone))], 1)
        pair = on * torch.rand(n_tokens, 2, generator=g)
        xs = []
        for plane, phase, D, P, probs in ((self.plane_a, 0.0, self.D_a, self.pair_a, self.probs_a),
                                          (self.plane_b, c.phase_b, self.D_b, self.pair_b, self.probs_b)):
            circ = radius[:, None] * torch.stack([(angle + phase).cos(), (angle + phase).sin()], 1)
            xs.append(circ @ plane + pair @ P + syn.sample_codes(n_tokens, probs, g) @ D)
        return CircleSample(xs[0], xs[1], day, pair, torch.arange(n_tokens) + seed * 1_000_000_007)

    def source(self, batch_size: int, seed: int = 0, n_batches: int | None = None) -> PairedSource:
        """An activation source of ``{"a": x_a, "b": x_b}`` batches (for ``universality.train_saes``)."""
        return PairedSource(self, batch_size, seed, n_batches)  # type: ignore[arg-type]


def make_circle_world(cfg: CircleWorldConfig) -> CircleWorld:
    """Draw both worlds' planes, pairs and independent features from ``cfg.seed``."""
    g = syn.generator(cfg.seed * 31 + 5)
    Q, _ = torch.linalg.qr(torch.randn(cfg.d_a, 4, generator=g))
    plane_a, pair_a = Q.T[:2].contiguous(), Q.T[2:].contiguous()  # orthonormal: circle plane and pair axes
    if cfg.rotate:
        E, _ = torch.linalg.qr(torch.randn(cfg.d_b, cfg.d_a, generator=g))
        E = E.T.contiguous()  # (d_a, d_b), orthonormal rows
    else:
        E = torch.eye(cfg.d_a)
    probs = syn.feature_probabilities(cfg.n_features, cfg.mean_active, cfg.decay)
    D_a = syn.planted_dictionary(cfg.n_features, cfg.d_a, seed=cfg.seed * 2 + 101)
    D_b = syn.planted_dictionary(cfg.n_features, cfg.d_b, seed=cfg.seed * 2 + 102)
    probs_a = probs[torch.randperm(cfg.n_features, generator=g)]
    probs_b = probs[torch.randperm(cfg.n_features, generator=g)]
    return CircleWorld(cfg, plane_a, plane_a @ E, D_a, D_b, pair_a, pair_a @ E, probs_a, probs_b)
