"""Family registry: config.json ``model_type`` -> :class:`~models.base.FamilySpec`.

Loading dispatches on this dict (never an if/elif chain over class names). To support a new
family, declare its sites in a module and add one entry here.
"""

from __future__ import annotations

from models.base import FamilySpec
from models.gpt2 import GPT2
from models.mamba import MAMBA, MAMBA2
from models.moe import MIXTRAL, OLMOE, QWEN2_MOE
from models.neox import GPT_NEOX
from universality.errors import ModelLoadError

__all__ = ["FAMILIES", "family_spec"]

FAMILIES: dict[str, FamilySpec] = {
    spec.family: spec for spec in (GPT2, GPT_NEOX, MAMBA, MAMBA2, OLMOE, MIXTRAL, QWEN2_MOE)
}


def family_spec(model_type: str) -> FamilySpec:
    spec = FAMILIES.get(model_type)
    if spec is None:
        raise ModelLoadError(
            f"model_type {model_type!r} is not supported by the hf backend",
            f"use one of {', '.join(sorted(FAMILIES))}, or backend='tlens'",
        )
    return spec
