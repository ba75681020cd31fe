"""Architecture families of the zoo: a :class:`ZooModelConfig` -> a Hugging Face config and model.

A small registry (``@register_family("gpt2")``) maps each family to a builder of its HF config;
:func:`build_model` dispatches on ``cfg.family`` and initialises the weights from the config's seed.
Every family is built without dropout so that training on the CPU is a deterministic function of
the seed, and with ``bos``/``eos``/``pad`` set to the tokenizer's ``<|endoftext|>`` id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from universality.errors import ConfigError
from universality.zoo.config import ZooModelConfig

__all__ = ["register_family", "hf_config", "build_model", "mamba_scan"]

_BUILDERS: dict[str, Callable[[ZooModelConfig, int, int], Any]] = {}


def register_family(name: str) -> Callable:
    """Register ``fn(cfg, vocab_size, eos_id) -> transformers.PretrainedConfig`` for ``name``."""

    def deco(fn: Callable[[ZooModelConfig, int, int], Any]) -> Callable[[ZooModelConfig, int, int], Any]:
        _BUILDERS[name] = fn
        return fn

    return deco


@register_family("gpt2")
def _gpt2(cfg: ZooModelConfig, vocab: int, eos: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab, n_positions=cfg.context_length, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.mlp_width, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos,
        tie_word_embeddings=True, use_cache=False,
    )


@register_family("gpt_neox")
def _gpt_neox(cfg: ZooModelConfig, vocab: int, eos: int):
    from transformers import GPTNeoXConfig

    # Pythia: parallel attention + MLP residual, rotary on 25% of each head, untied unembedding.
    return GPTNeoXConfig(
        vocab_size=vocab, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=cfg.mlp_width, hidden_act="gelu",
        max_position_embeddings=cfg.context_length, rotary_pct=0.25, use_parallel_residual=True,
        attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False,
        bos_token_id=eos, eos_token_id=eos, use_cache=False,
    )


@register_family("mamba")
def _mamba(cfg: ZooModelConfig, vocab: int, eos: int):
    from transformers import MambaConfig

    # use_mambapy: the pure-PyTorch parallel scan of the ``mambapy`` package (same recurrence,
    # ~4x faster than the sequential loop on the CPU); transformers falls back to the loop when
    # mambapy is not installed.
    return MambaConfig(
        vocab_size=vocab, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, state_size=cfg.d_state,
        expand=2, conv_kernel=4, use_mambapy=True, bos_token_id=eos, eos_token_id=eos,
        tie_word_embeddings=True, use_cache=False,
    )


@register_family("olmoe")
def _olmoe(cfg: ZooModelConfig, vocab: int, eos: int):
    from transformers import OlmoeConfig

    return OlmoeConfig(
        vocab_size=vocab, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_width,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        num_experts=cfg.n_experts, num_experts_per_tok=cfg.k, norm_topk_prob=False,
        max_position_embeddings=cfg.context_length, output_router_logits=True,
        router_aux_loss_coef=cfg.aux_loss_coef, attention_dropout=0.0, tie_word_embeddings=False,
        bos_token_id=eos, eos_token_id=eos, use_cache=False,
    )


def hf_config(cfg: ZooModelConfig, vocab_size: int, eos_id: int):
    """The Hugging Face config of ``cfg`` for a tokenizer of ``vocab_size`` tokens."""
    builder = _BUILDERS.get(cfg.family)
    if builder is None:
        raise ConfigError(f"no zoo builder for family {cfg.family!r}", f"use one of {', '.join(sorted(_BUILDERS))}")
    return builder(cfg, vocab_size, eos_id)


def build_model(cfg: ZooModelConfig, vocab_size: int, eos_id: int) -> torch.nn.Module:
    """A freshly initialised causal LM for ``cfg`` (weights drawn from ``torch.manual_seed(cfg.seed)``)."""
    from transformers import AutoModelForCausalLM

    config = hf_config(cfg, vocab_size, eos_id)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config)
    return model.to(torch.float32)


def mamba_scan() -> str:
    """Which Mamba scan transformers will run here: ``"mambapy"`` (parallel) or ``"sequential"``."""
    from transformers.utils.import_utils import is_mambapy_available

    return "mambapy" if is_mambapy_available() else "sequential"
