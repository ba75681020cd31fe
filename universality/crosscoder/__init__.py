"""Crosscoders: joint dictionaries over several sources (layers, checkpoints, models).

The model is the ``crosscoder`` architecture of the SAE registry (:mod:`universality.sae.crosscoder`,
config :class:`~universality.sae.crosscoder_config.CrosscoderConfig`), trained by the common trainer on a
site that holds the concatenated sources (:class:`JointSource`). This package holds what is specific to
crosscoders beyond the model: the joint source, the per-latent analysis (:mod:`.analysis`), N-source
planted worlds (:mod:`.worlds`) and their known-answer scoring (:mod:`.known_answer`).
Names are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "JointSource": "universality.crosscoder.source",
    "CrossWorldConfig": "universality.crosscoder.worlds",
    "CrossWorld": "universality.crosscoder.worlds",
    "make_cross_world": "universality.crosscoder.worlds",
    "known_answer_report": "universality.crosscoder.known_answer",
    **{name: "universality.crosscoder.analysis" for name in (
        "relative_decoder_norms", "delta_norm", "classify_latents", "class_fractions", "latent_scaling",
        "decoder_norm_trajectories", "birth_indices", "shared_cosines", "null_agreement", "live_latents")},
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'universality.crosscoder' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
