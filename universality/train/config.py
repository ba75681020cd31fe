"""Training configs: :class:`TrainConfig` (one dictionary) and :class:`RunConfig` (the shared stream)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from universality.checks import check_bool, check_choice, check_int, check_number, check_text, known_fields, leaves_folder
from universality.errors import ConfigError
from universality.sae.config import SAEConfig, TopKConfig
from universality.sae.identity import INIT_MODES
from universality.train.tracking import check_log_to

__all__ = ["TrainConfig", "RunConfig", "REMEDIES", "DEAD_WINDOW_FRACTION", "MAX_DEAD_WINDOW", "register_configs"]

#: Dead-latent remedies: AuxK (Gao et al. 2024), resampling (Bricken et al. 2023), ghost grads
#: (Anthropic, "Circuits Updates - January 2024"), or none. ``"auto"`` = AuxK for TopK,
#: BatchTopK and BatchTopK crosscoders, none otherwise (``SAEConfig.default_remedy``).
REMEDIES = ("auto", "none", "auxk", "resample", "ghost")

#: The automatic dead-latent window (``RunConfig(dead_window=0)``): this fraction of the run's tokens,
#: capped at :data:`MAX_DEAD_WINDOW` tokens.
DEAD_WINDOW_FRACTION = 0.05
MAX_DEAD_WINDOW = 1_000_000


@dataclass(frozen=True)
class TrainConfig:
    """One dictionary to train: its architecture, where it reads, its seed and its optimisation.

    ``lr`` is Adam's peak learning rate; it warms up linearly over ``warmup_steps`` and decays
    linearly to zero over the last ``1 - decay_start`` fraction of the run. The sparsity
    coefficient warms up linearly over ``sparsity_warmup_steps``. ``aux_coeff`` weighs the AuxK
    loss (Gao et al. use 1/32); ``aux_k`` is the number of dead latents AuxK uses (default
    ``d_in // 2``). ``name`` overrides the key ``f"{site}/{arch}-{d_sae}-s{seed}"``.

    ``init``: where the initial weights come from. ``"derived"`` (default) draws them from a hash of
    ``seed`` and the dictionary's identity (key, site, config, and the model, revision, dataset and
    subset hash of its activations - or a fingerprint of its first batch when none of those is known),
    so two dictionaries of one seed never start from the same weights by accident.
    ``"seed"`` draws them from ``seed`` alone (the behaviour before this field existed): every
    dictionary of one seed and shape starts from the same decoder - use it only to study a shared
    start on purpose. The artifact's ``meta["init"]`` records the choice (:mod:`universality.sae.identity`).
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
    init: str = "derived"

    def __post_init__(self) -> None:
        if not isinstance(self.sae, SAEConfig):
            raise ConfigError(f"TrainConfig.sae must be an SAEConfig, got {type(self.sae).__name__}", "build it with universality.sae.sae_config(architecture, d_in, d_sae, ...)")
        check_text("TrainConfig", "site", self.site)
        check_int("TrainConfig", "seed", self.seed, 0)
        check_number("TrainConfig", "lr", self.lr, 0.0, low_open=True)
        check_int("TrainConfig", "warmup_steps", self.warmup_steps, 0)
        check_int("TrainConfig", "sparsity_warmup_steps", self.sparsity_warmup_steps, 0)
        check_number("TrainConfig", "decay_start", self.decay_start, 0.0, 1.0)
        check_choice("TrainConfig", "remedy", self.remedy, REMEDIES)
        check_number("TrainConfig", "aux_coeff", self.aux_coeff, 0.0)
        check_int("TrainConfig", "aux_k", self.aux_k, 1, none_ok=True)
        check_text("TrainConfig", "name", self.name, none_ok=True)
        check_choice("TrainConfig", "init", self.init, INIT_MODES)
        if leaves_folder(self.key):  # the key names the dictionary's folder under out_dir
            raise ConfigError(f"TrainConfig key {self.key!r} would leave its output folder",
                              "use a name of plain path parts without '..', empty parts or a leading '/'")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain mapping (e.g. YAML or an OmegaConf container); ``sae`` may be a mapping."""
        data = known_fields(cls, data, "TrainConfig")
        if isinstance(data.get("sae"), dict):
            data["sae"] = SAEConfig.from_dict(dict(data["sae"]))
        return cls(**data)

    @property
    def effective_remedy(self) -> str:
        if self.remedy != "auto":
            return self.remedy
        return self.sae.default_remedy  # AuxK for TopK, BatchTopK and BatchTopK crosscoders

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        return f"{self.site}/{self.sae.architecture}-{self.sae.d_sae}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """Plain fields; ``sae`` carries its ``architecture`` (what :meth:`from_dict` dispatches on)."""
        return {**dataclasses.asdict(self), "sae": self.sae.to_dict()}


@dataclass(frozen=True)
class RunConfig:
    """The shared activation stream and training loop.

    ``steps``: batches to train on (the source may end earlier). ``normalize``: scale each site's
    activations so ``E||x||^2 = d_in`` (scale estimated on the first batch; folded into the weights
    on save). ``dead_window``: tokens without firing after which a latent counts as dead (also the
    window of the firing-frequency estimate); ``0`` (default) = automatic:
    ``min(1,000,000, DEAD_WINDOW_FRACTION * steps * tokens per step)`` tokens, fixed from the first batch
    (a fixed 1M-token window never closes in a short run such as 200 steps x 2048 tokens, so no latent
    ever counts as dead: AuxK never revives any and the reported dead fraction reads 0). ``resample_every``: steps between resamplings.
    ``autocast``: bf16 autocast on CUDA (ignored on the CPU). ``checkpoint_every``: steps between
    checkpoints in ``checkpoint_dir`` (0: only at the end). ``out_dir``: write one artifact folder
    per dictionary there.
    ``stack``: train the dictionaries that differ only in seed/site (same architecture, shape and
    hyper-parameters; TopK/BatchTopK with AuxK or no remedy) as one stacked module with one fused
    Adam (:mod:`universality.train.stacked_step`); the result equals unstacked training up to
    floating-point rounding. ``compile``: ``torch.compile`` the memory-bound parts of the stacked
    step (needs ``stack``).
    ``log_to``: experiment trackers the trainer also logs its metrics to, any of ``"tensorboard"``
    and ``"wandb"`` (default ``()``: none; :mod:`universality.train.tracking`); ``log_dir``: their
    folder (default ``<out_dir>/logs``, else ``runs``). Neither changes a result.
    """

    steps: int
    normalize: bool = True
    dead_window: int = 0
    resample_every: int = 2_500
    grad_clip: float = 1.0
    autocast: bool = True
    device: str = "cpu"
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    out_dir: str | None = None
    init_rows: int = 4096
    # --- fast paths (issue 7): keep these last, with defaults ---
    stack: bool = False
    compile: bool = False
    # --- experiment tracking (off by default; changes no result) ---
    log_to: tuple[str, ...] = ()
    log_dir: str | None = None

    def __post_init__(self) -> None:
        check_int("RunConfig", "steps", self.steps)
        check_bool("RunConfig", "normalize", self.normalize)
        check_int("RunConfig", "dead_window", self.dead_window, 0)
        check_int("RunConfig", "resample_every", self.resample_every)
        check_number("RunConfig", "grad_clip", self.grad_clip, 0.0)
        check_bool("RunConfig", "autocast", self.autocast)
        check_text("RunConfig", "device", self.device)
        check_int("RunConfig", "seed", self.seed, 0)
        for name in ("checkpoint_dir", "out_dir", "log_dir"):  # paths are kept as strings (JSON-able, hashable)
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            check_text("RunConfig", name, getattr(self, name), none_ok=True)
        check_int("RunConfig", "checkpoint_every", self.checkpoint_every, 0)
        check_int("RunConfig", "init_rows", self.init_rows)
        check_bool("RunConfig", "stack", self.stack)
        check_bool("RunConfig", "compile", self.compile)
        object.__setattr__(self, "log_to", check_log_to(self.log_to))
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ConfigError("checkpoint_every is set but checkpoint_dir is not", "set checkpoint_dir")
        if self.compile and not self.stack:
            raise ConfigError("compile=True compiles the stacked training step, but stack=False", "set stack=True as well")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_dead_window(self, tokens_per_step: int) -> int:
        """The dead-latent window in tokens: ``dead_window``, or when it is ``0`` the smaller of
        :data:`MAX_DEAD_WINDOW` and :data:`DEAD_WINDOW_FRACTION` of the run's tokens (at least one step)."""
        if self.dead_window:
            return self.dead_window
        run_tokens = self.steps * max(int(tokens_per_step), 1)
        return max(min(MAX_DEAD_WINDOW, int(DEAD_WINDOW_FRACTION * run_tokens)), max(int(tokens_per_step), 1))


def register_configs(group: str = "sae") -> None:
    """Register :class:`TrainConfig` and :class:`RunConfig` as structured configs in Hydra's
    ConfigStore (call explicitly; importing this module registers nothing)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group=group, name="train_schema", node=TrainConfig(TopKConfig(768, 24576, k=32)))
    cs.store(group=group, name="run_schema", node=RunConfig(steps=10_000))
