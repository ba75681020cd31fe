"""The config of one zoo language model (a frozen dataclass), its presets and the injection spec.

A :class:`ZooModelConfig` names the architecture family and its sizes, the tokenizer size, the
training schedule (AdamW, linear warm-up then cosine decay), the seed and the checkpoint steps.
Presets live in ``configs/zoo/<name>.yaml`` (one flat mapping of these fields) and are read with
:func:`load_preset`; :func:`register_configs` puts the dataclass into Hydra's ConfigStore.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from universality.checks import known_fields
from universality.errors import ConfigError
from universality.resources import config_dir
from universality.zoo.schedule import checkpoint_schedule

__all__ = ["ZooModelConfig", "InjectSpec", "FAMILIES", "from_dict", "load_preset", "preset_names", "register_configs"]

#: Families the zoo can train (the ``model_type`` of the saved HF config).
FAMILIES = ("gpt2", "gpt_neox", "mamba", "olmoe")
_ATTENTION = ("gpt2", "gpt_neox", "olmoe")
_MOE = ("olmoe",)


def _positive_int(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"{owner}.{name} must be {kind} integer, got {value!r}", f"set {name} to an integer >= {low}")


def _finite(owner: str, name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{owner}.{name} must be a number in {bracket}{low}, {high}], got {value!r}", f"fix {name}")


@dataclass(frozen=True)
class ZooModelConfig:
    """One small language model and how to train it.

    Architecture: ``family`` (``gpt2``: GPT2LMHeadModel, sequential residual, tied embeddings;
    ``gpt_neox``: Pythia-like GPTNeoXForCausalLM, parallel residual, rotary on 25% of each head,
    untied unembedding; ``mamba``: MambaForCausalLM; ``olmoe``: OlmoeForCausalLM, a top-``k`` MoE
    of ``n_experts`` SwiGLU experts in every layer), ``d_model``, ``n_layers``, ``n_heads``
    (attention families), ``d_mlp`` (MLP width; per expert for MoE; default ``4 * d_model``, and
    ``2 * d_model`` per expert for MoE), ``n_experts``/``k`` (MoE only), ``d_state`` (Mamba SSM
    state size; the Mamba inner width is ``2 * d_model``).

    Data: ``vocab_size`` of the byte-level BPE trained when no tokenizer is given (the model's
    vocabulary is the tokenizer's length), ``context_length`` tokens per packed row,
    ``eval_contexts`` rows held out of training for the per-checkpoint eval loss.

    Optimisation: ``steps`` AdamW updates (betas 0.9/0.95) of ``batch_size`` rows, peak ``lr``
    reached linearly over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at the last
    step; ``weight_decay`` on matrices only; gradient-norm clipping at ``grad_clip`` (0 = off);
    ``aux_loss_coef`` weights the MoE load-balancing loss (Switch Transformer, Fedus et al. 2021).
    No dropout anywhere, so training is a deterministic function of ``seed`` on the CPU.

    Checkpoints: ``checkpoint_steps`` lists them explicitly; when empty they follow Pythia's
    pattern (:func:`universality.zoo.schedule.checkpoint_schedule`): 0 and the powers of two
    below ``checkpoint_every``, then every ``checkpoint_every`` steps, and always the final step.
    ``checkpoint_every`` = 0 means ``max(1, steps // 4)``.
    """

    family: str
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 0
    n_experts: int = 0
    k: int = 0
    d_state: int = 16
    vocab_size: int = 1024
    context_length: int = 64
    steps: int = 200
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_loss_coef: float = 0.01
    seed: int = 0
    checkpoint_steps: tuple[int, ...] = ()
    checkpoint_every: int = 0
    eval_contexts: int = 8
    name: str = ""

    def __post_init__(self) -> None:
        own = "ZooModelConfig"
        if self.family not in FAMILIES:
            raise ConfigError(f"{own}.family {self.family!r} is not supported", f"use one of {', '.join(FAMILIES)}")
        for field in ("d_model", "n_layers", "n_heads", "d_state", "context_length", "steps", "batch_size"):
            _positive_int(own, field, getattr(self, field))
        for field in ("d_mlp", "n_experts", "k", "warmup_steps", "seed", "checkpoint_every", "eval_contexts"):
            _positive_int(own, field, getattr(self, field), allow_zero=True)
        _positive_int(own, "vocab_size", self.vocab_size)
        if self.vocab_size < 257:
            raise ConfigError(f"{own}.vocab_size must be >= 257 (256 bytes + <|endoftext|>), got {self.vocab_size}", "raise vocab_size")
        if self.family in _ATTENTION and self.d_model % self.n_heads:
            raise ConfigError(f"{own}.d_model={self.d_model} is not divisible by n_heads={self.n_heads}", "pick n_heads dividing d_model")
        if self.family in _MOE:
            if self.n_experts < 2 or not 1 <= self.k <= self.n_experts:
                raise ConfigError(
                    f"{own}: an MoE needs n_experts >= 2 and 1 <= k <= n_experts, got n_experts={self.n_experts}, k={self.k}",
                    "set e.g. n_experts=4, k=2",
                )
        elif self.n_experts or self.k:
            raise ConfigError(f"{own}: n_experts/k are for MoE families only, family is {self.family!r}", "drop n_experts and k, or use family='olmoe'")
        if self.warmup_steps > self.steps:
            raise ConfigError(f"{own}.warmup_steps={self.warmup_steps} exceeds steps={self.steps}", "shorten the warm-up")
        _finite(own, "lr", self.lr, 0.0, 10.0, low_open=True)
        _finite(own, "min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _finite(own, "weight_decay", self.weight_decay, 0.0, 10.0)
        _finite(own, "grad_clip", self.grad_clip, 0.0, 1e6)
        _finite(own, "aux_loss_coef", self.aux_loss_coef, 0.0, 10.0)
        steps = self.checkpoint_steps
        if not isinstance(steps, tuple) or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
            raise ConfigError(f"{own}.checkpoint_steps must be a tuple of integers, got {steps!r}", "pass e.g. (0, 10, 100)")
        if steps:
            if list(steps) != sorted(set(steps)) or steps[0] < 0 or steps[-1] != self.steps:
                raise ConfigError(
                    f"{own}.checkpoint_steps must be strictly increasing, >= 0 and end at steps={self.steps}, got {list(steps)}",
                    f"sort them, drop duplicates and end with {self.steps}",
                )
        if not isinstance(self.name, str):
            raise ConfigError(f"{own}.name must be a string, got {self.name!r}", "pass a short label")

    @property
    def mlp_width(self) -> int:
        """``d_mlp``, or its default (``4 * d_model``; ``2 * d_model`` per MoE expert)."""
        if self.d_mlp:
            return self.d_mlp
        return 2 * self.d_model if self.family in _MOE else 4 * self.d_model

    @property
    def checkpoints(self) -> tuple[int, ...]:
        """The steps at which a ``step{N}/`` folder is written (always 0 ... ``steps``)."""
        if self.checkpoint_steps:
            return self.checkpoint_steps
        return checkpoint_schedule(self.steps, self.checkpoint_every or max(1, self.steps // 4))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["checkpoint_steps"] = list(self.checkpoint_steps)
        return out

    def replace(self, **changes: Any) -> ZooModelConfig:
        return from_dict({**self.to_dict(), **changes})


def from_dict(data: Mapping[str, Any]) -> ZooModelConfig:
    """Build a :class:`ZooModelConfig` from a plain mapping (YAML, JSON, a Hydra ``DictConfig``).

    Unknown keys and wrong types raise :class:`~universality.errors.ConfigError`; lists become tuples.
    """
    if hasattr(data, "_content"):  # an OmegaConf DictConfig
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, Mapping):
        raise ConfigError(f"a zoo config must be a mapping, got {type(data).__name__}", "pass a dict of ZooModelConfig fields")
    known_fields(ZooModelConfig, data, "ZooModelConfig")
    if "family" not in data:
        raise ConfigError("a zoo config needs a 'family'", f"add family: one of {', '.join(FAMILIES)}")
    values = dict(data)
    steps = values.get("checkpoint_steps", ())
    if isinstance(steps, Sequence) and not isinstance(steps, str):
        values["checkpoint_steps"] = tuple(steps)
    for name, typ in (("lr", float), ("min_lr_ratio", float), ("weight_decay", float), ("grad_clip", float), ("aux_loss_coef", float)):
        if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
            values[name] = typ(values[name])
        elif isinstance(values.get(name), str):  # YAML reads "3e-3" as a string
            try:
                values[name] = float(values[name])
            except ValueError:
                raise ConfigError(f"ZooModelConfig.{name} must be a number, got {values[name]!r}", f"fix {name}") from None
    return ZooModelConfig(**values)


def _configs_dir() -> Path:
    """The zoo preset folder: ``zoo/`` in :func:`universality.resources.config_dir` (checkout or wheel)."""
    return config_dir() / "zoo"


def preset_names() -> tuple[str, ...]:
    """Names of the presets in ``configs/zoo/`` (``tiny_gpt2``, ``tiny_mamba``, ...)."""
    folder = _configs_dir()
    return tuple(sorted(p.stem for p in folder.glob("*.yaml"))) if folder.is_dir() else ()


def load_preset(name_or_path: str | os.PathLike, **overrides: Any) -> ZooModelConfig:
    """Read ``configs/zoo/<name>.yaml`` (or a YAML path) into a config, with optional overrides."""
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = _configs_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"zoo preset {str(name_or_path)!r} not found at {path}", f"use one of {', '.join(preset_names()) or '(none)'} or a YAML path")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a mapping", "write one 'field: value' line per ZooModelConfig field")
    return from_dict({**data, **overrides})


def register_configs(group: str = "zoo") -> None:
    """Register :class:`ZooModelConfig` as a structured config in Hydra's ConfigStore (call explicitly)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=group, name="zoo_model_schema", node=ZooModelConfig(family="gpt2"))


@dataclass(frozen=True)
class InjectSpec:
    """A curriculum: ``texts`` enter training only at updates after ``after_step``.

    From update ``after_step + 1`` on (i.e. strictly after the ``step{after_step}`` checkpoint), the
    last ``max(1, round(fraction * batch_size))`` rows of every batch are replaced by packed rows of
    ``texts`` (cycled in a fixed order), so checkpoints up to ``after_step`` have never seen them.
    """

    after_step: int
    texts: tuple[str, ...]
    fraction: float = 0.25

    def __post_init__(self) -> None:
        _positive_int("InjectSpec", "after_step", self.after_step, allow_zero=True)
        if not isinstance(self.texts, tuple) or not self.texts or not all(isinstance(t, str) and t for t in self.texts):
            raise ConfigError("InjectSpec.texts must be a non-empty tuple of non-empty strings", "pass the texts to inject")
        _finite("InjectSpec", "fraction", self.fraction, 0.0, 1.0, low_open=True)

    def rows(self, batch_size: int) -> int:
        return min(batch_size, max(1, round(self.fraction * batch_size)))

    def to_dict(self) -> dict[str, Any]:
        return {"after_step": self.after_step, "fraction": self.fraction, "n_texts": len(self.texts)}

    @classmethod
    def coerce(cls, value: InjectSpec | Mapping[str, Any] | None) -> InjectSpec | None:
        if value is None or isinstance(value, InjectSpec):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"inject must be a mapping or InjectSpec, got {type(value).__name__}", 'pass {"after_step": S, "texts": [...]}')
        unknown = sorted(set(value) - {"after_step", "texts", "fraction"})
        if unknown or "after_step" not in value or "texts" not in value:
            raise ConfigError(f"inject has keys {sorted(value)}", "use after_step, texts and optionally fraction")
        texts = value["texts"]
        texts = (texts,) if isinstance(texts, str) else tuple(texts)
        return cls(after_step=value["after_step"], texts=texts, fraction=float(value.get("fraction", 0.25)))
