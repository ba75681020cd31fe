"""Shared SAE configs for the tests in this folder."""

from __future__ import annotations

from universality.sae import SAEConfig, sae_config

ARCH_CFGS = {
    "relu": dict(sparsity_coeff=1.0),
    "relu_tied": dict(sparsity_coeff=1.0, tied=True),
    "relu_free": dict(sparsity_coeff=1.0, decoder_norm="free"),
    "topk": dict(k=3),
    "batchtopk": dict(k=3),
    "jumprelu": dict(sparsity_coeff=1.0, init_threshold=0.2),
    "gated": dict(sparsity_coeff=1.0),
}


def cfg_for(name: str, d_in: int = 8, d_sae: int = 32) -> SAEConfig:
    return sae_config(name.split("_")[0], d_in, d_sae, **ARCH_CFGS[name])
