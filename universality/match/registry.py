"""Matcher registry: ``@register("sparse", SparseOptions)`` on a function that computes a :class:`MatchResult`.

A *matcher* is a function ``solve(a, b, similarity, options) -> MatchResult`` over two dictionaries already
turned into one view (``(n, d)`` unit directions, or :class:`~universality.match.views.FeatureCodes` on
shared tokens) and the name of the similarity to use between them (``cosine``, ``pearson``, ``jaccard``),
together with a small frozen dataclass of the options that method takes - and only those - validated in
its ``__post_init__`` with one-line :class:`ConfigError` messages. This mirrors POT's ``ot.solve``
(one function, one result object) and the SAE architecture registry (:mod:`universality.sae.registry`):
:func:`~universality.match.api.match` looks the method up by name, never through a chain of ``if/elif``.

Built-in matchers live in :mod:`universality.match.methods` (assignment, transport, Gromov-Wasserstein)
and are imported on first lookup, so importing this module registers nothing by itself::

    from dataclasses import dataclass
    from universality.match.registry import register

    @dataclass(frozen=True)
    class DiagonalOptions:
        pass

    @register("diagonal", DiagonalOptions)
    def diagonal(a, b, similarity, options):
        ...  # -> MatchResult
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from universality.errors import ConfigError, MatchError
from universality.match.result import MatchResult

__all__ = ["Matcher", "Solve", "register", "get_matcher", "methods"]

# name -> module that registers it; the order is the order of ``methods()`` (and of ``api.METHODS``)
_BUILTIN: dict[str, str] = {
    "hungarian": "universality.match.methods.assignment",
    "sparse": "universality.match.methods.assignment",
    "mnn": "universality.match.methods.assignment",
    "many_to_one": "universality.match.methods.assignment",
    "emd": "universality.match.methods.transport",
    "sinkhorn": "universality.match.methods.transport",
    "unbalanced": "universality.match.methods.transport",
    "partial": "universality.match.methods.transport",
    "gw": "universality.match.methods.gromov",
    "fgw": "universality.match.methods.gromov",
}

Solve = Callable[[Any, Any, str, Any], MatchResult]
"""``solve(a, b, similarity, options) -> MatchResult``: ``a``/``b`` an ``(n, d)``/``(m, d)`` direction tensor
or :class:`FeatureCodes`, ``similarity`` one of ``cosine``/``pearson``/``jaccard``, ``options`` an instance
of the matcher's options dataclass."""


@dataclass(frozen=True)
class Matcher:
    """One registered method: its name, its options dataclass and the function that solves it.

    ``across_widths``: the method needs no shared space, so it also compares cosine directions of
    different widths (``gw``); every other method refuses them in :func:`~universality.match.api.match`.
    """

    name: str
    options: type
    solve: Solve
    across_widths: bool = False

    @property
    def option_names(self) -> tuple[str, ...]:
        """Names of the options this method takes, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self.options))

    def make_options(self, **given: Any) -> Any:
        """The validated options instance, or a one-line :class:`ConfigError` naming this method's options
        when ``given`` holds one it does not take."""
        unknown = [k for k in given if k not in self.option_names]
        if unknown:
            valid = ", ".join(self.option_names) or "none"
            raise ConfigError(f"method {self.name!r} takes no option {', '.join(map(repr, unknown))}",
                              f"its options are: {valid}")
        return self.options(**given)


_REGISTRY: dict[str, Matcher] = {}

F = TypeVar("F", bound=Solve)


def register(name: str, options: type, *, across_widths: bool = False) -> Callable[[F], F]:
    """Function decorator: make ``solve`` the implementation of method ``name`` with options dataclass
    ``options`` (a frozen ``dataclass`` whose fields all have defaults)."""
    if not dataclasses.is_dataclass(options) or not options.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise ConfigError(f"options of method {name!r} must be a frozen dataclass, got {options!r}",
                          "decorate the options class with @dataclass(frozen=True)")

    def wrap(solve: F) -> F:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.solve is not solve and \
                existing.solve.__qualname__ != solve.__qualname__:
            raise ConfigError(f"method {name!r} is already registered to {existing.solve.__qualname__}",
                              "pick another name")
        _REGISTRY[name] = Matcher(name, options, solve, across_widths)
        return solve

    return wrap


def get_matcher(name: str) -> Matcher:
    """The matcher registered as ``name`` (built-ins are imported on first use); unknown names give a
    one-line :class:`MatchError` listing the known ones."""
    matcher = None
    if isinstance(name, str):
        if name not in _REGISTRY and name in _BUILTIN:
            importlib.import_module(_BUILTIN[name])
        matcher = _REGISTRY.get(name)
    if matcher is None:
        raise MatchError(f"unknown method {name!r}", f"use one of {', '.join(methods())}")
    return matcher


def methods() -> tuple[str, ...]:
    """Names of every known method: the built-ins in their documented order, then any registered later."""
    return tuple(_BUILTIN) + tuple(n for n in _REGISTRY if n not in _BUILTIN)
