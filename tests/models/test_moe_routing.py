"""MoE routing sites: indices/weights are the router's top-k, and the block output is the routed sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models

def _ids() -> torch.Tensor:
    return torch.randint(0, 250, (2, 11), generator=torch.Generator().manual_seed(3))


def _silu_expert(x, gate_up, down):
    """SwiGLU expert: down @ (silu(x W_gate^T) * (x W_up^T)); gate and up stacked in gate_up."""
    gate, up = (x @ gate_up.T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ down.T


def _by_hand(adapter, layer: int, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MoE block output recomputed from the captured routing and the experts' weights."""
    block = adapter.model.model.layers[layer]
    x = block.post_attention_layernorm(acts[f"blocks.{layer}.hook_resid_mid"])
    idx = acts[f"blocks.{layer}.mlp.hook_expert_indices"]
    w = acts[f"blocks.{layer}.mlp.hook_expert_weights"]
    experts = block.mlp.experts
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            for j in range(idx.shape[-1]):
                e = int(idx[b, t, j])
                out[b, t] += w[b, t, j] * _silu_expert(x[b, t], experts.gate_up_proj[e], experts.down_proj[e])
    shared = getattr(block.mlp, "shared_expert", None)
    if shared is not None:  # Qwen2-MoE: + sigmoid(x w_g) * shared_mlp(x)
        s = (F.silu(x @ shared.gate_proj.weight.T) * (x @ shared.up_proj.weight.T)) @ shared.down_proj.weight.T
        out = out + torch.sigmoid(x @ block.mlp.shared_expert_gate.weight.T) * s
    return out


# Mixtral always renormalises its top-k weights; OLMoE and Qwen2-MoE follow norm_topk_prob.
@pytest.mark.parametrize(
    ("family", "norm_topk"),
    [("olmoe", False), ("olmoe", True), ("qwen2_moe", False), ("qwen2_moe", True), ("mixtral", True)],
)
def test_routing_and_block_output_by_hand(tiny, tmp_path, family, norm_topk):
    path = tiny[family]
    if family != "mixtral" and norm_topk != models.load(path).model.config.norm_topk_prob:
        from models.testing import make_tiny_model

        path = make_tiny_model(family, tmp_path / family, seed=5, norm_topk_prob=norm_topk)
    a = models.load(path, device="cpu")
    acts = a.capture(_ids(), list(a.sites))
    with torch.no_grad():
        for layer in range(a.n_layers):
            block = a.model.model.layers[layer]
            x = block.post_attention_layernorm(acts[f"blocks.{layer}.hook_resid_mid"])
            logits = acts[f"blocks.{layer}.mlp.hook_router_logits"]
            torch.testing.assert_close(logits, x @ block.mlp.gate.weight.T, atol=1e-5, rtol=0)
            probs = logits.float().softmax(-1)
            top = probs.topk(block.mlp.gate.top_k, dim=-1)
            idx = acts[f"blocks.{layer}.mlp.hook_expert_indices"]
            w = acts[f"blocks.{layer}.mlp.hook_expert_weights"]
            assert idx.dtype == torch.int64 and torch.equal(idx, top.indices)
            expected_w = top.values / top.values.sum(-1, keepdim=True) if norm_topk else top.values
            torch.testing.assert_close(w, expected_w, atol=1e-6, rtol=0)
            if norm_topk:
                torch.testing.assert_close(w.sum(-1), torch.ones_like(w[..., 0]))
            else:
                assert (w.sum(-1) < 1 - 1e-4).all()
            torch.testing.assert_close(acts[f"blocks.{layer}.hook_mlp_out"], _by_hand(a, layer, acts), atol=1e-5, rtol=0)


def test_qwen2_moe_dense_layers_have_no_routing_sites(tmp_path):
    from models.testing import make_tiny_model

    a = models.load(make_tiny_model("qwen2_moe", tmp_path / "q", mlp_only_layers=[0]), device="cpu")
    assert "blocks.0.mlp.hook_router_logits" not in a.sites and "blocks.0.hook_mlp_out" in a.sites
    assert a.sites["blocks.1.mlp.hook_router_logits"] == 4 and a.sites["blocks.1.mlp.hook_expert_indices"] == 2
    acts = a.capture(_ids(), ["blocks.0.hook_mlp_out", "blocks.1.mlp.hook_expert_indices"])
    assert acts["blocks.1.mlp.hook_expert_indices"].shape == (2, 11, 2)
