"""Errors with one-line messages that name the problem and the fix.

Every error the platform raises on bad input is a :class:`UniversalityError` (or a subclass), whose
message has the form ``"<what is wrong>; <how to fix it>"`` on a single line. The CLI turns these
into a non-zero exit with that line on stderr and no traceback.
"""

from __future__ import annotations


__all__ = [
    "UniversalityError",
    "ConfigError",
    "UnknownSiteError",
    "ModelLoadError",
    "DataError",
    "ArtifactError",
    "MatchError",
    "TrainingDiverged",
    "error_line",
]


class UniversalityError(Exception):
    """Base class. ``problem`` says what is wrong, ``fix`` what to do about it."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = " ".join(str(problem).split())
        self.fix = " ".join(str(fix).split()) if fix else None
        super().__init__(f"{self.problem}; {self.fix}" if self.fix else self.problem)


class ConfigError(UniversalityError, ValueError):
    """A configuration value or type is wrong."""


class UnknownSiteError(UniversalityError, ValueError):
    """A site name is malformed or the model does not have it."""


class ModelLoadError(UniversalityError, ValueError):
    """A model name, path, revision or backend cannot be loaded."""


class DataError(UniversalityError, ValueError):
    """Text, subset or activation data is empty, malformed or non-finite."""


class ArtifactError(UniversalityError, ValueError):
    """An artifact on disk is missing, corrupt, or does not match the request."""


class MatchError(UniversalityError, ValueError):
    """Two dictionaries (or activation sets) cannot be compared the way that was asked."""


class TrainingDiverged(UniversalityError, RuntimeError):
    """The loss or the activations became NaN/Inf during training."""


def error_line(exc: BaseException) -> str:
    """The line a command-line tool prints for ``exc``: ``"error: <problem>; <fix>"``, always one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"error: {text}"
