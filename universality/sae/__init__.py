"""Sparse autoencoder architectures behind one registry, plus artifact formats.

``SAE.load(path)`` dispatches on ``cfg.json["architecture"]``; :func:`make_sae` builds a fresh
one from an architecture's config (:func:`sae_config` builds the right class by name;
:mod:`universality.sae.config` lists each architecture's fields). Architectures: ``relu`` (L1, optionally tied), ``topk``,
``batchtopk``, ``jumprelu``, ``gated``. :class:`StackedSAE` holds many same-shape TopK/BatchTopK
dictionaries as one batched module (the trainer's ``RunConfig(stack=True)`` fast path).
"""

from __future__ import annotations

from universality.sae.base import FORMAT, SAE, SAEOutput
from universality.sae.config import (
    BatchTopKConfig,
    GatedConfig,
    JumpReLUConfig,
    ReLUConfig,
    SAEConfig,
    TopKConfig,
    config_class,
    sae_config,
)
from universality.sae.init import geometric_median
from universality.sae.registry import architectures, get_architecture, register
from universality.sae.stacked import StackedSAE

__all__ = [
    "FORMAT",
    "SAE",
    "SAEConfig",
    "TopKConfig",
    "BatchTopKConfig",
    "ReLUConfig",
    "JumpReLUConfig",
    "GatedConfig",
    "config_class",
    "sae_config",
    "SAEOutput",
    "StackedSAE",
    "architectures",
    "geometric_median",
    "get_architecture",
    "make_sae",
    "register",
]


def make_sae(cfg: SAEConfig, *, seed: int = 0, meta: dict | None = None, device=None) -> SAE:
    """A freshly initialised SAE of ``cfg.architecture`` (weights drawn from ``seed``)."""
    return get_architecture(cfg.architecture)(cfg, meta=meta, seed=seed, device=device)
