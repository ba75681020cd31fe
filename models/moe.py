"""Mixture-of-experts decoders: OLMoE, Mixtral and Qwen2-MoE (llama-style sequential blocks).

Blocks are ``model.layers.{l}``: ``resid_pre`` (block input), ``attn_out`` (``self_attn`` output),
``resid_mid`` (input of ``post_attention_layernorm`` = resid_pre + attn_out), ``mlp_out`` (the MoE
block output, i.e. the routed weighted sum of experts, plus Qwen2-MoE's sigmoid-gated shared expert)
and ``resid_post``. Routing sites read the router module ``mlp.gate``, whose output in transformers 5
is ``(router_logits, top_k_weights, top_k_indices)`` over flattened tokens:

* ``mlp.hook_router_logits`` (width n_experts): pre-softmax router logits,
* ``mlp.hook_expert_weights`` (width k): the weights the experts' outputs are multiplied by (softmax
  probabilities of the top-k experts, renormalised to sum to 1 when ``norm_topk_prob`` is set;
  Mixtral always renormalises),
* ``mlp.hook_expert_indices`` (width k, int64): the top-k expert ids.

Qwen2-MoE layers that use a dense MLP (``mlp_only_layers``, ``decoder_sparse_step``) have no router,
so their routing sites are absent from ``adapter.sites``.
"""

from __future__ import annotations

from models.base import FamilySpec, SiteSpec

__all__ = ["OLMOE", "MIXTRAL", "QWEN2_MOE"]

_BLOCK = "model.layers.{layer}"


def _moe_sites() -> dict[str, SiteSpec]:
    return {
        "hook_resid_pre": SiteSpec(_BLOCK, "input", replace="input"),
        "hook_attn_out": SiteSpec(_BLOCK + ".self_attn", "output", index=0),
        "hook_resid_mid": SiteSpec(
            _BLOCK + ".post_attention_layernorm",
            "input",
            replace="attn_delta",
            attn_module=_BLOCK + ".self_attn",
            block_module=_BLOCK,
        ),
        "mlp.hook_router_logits": SiteSpec(
            _BLOCK + ".mlp.gate", "output", index=0, flat=True, width="n_experts", replace=None
        ),
        "mlp.hook_expert_weights": SiteSpec(
            _BLOCK + ".mlp.gate", "output", index=1, flat=True, width="top_k", replace=None
        ),
        "mlp.hook_expert_indices": SiteSpec(
            _BLOCK + ".mlp.gate", "output", index=2, flat=True, width="top_k", replace=None
        ),
        "hook_mlp_out": SiteSpec(_BLOCK + ".mlp", "output"),
        "hook_resid_post": SiteSpec(_BLOCK, "output"),
    }


OLMOE = FamilySpec(family="olmoe", layers="model.layers", sites=_moe_sites())
MIXTRAL = FamilySpec(family="mixtral", layers="model.layers", sites=_moe_sites())
QWEN2_MOE = FamilySpec(family="qwen2_moe", layers="model.layers", sites=_moe_sites())
