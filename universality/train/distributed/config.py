"""How the ranks of a distributed job share the work: :class:`DistributedConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from universality.checks import known_fields
from universality.errors import ConfigError

__all__ = ["MODES", "BACKENDS", "DistributedConfig"]


MODES = ("data", "sites")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class DistributedConfig:
    """How the ranks share the work.

    ``mode``: ``"data"`` (DDP over rows) or ``"sites"`` (each rank trains its share of the sites).
    ``backend``: ``"auto"`` (``nccl`` when the run's device is CUDA, else ``gloo``), ``"gloo"``
    or ``"nccl"``. ``find_unused_parameters``: passed to DDP (only needed for an architecture
    whose forward leaves a parameter without gradient). ``bucket_cap_mb``: DDP's all-reduce
    bucket size. ``timeout_s``: collective timeout.
    """

    mode: str = "data"
    backend: str = "auto"
    find_unused_parameters: bool = False
    bucket_cap_mb: float = 25.0
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown distributed mode {self.mode!r}", f"use one of {', '.join(MODES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}", f"use one of {', '.join(BACKENDS)}")
        if not self.bucket_cap_mb > 0 or not self.timeout_s > 0:
            raise ConfigError("bucket_cap_mb and timeout_s must be > 0", "use e.g. bucket_cap_mb=25, timeout_s=1800")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistributedConfig:
        return cls(**known_fields(cls, data, "distributed"))
