"""Dictionary universality study platform.

Public API (imported lazily, so ``import universality`` stays cheap):

- :class:`universality.SAE` - load/save/encode/decode sparse autoencoders.
- :func:`universality.train_saes` - train many dictionaries from one activation stream.
- :func:`universality.match` - align two dictionaries, returns a :class:`MatchResult`.
- :func:`universality.compare` - every summary metric of two dictionaries with its baselines.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "SAE": "universality.sae",
    "train_saes": "universality.train",
    "match": "universality.match",
    "compare": "universality.match",
    "MatchResult": "universality.match",
    "Site": "universality.sites",
    "site": "universality.sites",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'universality' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
