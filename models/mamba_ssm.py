"""Read checkpoints published in mamba-ssm's own format into transformers' Mamba / Mamba-2 layout.

mamba-ssm (``MambaLMHeadModel.save_pretrained``) writes ``config.json`` with ``d_model``, ``n_layer``,
``vocab_size``, ``ssm_cfg`` (``layer``: "Mamba1" or "Mamba2", ``d_state``, ``d_conv``, ``expand``,
``headdim``, ``ngroups``, ``chunk_size``, ...), ``rms_norm``, ``residual_in_fp32``,
``pad_vocab_size_multiple``, ``tie_embeddings``, and weights (``pytorch_model.bin`` or
``model.safetensors``) under ``backbone.embedding``, ``backbone.layers.{N}.norm``,
``backbone.layers.{N}.mixer.*``, ``backbone.norm_f`` and ``lm_head``.

The transformers classes keep the same names except ``backbone.embedding`` -> ``backbone.embeddings``;
mixer parameters (Mamba-2: ``in_proj`` ordered [z, x, B, C, dt], ``conv1d``, ``dt_bias``, ``A_log``,
``D``, gated ``norm`` with norm-after-gate, ``out_proj``) have the same names and shapes. Options
transformers cannot express (hybrid attention layers, MLP layers, ``D_has_hdim``,
``norm_before_gate``, ``d_ssm`` != d_inner, LayerNorm instead of RMSNorm) are refused.
Safetensors are preferred; a ``.bin`` is read only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from universality.errors import ModelLoadError

__all__ = [
    "is_mamba_ssm_config",
    "hf_config_from_mamba_ssm",
    "hf_state_dict_from_mamba_ssm",
    "mamba_ssm_state_dict_from_hf",
    "load_mamba_ssm",
]

_RENAMES = {"backbone.embedding.weight": "backbone.embeddings.weight"}


def is_mamba_ssm_config(raw: Mapping[str, Any]) -> bool:
    """A mamba-ssm config.json: ``d_model`` and ``n_layer`` and no HF ``model_type``."""
    return "model_type" not in raw and "d_model" in raw and "n_layer" in raw


def _padded_vocab(raw: Mapping[str, Any]) -> int:
    vocab = int(raw["vocab_size"])
    mult = int(raw.get("pad_vocab_size_multiple", 8) or 1)
    return vocab + (-vocab) % mult


def hf_config_from_mamba_ssm(raw: Mapping[str, Any]):
    """The transformers ``MambaConfig`` / ``Mamba2Config`` equivalent to a mamba-ssm config."""
    from transformers import Mamba2Config, MambaConfig

    ssm = dict(raw.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    unsupported = []
    if raw.get("attn_layer_idx"):
        unsupported.append("attention layers (attn_layer_idx)")
    if int(raw.get("d_intermediate", 0) or 0) > 0:
        unsupported.append("MLP layers (d_intermediate > 0)")
    if not raw.get("rms_norm", True):
        unsupported.append("LayerNorm (rms_norm=false)")
    if ssm.get("D_has_hdim", False):
        unsupported.append("D_has_hdim")
    if ssm.get("norm_before_gate", False):
        unsupported.append("norm_before_gate")
    if ssm.get("d_ssm") is not None:
        unsupported.append("d_ssm")
    if not ssm.get("rmsnorm", True):
        unsupported.append("ungated mixer norm (rmsnorm=false)")
    if unsupported:
        raise ModelLoadError(
            f"mamba-ssm checkpoint uses {', '.join(unsupported)}, which transformers' Mamba classes cannot hold",
            "load a pure Mamba / Mamba-2 checkpoint",
        )
    d_model = int(raw["d_model"])
    common = dict(
        hidden_size=d_model,
        num_hidden_layers=int(raw["n_layer"]),
        vocab_size=_padded_vocab(raw),
        state_size=int(ssm.get("d_state", 128 if layer == "Mamba2" else 16)),
        conv_kernel=int(ssm.get("d_conv", 4)),
        expand=int(ssm.get("expand", 2)),
        use_bias=bool(ssm.get("bias", False)),
        use_conv_bias=bool(ssm.get("conv_bias", True)),
        residual_in_fp32=bool(raw.get("residual_in_fp32", True)),
        layer_norm_epsilon=float(raw.get("norm_epsilon", 1e-5)),
        tie_word_embeddings=bool(raw.get("tie_embeddings", True)),
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    if layer == "Mamba1":
        dt_rank = ssm.get("dt_rank", "auto")
        return MambaConfig(time_step_rank=math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank), **common)
    if layer == "Mamba2":
        head_dim = int(ssm.get("headdim", 64))
        d_inner = common["expand"] * d_model
        if d_inner % head_dim:
            raise ModelLoadError(f"mamba-ssm d_inner {d_inner} is not a multiple of headdim {head_dim}", "check ssm_cfg")
        limit = ssm.get("dt_limit", (0.0, float("inf")))
        return Mamba2Config(
            num_heads=d_inner // head_dim,
            head_dim=head_dim,
            n_groups=int(ssm.get("ngroups", 1)),
            chunk_size=int(ssm.get("chunk_size", 256)),
            time_step_limit=tuple(float(v) for v in limit),
            **common,
        )
    raise ModelLoadError(f"unknown mamba-ssm layer type {layer!r}", "ssm_cfg.layer must be Mamba1 or Mamba2")


def hf_state_dict_from_mamba_ssm(state: Mapping[str, Tensor], tie: bool) -> dict[str, Tensor]:
    """Rename mamba-ssm keys to transformers keys (``backbone.embedding`` -> ``backbone.embeddings``)."""
    out = {_RENAMES.get(k, k): v for k, v in state.items()}
    if "lm_head.weight" not in out and tie:
        out["lm_head.weight"] = out["backbone.embeddings.weight"]
    return out


def mamba_ssm_state_dict_from_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse renaming (used to write mamba-ssm-format test checkpoints)."""
    back = {v: k for k, v in _RENAMES.items()}
    return {back.get(k, k): v.detach().clone().contiguous() for k, v in state.items()}


def _read_weights(location: str, revision: str | None) -> dict[str, Tensor]:
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            file = cached_file(location, filename, revision=revision, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            file = None
        if file is None:
            continue
        if filename.endswith(".safetensors"):
            return load_file(file)
        return torch.load(file, map_location="cpu", weights_only=True)
    raise ModelLoadError(
        f"mamba-ssm checkpoint {location!r} has neither model.safetensors nor pytorch_model.bin",
        "check the folder or hub name",
    )


def load_mamba_ssm(location: str, raw: Mapping[str, Any], *, revision: str | None = None,
                   dtype: torch.dtype = torch.float32):
    """Build the transformers model for a mamba-ssm checkpoint and load its converted weights."""
    from transformers import AutoModelForCausalLM

    cfg = hf_config_from_mamba_ssm(raw)
    state = hf_state_dict_from_mamba_ssm(_read_weights(location, revision), cfg.tie_word_embeddings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ModelLoadError(
            f"mamba-ssm weights do not match the converted config (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})",
            "check the checkpoint's config.json matches its weights",
        )
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.to(dtype).eval()
