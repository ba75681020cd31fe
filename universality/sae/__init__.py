"""Sparse autoencoder architectures behind one registry, plus artifact formats.

``SAE.load(path)`` dispatches on ``cfg.json["architecture"]``; :func:`make_sae` builds a fresh
one from an architecture's config (:func:`sae_config` builds the right class by name;
:mod:`universality.sae.config` lists each architecture's fields). Architectures: ``relu`` (L1,
optionally tied), ``topk``, ``batchtopk``, ``jumprelu``, ``gated``, ``crosscoder`` (one dictionary over
several sources, :mod:`universality.sae.crosscoder`; analysis in :mod:`universality.crosscoder`). :class:`StackedSAE` holds many
same-shape TopK/BatchTopK dictionaries as one batched module (the trainer's
``RunConfig(stack=True)`` fast path).

The names below are loaded on first use, so ``universality.sae.config`` (the config classes the
study configuration reads) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FORMAT",
    "SAE",
    "SAEConfig",
    "TopKConfig",
    "BatchTopKConfig",
    "ReLUConfig",
    "JumpReLUConfig",
    "GatedConfig",
    "CrosscoderConfig",
    "crosscoder_config",
    "config_class",
    "sae_config",
    "SAEOutput",
    "StackedSAE",
    "architectures",
    "geometric_median",
    "get_architecture",
    "make_sae",
    "register",
    "load_pretrained",
]

_LAZY = {
    "FORMAT": "universality.sae.base",
    "SAE": "universality.sae.base",
    "SAEOutput": "universality.sae.base",
    "StackedSAE": "universality.sae.stacked",
    "geometric_median": "universality.sae.init",
    "architectures": "universality.sae.registry",
    "get_architecture": "universality.sae.registry",
    "make_sae": "universality.sae.registry",
    "register": "universality.sae.registry",
    "load_pretrained": "universality.sae.formats",
    "CrosscoderConfig": "universality.sae.crosscoder_config",
    "crosscoder_config": "universality.sae.crosscoder_config",
    **{name: "universality.sae.config" for name in ("SAEConfig", "TopKConfig", "BatchTopKConfig", "ReLUConfig",
                                                    "JumpReLUConfig", "GatedConfig", "config_class", "sae_config")},
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'universality.sae' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
