"""GPT-2 (``GPT2LMHeadModel``): sequential pre-LN blocks ``transformer.h.{l}``.

``resid_pre`` is the block input, ``attn_out`` the attention output after ``c_proj`` (and dropout,
the identity in eval mode), ``resid_mid`` the input of ``ln_2`` (= resid_pre + attn_out),
``mlp_out`` the MLP output and ``resid_post`` the block output.
"""

from __future__ import annotations

from models.base import FamilySpec, SiteSpec

__all__ = ["GPT2"]

_BLOCK = "transformer.h.{layer}"

GPT2 = FamilySpec(
    family="gpt2",
    layers="transformer.h",
    sites={
        "hook_resid_pre": SiteSpec(_BLOCK, "input", replace="input"),
        "hook_attn_out": SiteSpec(_BLOCK + ".attn", "output", index=0),
        "hook_resid_mid": SiteSpec(
            _BLOCK + ".ln_2", "input", replace="attn_delta", attn_module=_BLOCK + ".attn", block_module=_BLOCK
        ),
        "hook_mlp_out": SiteSpec(_BLOCK + ".mlp", "output"),
        "hook_resid_post": SiteSpec(_BLOCK, "output"),
    },
)
