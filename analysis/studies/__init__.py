"""The study analyses, registered in one place.

Each analysis is a module here with ``run(ctx, figures_dir) -> AnalysisResult`` (see
:mod:`analysis.studies.common`): it asks the study context (:mod:`universality.study.pipeline`)
for the stages it needs (models, harvests, dictionaries, evaluation activations), matches
dictionaries against their floors and seed skylines, and returns tidy rows, tables, figures and
findings that :mod:`universality.study.runner` writes into the report.

:data:`ANALYSES` maps the name used in ``study.analyses`` to its module; the study config reads
its valid names from here and the runner imports the module on first use, so this package's
``__init__`` imports nothing heavy.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["ANALYSES", "analysis_module"]

ANALYSES: dict[str, str] = {
    "feature_evolution": "analysis.studies.feature_evolution",
    "architecture_comparison": "analysis.studies.architecture_comparison",
    "crosscoder_arm": "analysis.studies.crosscoder_arm",
    "crosscoder_evolution": "analysis.studies.crosscoder_evolution",
    "crosscoder_subset": "analysis.studies.crosscoder_subset",
    "subset_generalization": "analysis.studies.subset_generalization",
    "layer_flow": "analysis.studies.layer_flow",
    "crosscoder_layers": "analysis.studies.crosscoder_layers",
    "causal_links": "analysis.studies.causal_links",
    "feature_manifolds": "analysis.studies.feature_manifolds",
    "moe_experts": "analysis.studies.moe_experts",
    "feature_splitting": "analysis.studies.feature_splitting",
    "model_vs_dataset": "analysis.studies.model_vs_dataset",
    "ioi_patching": "analysis.studies.ioi_patching",
}


def analysis_module(name: str) -> ModuleType:
    """The module of analysis ``name`` (one of :data:`ANALYSES`)."""
    return importlib.import_module(ANALYSES[name])
