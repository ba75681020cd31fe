"""Tiny random models of every supported family, saved to local folders, for offline tests.

* :func:`make_tiny_model` builds a tiny config for a family, initialises random weights from a
  seed, trains a small byte-level BPE tokenizer on a built-in text, and saves both with
  ``save_pretrained`` (safetensors) so :func:`models.load` opens the folder offline.
* :func:`make_checkpoint_series` writes ``<root>/step{N}/`` folders (same config, different weights),
  read by :func:`models.load` as a training-checkpoint series.
* :func:`make_hub_cache` lays folders out as a Hugging Face hub cache
  (``models--org--name/{refs/<rev>, snapshots/<hash>/...}``) so ``from_pretrained(name,
  revision=rev)`` resolves offline through the real hub path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from models.mamba_ssm import mamba_ssm_state_dict_from_hf
from models.tokenizer import train_byte_level_bpe
from universality.errors import ConfigError
from universality.io import write_json

__all__ = [
    "TINY_FAMILIES", "make_tiny_model", "make_checkpoint_series", "make_hub_cache", "save_as_mamba_ssm", "tiny_corpus",
]

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. ",
    "Sparse autoencoders find features in the residual stream of language models. ",
    "A checkpoint saved at step 1000 differs from the one saved at step 2000. ",
    "Mamba is a state space model; a transformer uses attention over previous tokens. ",
    "Mixtures of experts route each token to the top k experts chosen by a router. ",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828",
    "Punctuation, quotes \"like this\", and (brackets) [too] {all} <here>!",
    "Universality asks whether two models learn the same features from the same data.",
)


def tiny_corpus() -> list[str]:
    """The small built-in English/code text the tiny tokenizers are trained on."""
    return [line * 3 for line in _CORPUS]


def _gpt2(vocab: int, **kw: Any):
    from transformers import GPT2Config

    base = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)
    base.update(kw)
    return GPT2Config(vocab_size=vocab, **base)


def _gpt_neox(vocab: int, **kw: Any):
    from transformers import GPTNeoXConfig

    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                max_position_embeddings=128, rotary_pct=0.25, use_parallel_residual=True)
    base.update(kw)
    return GPTNeoXConfig(vocab_size=vocab, **base)


def _mamba(vocab: int, **kw: Any):
    from transformers import MambaConfig

    base = dict(hidden_size=64, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4)
    base.update(kw)
    return MambaConfig(vocab_size=vocab, **base)


def _mamba2(vocab: int, **kw: Any):
    from transformers import Mamba2Config

    base = dict(hidden_size=64, num_hidden_layers=2, state_size=16, expand=2, head_dim=16, num_heads=8,
                n_groups=1, chunk_size=16, conv_kernel=4)
    base.update(kw)
    return Mamba2Config(vocab_size=vocab, **base)


def _olmoe(vocab: int, **kw: Any):
    from transformers import OlmoeConfig

    base = dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
                max_position_embeddings=128)
    base.update(kw)
    return OlmoeConfig(vocab_size=vocab, **base)


def _mixtral(vocab: int, **kw: Any):
    from transformers import MixtralConfig

    base = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128)
    base.update(kw)
    return MixtralConfig(vocab_size=vocab, **base)


def _qwen2_moe(vocab: int, **kw: Any):
    from transformers import Qwen2MoeConfig

    base = dict(hidden_size=64, intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, decoder_sparse_step=1, mlp_only_layers=[],
                max_position_embeddings=128)
    base.update(kw)
    return Qwen2MoeConfig(vocab_size=vocab, **base)


TINY_FAMILIES: dict[str, Callable[..., Any]] = {
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "mamba": _mamba,
    "mamba2": _mamba2,
    "olmoe": _olmoe,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
}


def make_tiny_model(family: str, path: str | os.PathLike, *, seed: int = 0, vocab_size: int = 320,
                    **overrides: Any) -> Path:
    """Save a tiny random ``family`` model + tokenizer to ``path`` and return the path.

    ``overrides`` replace config fields (e.g. ``num_hidden_layers=3``, ``use_parallel_residual=False``).
    The weights depend only on ``seed`` and the config.
    """
    from transformers import AutoModelForCausalLM

    builder = TINY_FAMILIES.get(family)
    if builder is None:
        raise ConfigError(f"no tiny config for family {family!r}", f"use one of {', '.join(TINY_FAMILIES)}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_byte_level_bpe(tiny_corpus(), vocab_size, out)
    special = tok.convert_tokens_to_ids(tok.eos_token)
    cfg = builder(len(tok), bos_token_id=special, eos_token_id=special, pad_token_id=special, **overrides)
    cfg.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(str(out))
    return out


def make_checkpoint_series(family: str, root: str | os.PathLike, steps: Iterable[int], **overrides: Any) -> Path:
    """Write ``<root>/step{N}/`` tiny models (seed = N) for each step and return ``root``."""
    root = Path(root)
    steps = list(steps)
    if not steps or any(not isinstance(s, int) or s < 0 for s in steps):
        raise ConfigError(f"steps must be non-negative integers, got {steps!r}", "pass e.g. [0, 1000, 2000]")
    for step in steps:
        make_tiny_model(family, root / f"step{step}", seed=step, **overrides)
    return root


def make_hub_cache(cache_dir: str | os.PathLike, repo_id: str, revisions: Mapping[str, str | os.PathLike]) -> Path:
    """Copy each ``revisions[rev]`` folder into an HF hub cache layout under ``cache_dir``.

    Writes ``models--{org}--{name}/snapshots/<hash>/...`` and ``refs/<rev>`` (containing ``<hash>``),
    so with ``HF_HUB_CACHE=cache_dir`` and ``HF_HUB_OFFLINE=1``, ``from_pretrained(repo_id,
    revision=rev)`` finds the files. Returns the repo folder.
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    for rev, folder in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{rev}".encode()).hexdigest()
        snap = repo / "snapshots" / commit
        if snap.exists():
            shutil.rmtree(snap)
        shutil.copytree(folder, snap)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(commit)
    return repo


