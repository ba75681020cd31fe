"""Model adapters: one interface to read activations from GPT-2, Pythia, Mamba and MoE models.

``models.load(name_or_path, revision=None, backend="hf", device=None, dtype=None,
trust_remote_code=False)`` returns a :class:`ModelAdapter` with ``sites``, ``capture``, ``forward``
(with site replacement) and ``at_revision``. Importing this package loads no model.
"""

from __future__ import annotations

from models.base import FamilySpec, HFAdapter, ModelAdapter, SiteSpec
from models.loading import load
from models.pythia import PYTHIA_REVISIONS
from models.registry import FAMILIES

__all__ = ["load", "ModelAdapter", "HFAdapter", "FamilySpec", "SiteSpec", "FAMILIES", "PYTHIA_REVISIONS"]
