"""One small frozen config class per SAE architecture.

Every dictionary has a shape (:class:`SAEConfig`: ``d_in``, ``d_sae``, ``dtype``); each
architecture adds only the fields it uses, declared once in an *options* dataclass that the study
configuration reuses for its ``sae.<architecture>`` block (:mod:`universality.study.config`):

==============  =========================  ================================================
architecture    config class               fields beyond the shape (defaults)
==============  =========================  ================================================
``topk``        :class:`TopKConfig`        ``k`` (32)
``batchtopk``   :class:`BatchTopKConfig`   ``k`` (32, the mean number of active latents)
``relu``        :class:`ReLUConfig`        ``sparsity_coeff`` (1.0), ``decoder_norm``, ``tied``
``jumprelu``    :class:`JumpReLUConfig`    ``sparsity_coeff`` (1.0, on L0), ``decoder_norm``,
                                           ``bandwidth`` (0.05), ``init_threshold`` (0.01)
``gated``       :class:`GatedConfig`       ``sparsity_coeff`` (1.0), ``decoder_norm``
==============  =========================  ================================================

Each SAE class names its config class (``config_class``), as SAELens pairs ``TopKSAE`` with
``TopKSAEConfig``; :func:`sae_config` builds the right one from an architecture name, and a field
the architecture does not have is a one-line :class:`ConfigError`. ``cfg.json`` stores
``architecture`` beside the fields, and :meth:`SAEConfig.from_dict` dispatches on it (files written
before the split, which carried every field, still load: a field another architecture owns is
dropped when it holds the neutral value the old flat config wrote).

``sparsity_coeff`` is in units of the normalised input (``E||x||^2 = d_in``): the loss is
``||x - x_hat||^2 + sparsity_coeff * penalty`` per row. ``decoder_norm``: ``"unit"`` keeps the rows
of ``W_dec`` at unit norm during training (Bricken et al. 2023); ``"free"`` leaves them free and
weights the penalty by the row norms (Anthropic, "Circuits Updates - April 2024"); a saved
dictionary always has unit rows. TopK and BatchTopK always use unit rows (selection is not
invariant to moving norms into the encoder). JumpReLU's ``bandwidth`` and ``init_threshold`` are
the rectangle-kernel width of the straight-through estimator and the initial threshold
(Rajamanoharan et al. 2024, "Jumping Ahead"; SAELens' defaults).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from universality.checks import check_bool, check_choice, check_int, check_number, check_text
from universality.errors import ConfigError
from universality.sae.registry import get_architecture

__all__ = [
    "SAEConfig",
    "TopKOptions",
    "BatchTopKOptions",
    "PenaltyOptions",
    "ReLUOptions",
    "JumpReLUOptions",
    "GatedOptions",
    "TopKConfig",
    "BatchTopKConfig",
    "ReLUConfig",
    "JumpReLUConfig",
    "GatedConfig",
    "BUILTIN_OPTIONS",
    "config_class",
    "option_fields",
    "options_of",
    "sae_config",
]

_DTYPES = ("float32", "float64", "bfloat16", "float16")
_DECODER_NORMS = ("unit", "free")


# ----------------------------------------------------------------------------- options
@dataclass(frozen=True)
class TopKOptions:
    """``k``: active latents per row (Gao et al. 2024)."""

    k: int = 32

    def __post_init__(self) -> None:
        check_int("topk", "k", self.k)


@dataclass(frozen=True)
class BatchTopKOptions(TopKOptions):
    """``k``: mean active latents per row; the batch keeps its ``k * batch`` largest (Bussmann et al. 2024)."""


@dataclass(frozen=True)
class PenaltyOptions:
    """Fields of the architectures trained with a sparsity penalty."""

    sparsity_coeff: float = 1.0
    decoder_norm: str = "unit"

    def __post_init__(self) -> None:
        check_number(self._name(), "sparsity_coeff", self.sparsity_coeff, 0.0, low_open=True)
        check_choice(self._name(), "decoder_norm", self.decoder_norm, _DECODER_NORMS)

    def _name(self) -> str:
        return getattr(self, "architecture", "") or type(self).__name__.replace("Options", "").lower()


@dataclass(frozen=True)
class ReLUOptions(PenaltyOptions):
    """L1 penalty; ``tied``: encoder = decoder transpose (Cunningham et al. 2023), needs unit rows."""

    tied: bool = False

    def __post_init__(self) -> None:
        PenaltyOptions.__post_init__(self)
        check_bool(self._name(), "tied", self.tied)
        if self.tied and self.decoder_norm != "unit":
            raise ConfigError("tied relu SAEs need decoder_norm='unit'", "set decoder_norm: unit, or tied: false")


@dataclass(frozen=True)
class JumpReLUOptions(PenaltyOptions):
    """L0 penalty with learned thresholds (Rajamanoharan et al. 2024)."""

    bandwidth: float = 0.05
    init_threshold: float = 0.01

    def __post_init__(self) -> None:
        PenaltyOptions.__post_init__(self)
        check_number(self._name(), "bandwidth", self.bandwidth, 0.0, low_open=True)
        check_number(self._name(), "init_threshold", self.init_threshold, 0.0, low_open=True)


@dataclass(frozen=True)
class GatedOptions(PenaltyOptions):
    """L1 penalty on the gate path (Rajamanoharan et al. 2024, "Gated SAEs")."""


# ----------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class SAEConfig:
    """The shape every dictionary has; an architecture's config class adds its own fields.

    Class attributes (not fields) give the behaviour of architectures without the option:
    ``decoder_norm = "unit"``, ``tied = False``, ``uses_penalty = False``, ``default_remedy = "none"``
    (the dead-latent remedy ``TrainConfig(remedy="auto")`` picks: AuxK for TopK and BatchTopK).
    """

    d_in: int
    d_sae: int
    dtype: str = "float32"

    #: A field (not passed to ``__init__``) so that ``dataclasses.asdict`` and OmegaConf carry it.
    architecture: str = field(default="", init=False)
    # after the fields: a subclass field of the same name (decoder_norm, tied) must not move ahead of d_in
    decoder_norm: ClassVar[str] = "unit"
    tied: ClassVar[bool] = False
    uses_penalty: ClassVar[bool] = False
    #: the dead-latent remedy of ``TrainConfig(remedy="auto")``
    default_remedy: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        if not self.architecture:
            raise ConfigError("SAEConfig is the shape shared by all architectures and cannot be built alone",
                              "use sae_config('topk', d_in, d_sae, k=...) or an architecture's config class")
        for name in ("d_in", "d_sae"):
            check_int(self.architecture, name, getattr(self, name))
        check_choice(self.architecture, "dtype", self.dtype, _DTYPES)

    @property
    def torch_dtype(self):
        import torch  # import cost: configs are built without torch (study validation, the CLI)

        return getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """The fields plus ``architecture`` (what ``cfg.json`` stores under ``sae``)."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> SAEConfig:
        """The config of ``data["architecture"]`` (see the module docstring for older files)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"an SAE config must be a mapping, got {type(data).__name__}", "check cfg.json")
        data = dict(data)
        arch = data.pop("architecture", None)
        check_text("SAEConfig", "architecture", arch)
        cls = config_class(arch)
        return cls(**_upgrade(cls, data))

    def replace(self, **changes: Any) -> SAEConfig:
        return dataclasses.replace(self, **changes)


def _check_k(cfg: Any) -> None:
    if not cfg.k <= cfg.d_sae:
        raise ConfigError(f"{cfg.architecture}: k={cfg.k} is larger than d_sae={cfg.d_sae}",
                          f"choose k between 1 and {cfg.d_sae}, or a wider dictionary")


@dataclass(frozen=True)
class TopKConfig(TopKOptions, SAEConfig):
    architecture: str = field(default="topk", init=False)
    default_remedy: ClassVar[str] = "auxk"

    def __post_init__(self) -> None:
        SAEConfig.__post_init__(self)
        TopKOptions.__post_init__(self)
        _check_k(self)


@dataclass(frozen=True)
class BatchTopKConfig(BatchTopKOptions, SAEConfig):
    architecture: str = field(default="batchtopk", init=False)
    default_remedy: ClassVar[str] = "auxk"

    def __post_init__(self) -> None:
        SAEConfig.__post_init__(self)
        BatchTopKOptions.__post_init__(self)
        _check_k(self)


@dataclass(frozen=True)
class ReLUConfig(ReLUOptions, SAEConfig):
    architecture: str = field(default="relu", init=False)
    uses_penalty: ClassVar[bool] = True

    def __post_init__(self) -> None:
        SAEConfig.__post_init__(self)
        ReLUOptions.__post_init__(self)


@dataclass(frozen=True)
class JumpReLUConfig(JumpReLUOptions, SAEConfig):
    architecture: str = field(default="jumprelu", init=False)
    uses_penalty: ClassVar[bool] = True

    def __post_init__(self) -> None:
        SAEConfig.__post_init__(self)
        JumpReLUOptions.__post_init__(self)


@dataclass(frozen=True)
class GatedConfig(GatedOptions, SAEConfig):
    architecture: str = field(default="gated", init=False)
    uses_penalty: ClassVar[bool] = True

    def __post_init__(self) -> None:
        SAEConfig.__post_init__(self)
        GatedOptions.__post_init__(self)


_BUILTIN_CONFIGS: dict[str, type[SAEConfig]] = {
    c.architecture: c for c in (TopKConfig, BatchTopKConfig, ReLUConfig, JumpReLUConfig, GatedConfig)
}

#: The options dataclass of each built-in architecture (the study's ``sae.<architecture>`` blocks).
BUILTIN_OPTIONS: dict[str, type] = {
    "topk": TopKOptions, "batchtopk": BatchTopKOptions, "relu": ReLUOptions,
    "jumprelu": JumpReLUOptions, "gated": GatedOptions,
}

_SHAPE_FIELDS = ("architecture", "d_in", "d_sae", "dtype")
# What the flat config of earlier releases wrote for a field the architecture does not use.
_LEGACY_NEUTRAL = {"k": None, "sparsity_coeff": 0.0, "decoder_norm": "unit", "tied": False,
                   "jumprelu_bandwidth": 0.05, "jumprelu_threshold": 0.01}
_LEGACY_RENAMED = {"jumprelu_bandwidth": "bandwidth", "jumprelu_threshold": "init_threshold"}


def config_class(architecture: str) -> type[SAEConfig]:
    """The config class of ``architecture`` (built-in, or named by a registered SAE class)."""
    cls = _BUILTIN_CONFIGS.get(architecture)
    if cls is None:
        cls = get_architecture(architecture).config_class
    return cls


def option_fields(cls: type) -> tuple[str, ...]:
    """The fields of a config class beyond its name and shape (``d_in``, ``d_sae``, ``dtype``)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _SHAPE_FIELDS)