def save_as_mamba_ssm(hf_model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, fmt: str = "safetensors") -> Path:
    """Re-save a tiny transformers Mamba / Mamba-2 folder in mamba-ssm's own checkpoint format.

    Writes ``config.json`` (``d_model``, ``n_layer``, ``ssm_cfg``, ...) and ``model.safetensors``, or
    ``pytorch_model.bin`` when ``fmt="bin"`` (a torch pickle, written only so tests can exercise the
    ``weights_only=True`` reader). The tokenizer files are copied along.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    if fmt not in ("safetensors", "bin"):
        raise ConfigError(f"unknown checkpoint format {fmt!r}", "use 'safetensors' or 'bin'")
    src = Path(hf_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(src))
    cfg = model.config
    ssm: dict[str, Any] = {"d_state": cfg.state_size, "d_conv": cfg.conv_kernel, "expand": cfg.expand,
                           "bias": cfg.use_bias, "conv_bias": cfg.use_conv_bias}
    if cfg.model_type == "mamba2":
        ssm.update(layer="Mamba2", headdim=cfg.head_dim, ngroups=cfg.n_groups, chunk_size=cfg.chunk_size)
    else:
        ssm.update(layer="Mamba1", dt_rank=cfg.time_step_rank)
    raw = {
        "d_model": cfg.hidden_size, "d_intermediate": 0, "n_layer": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size, "ssm_cfg": ssm, "attn_layer_idx": [], "attn_cfg": {},
        "rms_norm": True, "residual_in_fp32": cfg.residual_in_fp32, "fused_add_norm": True,
        "pad_vocab_size_multiple": 1, "tie_embeddings": bool(cfg.tie_word_embeddings),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", raw)
    state = mamba_ssm_state_dict_from_hf(model.state_dict())
    if fmt == "safetensors":
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(out / "model.safetensors"))
    else:
        torch.save(state, out / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    return out
