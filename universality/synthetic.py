"""Planted-feature toy data with known answers (Sharkey, Braun & Millidge 2022, "Taking features out
of superposition with sparse autoencoders"; the "toy setting" of that report: 256 dimensions, 512
ground-truth features, about 5 active per sample, decaying feature frequencies).

A *world* is a planted dictionary ``D`` (``(n_features, d_in)``, unit rows) and firing
probabilities ``p`` (``(n_features,)``). A sample draws each feature independently with
probability ``p_i``, gives the active ones a magnitude uniform in ``[0, 1)``, and adds
``x = c D + noise``. Everything is a pure function of an explicit :class:`torch.Generator` or seed:

- :func:`planted_dictionary`: random unit directions (Gaussian, normalised);
- :func:`feature_probabilities`: exponentially decaying frequencies with a given mean count;
- :func:`sample_codes`: sparse non-negative codes;
- :func:`embed`: codes -> activations through one dictionary (plus Gaussian noise);
- :class:`PlantedSource`: an activation source (iterable with ``state_dict``) whose batch ``i``
  depends only on ``(seed, i)``, so a resumed run sees exactly the rows it would have seen.
  Given several dictionaries (a mapping site -> ``D``) it decodes the *same* codes through each,
  which gives paired worlds that share ground truth.
- :func:`mean_max_cosine`: recovery of the planted directions by a learned dictionary.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from universality.errors import ConfigError, DataError

__all__ = [
    "ToyConfig",
    "planted_dictionary",
    "feature_probabilities",
    "sample_codes",
    "embed",
    "PlantedSource",
    "mean_max_cosine",
    "make_toy",
    "generator",
]


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (any integer, folded into the accepted range)."""
    return torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)


def planted_dictionary(n_features: int, d_in: int, seed: int = 0) -> Float[Tensor, "n_features d_in"]:
    """``n_features`` random unit directions in ``R^d_in`` (normalised Gaussian rows)."""
    if n_features < 1 or d_in < 1:
        raise ConfigError(f"planted_dictionary needs positive sizes, got ({n_features}, {d_in})", "use e.g. (512, 256)")
    D = torch.randn(n_features, d_in, generator=generator(seed))
    return D / D.norm(dim=1, keepdim=True)


def feature_probabilities(n_features: int, mean_active: float = 5.0, decay: float = 2.0) -> Float[Tensor, " n_features"]:
    """Firing probabilities ``p_i ∝ exp(-decay * i / (n_features - 1))`` scaled so ``sum p = mean_active``.

    ``decay`` is the natural log of the ratio between the most and the least frequent feature.
    Probabilities are capped at 1 (then the sum is below ``mean_active``).
    """
    if not 0 < mean_active <= n_features:
        raise ConfigError(f"mean_active must be in (0, n_features], got {mean_active}", "use e.g. 5")
    if decay < 0:
        raise ConfigError(f"decay must be >= 0, got {decay}", "use 0 for equal frequencies")
    i = torch.arange(n_features, dtype=torch.float64)
    w = torch.exp(-decay * i / max(n_features - 1, 1))
    return (w * (mean_active / w.sum())).clamp(max=1.0).to(torch.float32)


def sample_codes(n: int, probs: Float[Tensor, " n_features"], generator: torch.Generator) -> Float[Tensor, "n n_features"]:
    """Sparse codes: feature ``i`` is on with probability ``probs[i]``, magnitude uniform in ``[0, 1)``."""
    on = torch.rand(n, probs.shape[0], generator=generator) < probs
    mag = torch.rand(n, probs.shape[0], generator=generator)
    return on * mag


def embed(
    codes: Float[Tensor, "n n_features"],
    dictionary: Float[Tensor, "n_features d_in"],
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "n d_in"]:
    """``codes @ dictionary`` plus isotropic Gaussian noise of standard deviation ``noise_std``."""
    x = codes @ dictionary
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=generator)
    return x


