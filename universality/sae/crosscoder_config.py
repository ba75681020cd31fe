"""The config of a crosscoder (:mod:`universality.sae.crosscoder`): one dictionary over ``N`` sources.

A crosscoder reads the concatenation of ``N`` sources' activations, ``x = [x_1, ..., x_N]`` with
``x_s`` of width ``source_widths[s]`` (checkpoints of one model share a width; two models need not),
so its ``d_in`` is ``sum(source_widths)``. Fields beyond the shape:

``source_widths``      width of each source, in input order (at least two)
``sparsity``           ``"batchtopk"`` (default; Minder et al. 2025) or ``"l1"`` (Lindsey et al. 2024)
``k``                  BatchTopK: mean active latents per row (32)
``sparsity_coeff``     L1: coefficient of the decoder-norm-weighted L1 penalty (1.0)
``shared_latents``     L1: the first ``shared_latents`` latents are designated shared (0)
``shared_coeff_ratio`` L1: their penalty is multiplied by this ratio (0.15; Anthropic, Feb 2025, use
                       a reduced penalty for designated shared latents)
``tie_shared``         L1, sources of one width: the designated shared latents have one decoder row for
                       every source (Anthropic, Feb 2025: shared features' decoders are tied), so
                       they cannot drift into exclusive latents (False)

Only the standard library is imported here, like :mod:`universality.sae.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from universality.checks import check_choice, check_int, check_number
from universality.errors import ConfigError
from universality.sae.config import SAEConfig

__all__ = ["CrosscoderConfig", "crosscoder_config", "SPARSITIES"]

SPARSITIES = ("batchtopk", "l1")


@dataclass(frozen=True)
class CrosscoderConfig(SAEConfig):
    """Shape ``d_in = sum(source_widths)``, ``d_sae`` latents, and the sparsity of the crosscoder."""

    source_widths: tuple[int, ...] = ()
    sparsity: str = "batchtopk"
    k: int = 32
    sparsity_coeff: float = 1.0
    shared_latents: int = 0
    shared_coeff_ratio: float = 0.15
    tie_shared: bool = False
    architecture: str = field(default="crosscoder", init=False)
    #: decoder rows are free: the sparsity weighs each latent by the sum of its per-source decoder norms
    decoder_norm: ClassVar[str] = "free"

    def __post_init__(self) -> None:
        SAEConfig.__post_init__(self)
        name = self.architecture
        widths = self.source_widths
        if isinstance(widths, list):
            object.__setattr__(self, "source_widths", tuple(widths))
            widths = self.source_widths
        if not isinstance(widths, tuple) or len(widths) < 2:
            raise ConfigError(f"crosscoder: source_widths must list the width of at least two sources, got {widths!r}",
                              "set source_widths=(d_a, d_b, ...)")
        for i, w in enumerate(widths):
            check_int(name, f"source_widths[{i}]", w)
        if sum(widths) != self.d_in:
            raise ConfigError(f"crosscoder: d_in={self.d_in} is not the sum of source_widths {widths} (= {sum(widths)})",
                              "build the config with crosscoder_config(source_widths, d_sae, ...)")
        check_choice(name, "sparsity", self.sparsity, SPARSITIES)
        check_int(name, "k", self.k)
        if self.sparsity == "batchtopk" and self.k > self.d_sae:
            raise ConfigError(f"crosscoder: k={self.k} is larger than d_sae={self.d_sae}", f"choose k between 1 and {self.d_sae}")
        check_number(name, "sparsity_coeff", self.sparsity_coeff, 0.0, low_open=True)
        check_int(name, "shared_latents", self.shared_latents, 0)
        if self.shared_latents > self.d_sae:
            raise ConfigError(f"crosscoder: shared_latents={self.shared_latents} exceeds d_sae={self.d_sae}",
                              f"designate at most {self.d_sae} shared latents")
        if self.shared_latents and self.sparsity != "l1":
            raise ConfigError("crosscoder: designated shared latents get a reduced L1 penalty, which BatchTopK has not",
                              "set sparsity='l1', or shared_latents=0")
        check_number(name, "shared_coeff_ratio", self.shared_coeff_ratio, 0.0, 1.0)
        if not isinstance(self.tie_shared, bool):
            raise ConfigError(f"crosscoder: tie_shared must be true or false, got {self.tie_shared!r}", "set tie_shared=True or False")
        if self.tie_shared and not self.shared_latents:
            raise ConfigError("crosscoder: tie_shared ties the decoders of designated shared latents, but shared_latents=0",
                              "set shared_latents > 0, or tie_shared=False")
        if self.tie_shared and len(set(widths)) != 1:
            raise ConfigError(f"crosscoder: tie_shared needs sources of one width (one decoder row serves all), got {widths}",
                              "tie only sources of equal width (checkpoints of one model), or set tie_shared=False")

    @property
    def uses_penalty(self) -> bool:  # type: ignore[override]
        """True for the L1 form (the trainer then adds ``sparsity_coeff`` times the penalty)."""
        return self.sparsity == "l1"

    @property
    def default_remedy(self) -> str:  # type: ignore[override]
        """AuxK for BatchTopK (Gao et al. 2024), none for L1."""
        return "auxk" if self.sparsity == "batchtopk" else "none"

    @property
    def n_sources(self) -> int:
        return len(self.source_widths)

    def source_slices(self) -> tuple[slice, ...]:
        """The column block of each source in the concatenated input."""
        out, start = [], 0
        for w in self.source_widths:
            out.append(slice(start, start + w))
            start += w
        return tuple(out)


def crosscoder_config(source_widths: tuple[int, ...] | list[int], d_sae: int, **fields) -> CrosscoderConfig:
    """A :class:`CrosscoderConfig` with ``d_in = sum(source_widths)``."""
    widths = tuple(source_widths)
    if not all(isinstance(w, int) for w in widths):
        raise ConfigError(f"crosscoder: source_widths must be integers, got {widths!r}", "pass e.g. (512, 768)")
    return CrosscoderConfig(d_in=sum(widths), d_sae=d_sae, source_widths=widths, **fields)
