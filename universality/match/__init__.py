"""Matching dictionaries to each other: views, similarities, assignments, OT, summaries, baselines.

Public entry points: :func:`match` (one method, one view -> :class:`MatchResult`), :func:`compare`
(every summary metric with floor, skyline and normalised value -> ``pandas.DataFrame``) and
:func:`lineage` (events and chains across an ordered series) and :func:`width_lineage` (feature splitting
across dictionary widths). Submodules hold the parts:
``views``, ``similarity``, ``assignment``, ``transport``, ``summary``, ``baselines``, ``lineage``, ``splitting``,
``worlds`` (paired synthetic worlds), ``manifolds`` (feature groups, irreducibility, group matching) and
``circle_world`` (paired worlds with a planted circular family).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from universality.match.api import METHODS, match
from universality.match.compare import compare
from universality.match.lineage import Lineage, lineage
from universality.match.result import MatchResult
from universality.match.splitting import WidthLineage, width_lineage, width_recovery
from universality.match.views import VIEWS, FeatureCodes, codes_from_dense, encode_codes, token_fingerprint

__all__ = [
    "METHODS",
    "VIEWS",
    "FeatureCodes",
    "Lineage",
    "MatchResult",
    "codes_from_dense",
    "compare",
    "encode_codes",
    "lineage",
    "match",
    "token_fingerprint",
    "WidthLineage",
    "width_lineage",
    "width_recovery",
]


class _CallableModule(types.ModuleType):
    """``universality.match`` is both this package and the :func:`match` function: once the package is
    imported, Python binds the package to the ``match`` attribute of ``universality``, so the package
    itself forwards calls to :func:`match` (``universality.match(a, b)`` works either way)."""

    def __call__(self, *args: Any, **kwargs: Any) -> MatchResult:
        return match(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
