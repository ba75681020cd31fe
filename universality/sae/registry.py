"""Architecture registry: ``@register("topk")`` on an :class:`~universality.sae.base.SAE` subclass.

Loading dispatches on the ``architecture`` key of ``cfg.json`` through :func:`get_architecture`,
never through a chain of class-name checks. Built-in architectures live in their own modules and
are imported on first lookup, so importing this module registers nothing by itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from universality.errors import ConfigError

if TYPE_CHECKING:
    from universality.sae.base import SAE
    from universality.sae.config import SAEConfig

__all__ = ["register", "get_architecture", "architectures", "make_sae"]

_BUILTIN: dict[str, str] = {
    "relu": "universality.sae.relu",
    "topk": "universality.sae.topk",
    "batchtopk": "universality.sae.batchtopk",
    "jumprelu": "universality.sae.jumprelu",
    "gated": "universality.sae.gated",
    "crosscoder": "universality.sae.crosscoder",
}
_REGISTRY: dict[str, type[SAE]] = {}

T = TypeVar("T")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` the implementation of architecture ``name``.

    ``cls.config_class`` must be a config dataclass (:mod:`universality.sae.config`) whose
    ``architecture`` is ``name``: each architecture is registered with its own config class.
    """

    def wrap(cls: T) -> T:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ConfigError(f"architecture {name!r} is already registered to {existing.__qualname__}", "pick another name")
        config_name = getattr(getattr(cls, "config_class", None), "architecture", None)
        if config_name != name:
            raise ConfigError(f"the SAE class {cls.__qualname__} registered as {name!r} has a config class for {config_name!r}",
                              f"give it config_class = a config dataclass with architecture = {name!r}")
        cls.architecture = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return wrap


def get_architecture(name: str) -> type[SAE]:
    """The SAE class registered as ``name`` (built-ins are imported on first use)."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown SAE architecture {name!r}", f"use one of {', '.join(architectures())}")
    return cls


def architectures() -> tuple[str, ...]:
    """Names of every known architecture (built-in and registered)."""
    return tuple(sorted(set(_BUILTIN) | set(_REGISTRY)))


def make_sae(cfg: SAEConfig, *, seed: int = 0, meta: dict | None = None, device=None) -> SAE:
    """A freshly initialised SAE of ``cfg.architecture`` (weights drawn from ``seed``)."""
    return get_architecture(cfg.architecture)(cfg, meta=meta, seed=seed, device=device)
