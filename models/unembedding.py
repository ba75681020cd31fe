"""The unembedding path of an adapter's model, for direct logit effects (:mod:`universality.cards.logits`).

Hugging Face causal LMs: the output embedding (``lm_head``) and the final norm before it, found by the
names the families use (GPT-2 ``transformer.ln_f``, GPT-NeoX/Pythia ``gpt_neox.final_layer_norm``,
Mamba ``backbone.norm_f``, Llama-style and MoE ``model.norm``). A LayerNorm centres its input; an
RMSNorm does not. TransformerLens bridges: ``W_U`` and ``ln_final``. ``None`` when the model has no
output embedding. :func:`input_embedding` reads the other end: the input embedding matrix
(``get_input_embeddings()``, or a TransformerLens ``W_E``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from universality.cards.logits import Unembedding

__all__ = ["unembedding", "input_embedding", "FINAL_NORMS"]

FINAL_NORMS = ("transformer.ln_f", "gpt_neox.final_layer_norm", "backbone.norm_f", "model.norm")


def _module(root: nn.Module, path: str) -> nn.Module | None:
    mod: Any = root
    for part in path.split("."):
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod if isinstance(mod, nn.Module) else None


def unembedding(adapter: Any) -> Unembedding | None:
    """The :class:`~universality.cards.logits.Unembedding` of ``adapter.model``, or None."""
    model = adapter.model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None and hasattr(model, "W_U"):  # a TransformerLens model: W_U is (d_model, vocab)
        norm = _module(model, "ln_final")
        weight = getattr(norm, "w", None) if norm is not None else None
        return Unembedding(weight=model.W_U.detach().T, norm_weight=None if weight is None else weight.detach(),
                           centred=norm is not None and "RMS" not in type(norm).__name__)
    if head is None or getattr(head, "weight", None) is None:
        return None
    norm = next((m for p in FINAL_NORMS if (m := _module(model, p)) is not None), None)
    weight = getattr(norm, "weight", None) if norm is not None else None
    return Unembedding(weight=head.weight.detach(), norm_weight=None if weight is None else weight.detach(),
                       centred=isinstance(norm, nn.LayerNorm))


def input_embedding(adapter: Any) -> Any:
    """The ``(vocab, d_model)`` input embedding weight of ``adapter.model`` (detached), or None."""
    model = adapter.model
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.detach()
    W_E = getattr(model, "W_E", None)  # a TransformerLens model: W_E is (vocab, d_model)
    return None if W_E is None else W_E.detach()
