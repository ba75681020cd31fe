"""Next-token cross-entropy of a causal LM (training objective and evaluation metric)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from universality.data.packing import pack
from universality.data.sources import Document
from universality.io import read_json
from universality.zoo.corpus import packing_config
from universality.zoo.tokenizer import load_tokenizer

__all__ = ["next_token_loss", "eval_loss", "text_loss"]


def next_token_loss(
    model: torch.nn.Module, ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"] | None = None
) -> tuple[Tensor, Tensor | None]:
    """Mean next-token cross-entropy (nats) and, for MoE models, the router load-balancing loss.

    .. math::

        \\mathcal{L} = -\\frac{1}{|M|} \\sum_{(b,t) \\in M} \\log p_\\theta(x_{b,t+1} \\mid x_{b,\\le t}),
        \\quad M = \\{(b,t) : t < T,\\ m_{b,t+1} = 1\\}

    (the causal-LM loss of GPT-2, Radford et al. 2019, as computed by transformers'
    ``ForCausalLMLoss``: padded targets, ``attention_mask`` 0, are left out; without a mask every
    position counts). The auxiliary loss is the model's own ``aux_loss`` (Switch Transformer load
    balancing, Fedus et al. 2021), ``None`` for dense models.
    """
    out = model(input_ids=ids) if attention_mask is None else model(input_ids=ids, attention_mask=attention_mask)
    logits = out.logits[:, :-1].float()
    targets = ids[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return ce, getattr(out, "aux_loss", None)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, rows: Int[Tensor, "rows ctx"], batch_size: int = 32) -> float:
    """Mean next-token cross-entropy over ``rows`` (every row weighted equally), in eval mode."""
    if rows.shape[0] == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for start in range(0, rows.shape[0], batch_size):
            chunk = rows[start : start + batch_size]
            ce, _ = next_token_loss(model, chunk)
            total += float(ce) * chunk.shape[0]
        return total / rows.shape[0]
    finally:
        model.train(was_training)


def text_loss(model_or_path, texts: list[str], tokenizer=None, context_length: int | None = None) -> float:
    """Mean next-token cross-entropy of a zoo model on ``texts`` (packed like training data, tail padded and masked).

    ``model_or_path`` is a model or a checkpoint folder (``<out>/step{N}``); the tokenizer defaults
    to the one saved beside it. Used to check a planted pattern was (or was not) learned.
    """
    model = model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model_or_path), local_files_only=True)
        tokenizer = tokenizer if tokenizer is not None else model_or_path
    tokenizer = load_tokenizer(tokenizer)
    if context_length is None and isinstance(model_or_path, (str, os.PathLike)):
        from pathlib import Path

        manifest = Path(model_or_path).parent / "zoo.json"
        if manifest.is_file():
            context_length = int(read_json(manifest)["config"]["context_length"])
    if context_length is None:
        cfg = model.config
        context_length = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 64
    docs = [Document(f"probe/{i}", t) for i, t in enumerate(texts) if t]
    batch, _ = pack(docs, tokenizer, packing_config(context_length, drop_last=False))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ce, _ = next_token_loss(model, batch.input_ids, batch.attention_mask)
    finally:
        model.train(was_training)
    return float(ce)
