"""Config checks shared by several architectures."""

from __future__ import annotations

from universality.errors import ConfigError
from universality.sae.config import SAEConfig

__all__ = ["no_k_no_tie"]


def no_k_no_tie(cfg: SAEConfig, name: str) -> None:
    """Penalty-based architectures other than relu take neither ``k`` nor tied weights."""
    if cfg.k is not None:
        raise ConfigError(f"k is only used by topk/batchtopk, got k={cfg.k} for {name}", "drop k")
    if cfg.tied:
        raise ConfigError(f"tied weights are only supported by relu, not {name}", "set tied=False")
