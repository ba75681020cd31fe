"""The single-dictionary TopK encoder as it was before TopK training moved onto the stacked kernel.

Kept only as the reference of ``test_kernels.py``: the new path (a stack of one through
:func:`universality.sae.kernels.stacked_topk_encoder`) must give the same values, indices and
gradients within float tolerance.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


class _TopKEncoder(torch.autograd.Function):
    """``TopK(ReLU(x W + b))`` with a sparse backward on CUDA: only the ``k`` selected latents per row
    send gradient to ``W`` (``batch * k * d_in`` work instead of a dense ``batch * d_sae * d_in``
    matmul). On the CPU the same gradient is formed densely (scatter + BLAS), which is faster there.
    Also returns the dense pre-activations; a gradient on them (AuxK) takes the dense path."""

    @staticmethod
    def forward(ctx, x_BD: Tensor, W_DF: Tensor, b_F: Tensor, k: int):
        pre_BF = torch.addmm(b_F.to(x_BD.dtype), x_BD, W_DF.to(x_BD.dtype)) if x_BD.dtype == W_DF.dtype else x_BD @ W_DF + b_F
        vals_BK, idx_BK = torch.relu(pre_BF).topk(k, dim=-1, sorted=False)
        ctx.save_for_backward(x_BD, W_DF, idx_BK, vals_BK > 0)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(idx_BK)
        return vals_BK, idx_BK, pre_BF

    @staticmethod
    def backward(ctx, g_vals_BK, _g_idx, g_pre_BF):
        x_BD, W_DF, idx_BK, on_BK = ctx.saved_tensors
        B, D = x_BD.shape
        F = W_DF.shape[1]
        xw_BD = x_BD.to(W_DF.dtype)
        grad_x = grad_W = grad_b = None
        W_FD = W_DF.t()
        dense_BF = g_pre_BF.to(W_DF.dtype) if g_pre_BF is not None else None
        if g_vals_BK is not None:
            g_BK = (g_vals_BK * on_BK).to(W_DF.dtype)
            if x_BD.device.type == "cpu":
                # CPU: scatter the k gradients per row into a dense (B, F) matrix and let BLAS do the
                # products below. index_add_ with duplicate indices is serial-slow there, and collapses
                # (100x and more) when torch's threads compete with other processes for the cores.
                G_BF = torch.zeros(B, F, dtype=W_DF.dtype, device=W_DF.device).scatter_(1, idx_BK, g_BK)
                dense_BF = G_BF if dense_BF is None else dense_BF + G_BF
            else:
                if ctx.needs_input_grad[0]:
                    grad_x = torch.nn.functional.embedding_bag(idx_BK, W_FD.contiguous(), per_sample_weights=g_BK, mode="sum")
                flat_idx = idx_BK.reshape(-1)
                if ctx.needs_input_grad[1]:
                    contrib = (g_BK[:, :, None] * xw_BD[:, None, :]).reshape(-1, D)
                    grad_FD = torch.zeros(F, D, dtype=W_DF.dtype, device=W_DF.device).index_add_(0, flat_idx, contrib)
                    grad_W = grad_FD.t().contiguous()
                if ctx.needs_input_grad[2]:
                    grad_b = torch.zeros(F, dtype=W_DF.dtype, device=W_DF.device).index_add_(0, flat_idx, g_BK.reshape(-1))
        if dense_BF is not None:
            if ctx.needs_input_grad[0]:
                gx = dense_BF @ W_FD
                grad_x = gx if grad_x is None else grad_x + gx
            if ctx.needs_input_grad[1]:
                gW = xw_BD.t() @ dense_BF
                grad_W = gW if grad_W is None else grad_W + gW
            if ctx.needs_input_grad[2]:
                gb = dense_BF.sum(dim=0)
                grad_b = gb if grad_b is None else grad_b + gb
        if grad_x is not None:
            grad_x = grad_x.to(x_BD.dtype)
        return grad_x, grad_W, grad_b, None


def legacy_topk_encoder(
    x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"], k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(values, indices, pre)`` of ``TopK_k(ReLU(x W_enc + b_enc))`` with a sparse backward."""
    return _TopKEncoder.apply(x, W_enc, b_enc, k)
