"""Built-in matchers, one registered function and one options dataclass per method.

- :mod:`~universality.match.methods.assignment`: ``hungarian``, ``sparse``, ``mnn``, ``many_to_one``
- :mod:`~universality.match.methods.transport`: ``emd``, ``sinkhorn``, ``unbalanced``, ``partial``
- :mod:`~universality.match.methods.gromov`: ``gw``, ``fgw``

The registry (:mod:`universality.match.registry`) imports each module on the first lookup of one of its
methods. This package holds the two helpers every module needs on a view object - a ``(n, d)`` direction
tensor or :class:`~universality.match.views.FeatureCodes` - namely its number of features and a subset
of its features.
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Int
from torch import Tensor

__all__ = ["n_features", "subset"]


def n_features(x: Any) -> int:
    """Number of features of a direction tensor ``(n, d)`` or of :class:`FeatureCodes`."""
    return int(x.shape[0]) if isinstance(x, Tensor) else x.n


def subset(x: Any, idx: Int[Tensor, " r"]) -> Any:
    """Features ``idx`` of a direction tensor (rows, on its device) or of :class:`FeatureCodes`."""
    return x[idx.to(x.device)] if isinstance(x, Tensor) else x.subset(idx)