@dataclass(frozen=True)
class ToyConfig:
    """One planted world: sizes, sparsity, frequency decay, noise and seeds."""

    d_in: int = 256
    n_features: int = 512
    mean_active: float = 5.0
    decay: float = 2.0
    noise_std: float = 0.0
    dictionary_seed: int = 0

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.n_features < 1:
            raise ConfigError("ToyConfig sizes must be positive", "use e.g. d_in=256, n_features=512")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}", "use 0 for noiseless data")
        feature_probabilities(self.n_features, self.mean_active, self.decay)  # validates


class PlantedSource:
    """An activation source over planted worlds: yields ``(batch, d_in)`` tensors, or
    ``{site: (batch, d_in)}`` when given a mapping of dictionaries (one code sample shared by all).

    Batch ``i`` is drawn from a generator seeded by ``(seed, i)`` alone; :meth:`state_dict` holds
    the index of the next batch, so ``load_state_dict`` resumes at exactly the next row.
    ``n_batches=None`` iterates forever.
    """

    def __init__(
        self,
        dictionaries: Tensor | Mapping[str, Tensor],
        probs: Float[Tensor, " n_features"],
        batch_size: int,
        seed: int = 0,
        noise_std: float = 0.0,
        n_batches: int | None = None,
    ) -> None:
        self._single = isinstance(dictionaries, Tensor)
        self.dictionaries = {"default": dictionaries} if self._single else dict(dictionaries)
        n_feat = {D.shape[0] for D in self.dictionaries.values()}
        if len(n_feat) != 1 or probs.shape != (n_feat.pop(),):
            raise DataError("every dictionary needs as many rows as probs has entries", "build them with the same n_features")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}", "use e.g. 1024")
        self.probs = probs
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.noise_std = float(noise_std)
        self.n_batches = n_batches
        self.next_batch = 0

    def batch(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The codes and activations of batch ``index`` (a pure function of ``(seed, index)``)."""
        gen = generator(self.seed * 1_000_003 + index * 7_919 + 1)
        codes = sample_codes(self.batch_size, self.probs, gen)
        acts = {site: embed(codes, D, self.noise_std, gen) for site, D in self.dictionaries.items()}
        return codes, acts

    def __iter__(self) -> Iterator[Tensor | dict[str, Tensor]]:
        while self.n_batches is None or self.next_batch < self.n_batches:
            _, acts = self.batch(self.next_batch)
            self.next_batch += 1
            yield acts["default"] if self._single else acts

    def state_dict(self) -> dict[str, Any]:
        return {"next_batch": self.next_batch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise DataError(f"source state is for seed {state.get('seed')}, this source has seed {self.seed}", "resume with the same source")
        self.next_batch = int(state["next_batch"])


def make_toy(cfg: ToyConfig, batch_size: int, seed: int = 0, n_batches: int | None = None) -> tuple[Tensor, PlantedSource]:
    """The planted dictionary of ``cfg`` and a :class:`PlantedSource` over it."""
    D = planted_dictionary(cfg.n_features, cfg.d_in, cfg.dictionary_seed)
    probs = feature_probabilities(cfg.n_features, cfg.mean_active, cfg.decay)
    return D, PlantedSource(D, probs, batch_size, seed=seed, noise_std=cfg.noise_std, n_batches=n_batches)


def mean_max_cosine(
    learned: Float[Tensor, "n_learned d_in"], truth: Float[Tensor, "n_true d_in"], over: str = "truth"
) -> float:
    """Mean max cosine similarity (MMCS, Sharkey et al. 2022).

    .. math::
        \\mathrm{MMCS} = \\frac{1}{|T|} \\sum_{t \\in T} \\max_{l \\in L} \\cos(t, l)

    ``over="truth"`` averages over the planted features (how well each is recovered);
    ``over="learned"`` averages over the learned rows, as in Sharkey et al.'s definition.
    """
    L = learned.detach().to(torch.float32)
    T = truth.detach().to(torch.float32)
    cos = (T / T.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (L / L.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
    if over == "truth":
        return float(cos.max(dim=1).values.mean())
    if over == "learned":
        return float(cos.max(dim=0).values.mean())
    raise ConfigError(f"over must be 'truth' or 'learned', got {over!r}", "pick one")
