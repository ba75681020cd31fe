"""The architecture config of one sparse autoencoder (a small frozen dataclass)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from universality.checks import check_bool, check_choice, check_int, check_number, check_text, known_fields

__all__ = ["SAEConfig"]

_DTYPES = ("float32", "float64", "bfloat16", "float16")
_DECODER_NORMS = ("unit", "free")


@dataclass(frozen=True)
class SAEConfig:
    """Shape and sparsity mechanism of one dictionary.

    ``architecture``: a registered name (``relu``, ``topk``, ``batchtopk``, ``jumprelu``, ``gated``).
    ``k``: active latents per row (``topk``; mean per row for ``batchtopk``).
    ``sparsity_coeff``: weight of the L1 penalty (``relu``, ``gated``) or of the L0 penalty (``jumprelu``).
    ``decoder_norm``: ``"unit"`` keeps the rows of ``W_dec`` at unit norm during training
    (Bricken et al. 2023); ``"free"`` leaves them free and weights the penalty by the row norms
    (Anthropic, "Circuits Updates - April 2024"); the norms are folded into the encoder on save, so
    a saved dictionary always has unit rows. TopK and BatchTopK need ``"unit"``.
    ``tied``: ``relu`` only, encoder = decoder transpose (Cunningham et al. 2023).
    ``jumprelu_bandwidth``/``jumprelu_threshold``: width of the rectangle kernel of the
    straight-through estimator and the initial threshold, in normalised-input units
    (Rajamanoharan et al. 2024, "Jumping Ahead"); defaults follow SAELens (0.05 and 0.01).
    """

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    sparsity_coeff: float = 0.0
    decoder_norm: str = "unit"
    tied: bool = False
    jumprelu_bandwidth: float = 0.05
    jumprelu_threshold: float = 0.01
    dtype: str = "float32"

    def __post_init__(self) -> None:
        from universality.sae.registry import get_architecture

        check_text("SAEConfig", "architecture", self.architecture)
        arch = get_architecture(self.architecture)  # unknown names: one line listing the registered ones
        for name in ("d_in", "d_sae"):
            check_int("SAEConfig", name, getattr(self, name))
        check_int("SAEConfig", "k", self.k, none_ok=True)
        check_choice("SAEConfig", "dtype", self.dtype, _DTYPES)
        check_choice("SAEConfig", "decoder_norm", self.decoder_norm, _DECODER_NORMS)
        check_number("SAEConfig", "sparsity_coeff", self.sparsity_coeff, 0.0)
        check_number("SAEConfig", "jumprelu_bandwidth", self.jumprelu_bandwidth, 0.0, low_open=True)
        check_number("SAEConfig", "jumprelu_threshold", self.jumprelu_threshold, 0.0, low_open=True)
        check_bool("SAEConfig", "tied", self.tied)
        arch.validate_config(self)

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        return cls(**known_fields(cls, data, "SAEConfig"))

    def replace(self, **changes: Any) -> SAEConfig:
        return dataclasses.replace(self, **changes)
