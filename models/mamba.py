"""Mamba and Mamba-2 (``MambaForCausalLM`` / ``Mamba2ForCausalLM``): blocks ``backbone.layers.{l}``.

A block computes ``resid_post = resid_pre + mixer(norm(resid_pre))`` (the residual is kept in fp32
when ``residual_in_fp32``), so the sites are ``resid_pre`` (block input), ``mixer_out`` (mixer
output) and ``resid_post`` (block output). On a GPU with mamba-ssm installed transformers uses its
kernels; on the CPU the slow reference path runs.
"""

from __future__ import annotations

from models.base import FamilySpec, SiteSpec

__all__ = ["MAMBA", "MAMBA2"]

_BLOCK = "backbone.layers.{layer}"


def _mamba_sites() -> dict[str, SiteSpec]:
    return {
        "hook_resid_pre": SiteSpec(_BLOCK, "input", replace="input"),
        "hook_mixer_out": SiteSpec(_BLOCK + ".mixer", "output"),
        "hook_resid_post": SiteSpec(_BLOCK, "output"),
    }


MAMBA = FamilySpec(family="mamba", layers="backbone.layers", sites=_mamba_sites(), position_ids=False)
MAMBA2 = FamilySpec(family="mamba2", layers="backbone.layers", sites=_mamba_sites(), position_ids=False)