def options_of(cfg: SAEConfig) -> dict[str, Any]:
    """``{field: value}`` of ``cfg``'s architecture-specific fields."""
    return {name: getattr(cfg, name) for name in option_fields(type(cfg))}


def sae_config(architecture: str, d_in: int, d_sae: int, **fields: Any) -> SAEConfig:
    """The config of ``architecture`` with shape ``(d_in, d_sae)`` and its own ``fields``.

    A field the architecture does not have is a :class:`ConfigError` naming the fields it has.
    """
    check_text("SAEConfig", "architecture", architecture)
    cls = config_class(architecture)
    allowed = option_fields(cls) + ("dtype",)
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ConfigError(f"the {architecture} architecture has no field(s) {', '.join(unknown)}",
                          f"its fields are {', '.join(allowed)}; drop the others")
    return cls(d_in=d_in, d_sae=d_sae, **fields)


def _upgrade(cls: type[SAEConfig], data: dict[str, Any]) -> dict[str, Any]:
    """Map a stored config onto ``cls``: rename old JumpReLU fields, drop neutral fields of the old flat layout."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        new = _LEGACY_RENAMED.get(key, key)
        if new in names:
            out[new] = value
        elif key in _LEGACY_NEUTRAL and value == _LEGACY_NEUTRAL[key]:
            continue
        else:
            raise ConfigError(f"the {cls.architecture} architecture has no field {key} (= {value!r})",
                              f"its fields are {', '.join(sorted(names))}; fix or re-save the config")
    return out
