"""Training configs: :class:`TrainConfig` (one dictionary) and :class:`RunConfig` (the shared stream)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from universality.errors import ConfigError
from universality.sae.config import SAEConfig

__all__ = ["TrainConfig", "RunConfig", "REMEDIES", "register_configs"]

#: Dead-latent remedies: AuxK (Gao et al. 2024), resampling (Bricken et al. 2023), ghost grads
#: (Anthropic, "Circuits Updates - January 2024"), or none. ``"auto"`` = AuxK for TopK and
#: BatchTopK, none otherwise.
REMEDIES = ("auto", "none", "auxk", "resample", "ghost")


@dataclass(frozen=True)
class TrainConfig:
    """One dictionary to train: its architecture, where it reads, its seed and its optimisation.

    ``lr`` is Adam's peak learning rate; it warms up linearly over ``warmup_steps`` and decays
    linearly to zero over the last ``1 - decay_start`` fraction of the run. The sparsity
    coefficient warms up linearly over ``sparsity_warmup_steps``. ``aux_coeff`` weighs the AuxK
    loss (Gao et al. use 1/32); ``aux_k`` is the number of dead latents AuxK uses (default
    ``d_in // 2``). ``name`` overrides the key ``f"{site}/{arch}-{d_sae}-s{seed}"``.
    """

    sae: SAEConfig
    site: str = "default"
    seed: int = 0
    lr: float = 4e-4
    warmup_steps: int = 0
    decay_start: float = 0.8
    sparsity_warmup_steps: int = 0
    remedy: str = "auto"
    aux_coeff: float = 1.0 / 32
    aux_k: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sae, SAEConfig):
            raise ConfigError(f"TrainConfig.sae must be an SAEConfig, got {type(self.sae).__name__}", "wrap the architecture in SAEConfig(...)")
        if not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr}", "use e.g. 4e-4")
        if self.warmup_steps < 0 or self.sparsity_warmup_steps < 0:
            raise ConfigError("warm-up steps must be >= 0", "use 0 to disable a warm-up")
        if not 0.0 <= self.decay_start <= 1.0:
            raise ConfigError(f"decay_start must be in [0, 1], got {self.decay_start}", "use 1.0 for no decay")
        if self.remedy not in REMEDIES:
            raise ConfigError(f"unknown dead-latent remedy {self.remedy!r}", f"use one of {', '.join(REMEDIES)}")
        if self.aux_coeff < 0 or (self.aux_k is not None and self.aux_k < 1):
            raise ConfigError("aux_coeff must be >= 0 and aux_k >= 1", "use aux_coeff=1/32, aux_k=None")
        from universality.sae.registry import get_architecture

        if get_architecture(self.sae.architecture).uses_penalty and self.sae.sparsity_coeff <= 0:
            raise ConfigError(f"{self.sae.architecture} SAEs need sparsity_coeff > 0", "set SAEConfig(sparsity_coeff=...)")
        if not isinstance(self.site, str) or not self.site:
            raise ConfigError("TrainConfig.site must be a non-empty string", "use a site name or 'default'")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain mapping (e.g. YAML or an OmegaConf container); ``sae`` may be a mapping."""
        data = dict(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {unknown}", f"use only {sorted(names)}")
        if isinstance(data.get("sae"), dict):
            data["sae"] = SAEConfig.from_dict(dict(data["sae"]))
        return cls(**data)

    @property
    def effective_remedy(self) -> str:
        if self.remedy != "auto":
            return self.remedy
        return "auxk" if self.sae.architecture in ("topk", "batchtopk") else "none"

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        return f"{self.site}/{self.sae.architecture}-{self.sae.d_sae}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunConfig:
    """The shared activation stream and training loop.

    ``steps``: batches to train on (the source may end earlier). ``normalize``: scale each site's
    activations so ``E||x||^2 = d_in`` (scale estimated on the first batch; folded into the weights
    on save). ``dead_window``: tokens without firing after which a latent counts as dead (also the
    window of the firing-frequency estimate). ``resample_every``: steps between resamplings.
    ``autocast``: bf16 autocast on CUDA (ignored on the CPU). ``checkpoint_every``: steps between
    checkpoints in ``checkpoint_dir`` (0: only at the end). ``out_dir``: write one artifact folder
    per dictionary there.
    """

    steps: int
    normalize: bool = True
    dead_window: int = 1_000_000
    resample_every: int = 2_500
    grad_clip: float = 1.0
    autocast: bool = True
    device: str = "cpu"
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    out_dir: str | None = None
    init_rows: int = 4096

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"RunConfig.steps must be a positive integer, got {self.steps!r}", "set steps=")
        if self.dead_window < 1 or self.resample_every < 1:
            raise ConfigError("dead_window and resample_every must be >= 1", "use e.g. dead_window=1_000_000")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0, got {self.grad_clip}", "use 0 to disable clipping")
        if self.checkpoint_every < 0:
            raise ConfigError("checkpoint_every must be >= 0", "use 0 to checkpoint only at the end")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ConfigError("checkpoint_every is set but checkpoint_dir is not", "set checkpoint_dir")
        if self.init_rows < 1:
            raise ConfigError("init_rows must be >= 1", "use e.g. 4096")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def register_configs(group: str = "sae") -> None:
    """Register :class:`TrainConfig` and :class:`RunConfig` as structured configs in Hydra's
    ConfigStore (call explicitly; importing this module registers nothing)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group=group, name="train_schema", node=TrainConfig(SAEConfig("topk", 768, 24576, k=32)))
    cs.store(group=group, name="run_schema", node=RunConfig(steps=10_000))
