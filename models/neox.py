"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): blocks ``gpt_neox.layers.{l}``.

With ``use_parallel_residual=True`` (Pythia) a block computes
``resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre))``, so there is no
``resid_mid``; with ``use_parallel_residual=False`` the block is sequential and ``resid_mid`` is the
input of ``post_attention_layernorm``. ``attn_out`` is the attention module output (the dropout after
it is the identity in eval mode); ``mlp_out`` the MLP output.
"""

from __future__ import annotations

from typing import Any

from models.base import FamilySpec, SiteSpec

__all__ = ["GPT_NEOX"]

_BLOCK = "gpt_neox.layers.{layer}"


def _has_site(config: Any, hook: str) -> bool:
    if hook == "hook_resid_mid":
        return not bool(getattr(config, "use_parallel_residual", True))
    return True


GPT_NEOX = FamilySpec(
    family="gpt_neox",
    layers="gpt_neox.layers",
    sites={
        "hook_resid_pre": SiteSpec(_BLOCK, "input", replace="input"),
        "hook_attn_out": SiteSpec(_BLOCK + ".attention", "output", index=0),
        "hook_resid_mid": SiteSpec(
            _BLOCK + ".post_attention_layernorm",
            "input",
            replace="attn_delta",
            attn_module=_BLOCK + ".attention",
            block_module=_BLOCK,
        ),
        "hook_mlp_out": SiteSpec(_BLOCK + ".mlp", "output"),
        "hook_resid_post": SiteSpec(_BLOCK, "output"),
    },
    has_site=_has_site,
)
