"""Type-and-range checks for config fields, each raising a one-line :class:`ConfigError`.

Configs call these in ``__post_init__`` so that a wrong type (a string where a number belongs, a
float where an integer belongs, ``"yes"`` for a flag) is reported like a wrong value, never as a
``TypeError`` from a comparison further down.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from universality.errors import ConfigError

__all__ = ["check_int", "check_number", "check_bool", "check_choice", "check_text", "known_fields", "leaves_folder"]


def check_int(owner: str, name: str, value: Any, low: int = 1, *, none_ok: bool = False) -> None:
    """``value`` is an ``int`` (not a bool) ``>= low`` (or ``None`` when ``none_ok``)."""
    if value is None and none_ok:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{owner}.{name} must be an integer >= {low}, got {value!r}", f"set {name} to an integer >= {low}")


def check_number(owner: str, name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False) -> None:
    """``value`` is a finite real number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        lo = "(" if low_open else "["
        raise ConfigError(f"{owner}.{name} must be a finite number in {lo}{low}, {high}], got {value!r}", f"fix {name}")


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}.{name} must be true or false, got {value!r}", f"set {name} to true or false")


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{owner}.{name} {value!r} is not one of {', '.join(choices)}", f"use one of {', '.join(choices)}")


def check_text(owner: str, name: str, value: Any, *, none_ok: bool = False) -> None:
    """A non-empty string (or ``None`` when ``none_ok``)."""
    if value is None and none_ok:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{owner}.{name} must be a non-empty string, got {value!r}", f"set {name} to a non-empty string")


def known_fields(cls: type, data: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``data`` as a dict, or a :class:`ConfigError` naming the keys that are not fields of dataclass ``cls``."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {what} fields {unknown}", f"use only {sorted(names)}")
    return data


def leaves_folder(relative: str) -> bool:
    """Whether the ``/``-separated ``relative`` path, joined to a folder, could leave it: an absolute
    path, a backslash or NUL, or an empty, ``.`` or ``..`` component."""
    return ("\\" in relative or "\x00" in relative or relative.startswith("/")
            or any(p in ("", ".", "..") for p in relative.split("/")))
