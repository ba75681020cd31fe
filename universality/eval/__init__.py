"""Evaluation of SAEs: reconstruction/sparsity metrics (:mod:`.metrics`), downstream splicing
(:mod:`.downstream`: CE loss recovered, KL), post-processing (:mod:`.postprocess`: pruning,
decoder fine-tuning against feature suppression) and sparse code maps between dictionaries
(:mod:`.codemap`)."""

from __future__ import annotations

from universality.eval.metrics import (
    ReconstructionStats,
    cosine,
    dead_fraction,
    dense_fraction,
    density_histogram,
    evaluate,
    explained_variance,
    firing_density,
    fvu,
    l0,
    l1,
    l2_ratio,
    mse,
)

__all__ = [
    "ReconstructionStats",
    "cosine",
    "dead_fraction",
    "dense_fraction",
    "density_histogram",
    "evaluate",
    "explained_variance",
    "firing_density",
    "fvu",
    "l0",
    "l1",
    "l2_ratio",
    "mse",
]
