"""Small dictionaries with known answers, shared by the matching tests."""

from __future__ import annotations

import torch

from universality.match.baselines import random_rotation


def unit(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=1, keepdim=True)


def permuted_noisy_copy(n: int = 64, d: int = 24, noise: float = 0.05, seed: int = 0):
    """``(A, B, perm)``: ``B[perm[i]]`` is a noised copy of ``A[i]``."""
    g = torch.Generator().manual_seed(seed)
    A = unit(torch.randn(n, d, generator=g))
    perm = torch.randperm(n, generator=g)
    B = torch.empty_like(A)
    B[perm] = unit(A + noise * torch.randn(n, d, generator=g) / d**0.5)
    return A, B, perm


class ToySAE:
    """A tied ReLU 'SAE' over given unit directions: encode(x) = relu(x W_dec^T - bias)."""

    def __init__(self, D: torch.Tensor, bias: float = 0.3) -> None:
        self.W_dec = unit(D)
        self.W_enc = self.W_dec.T.clone()
        self.bias = bias

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc - self.bias)


def rotated(D: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return D @ random_rotation(D.shape[1], seed).T
