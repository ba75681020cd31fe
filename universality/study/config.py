"""Study configuration: small frozen dataclasses filled from ``configs/study/*.yaml``.

A study is a grid: models (zoo presets trained in place, or hub/local models) x checkpoints x
sites x data (D, or the subset D' inside D) x SAE seeds, and the analyses to run on it. Library
code takes a :class:`StudyConfig`; :func:`study_from_dict` turns the YAML mapping (a plain dict,
e.g. ``OmegaConf.to_container(cfg.study)``) into one and rejects unknown keys and bad values with a
one-line :class:`~universality.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from universality.errors import ConfigError
from universality.sites import Site

__all__ = [
    "ANALYSES",
    "CorpusConfig",
    "SubsetConfig",
    "ModelSpec",
    "HarvestSpec",
    "SAESpec",
    "MatchSpec",
    "StudyConfig",
    "study_from_dict",
    "register_configs",
]

ANALYSES = ("feature_evolution", "architecture_comparison", "subset_generalization", "layer_flow", "moe_experts")


def _int(owner: str, name: str, value: Any, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{owner}.{name} must be an integer >= {low}, got {value!r}", f"set {name} to an integer >= {low}")


def _num(owner: str, name: str, value: Any, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{owner}.{name} must be a number in [{low}, {high}], got {value!r}", f"fix {name}")


@dataclass(frozen=True)
class CorpusConfig:
    """The text D. ``source``: ``shakespeare`` (shipped), a ``.txt``/``.jsonl`` path, or ``hf:<name>``.

    ``planted``: add the planted-positive text family of :mod:`universality.zoo.planted` (a
    synthetic word pattern in ``planted_docs`` extra documents with metadata ``planted=True``), so a
    subset that excludes those documents has a known missing feature.

    ``inject_after_step``: zoo models trained on D see another synthetic pattern only after this
    step (a curriculum, :class:`universality.zoo.InjectSpec`), so the features of that pattern have a
    known birth step for the lineage; the evaluation spans then include the pattern.
    """

    source: str = "shakespeare"
    text_field: str = "text"
    max_docs: int | None = None
    planted: bool = False
    planted_docs: int = 40
    inject_after_step: int | None = None

    def __post_init__(self) -> None:
        if self.inject_after_step is not None:
            _int("corpus", "inject_after_step", self.inject_after_step, 0)
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("corpus.source must be a non-empty string", "use shakespeare, a file path, or hf:<dataset>")
        if self.max_docs is not None:
            _int("corpus", "max_docs", self.max_docs)
        _int("corpus", "planted_docs", self.planted_docs)


@dataclass(frozen=True)
class SubsetConfig:
    """D' inside D. ``kind``: ``fraction`` (stable hash of the document id), ``meta`` (a metadata
    field equals ``value``), ``regex`` (``pattern`` found in the text); ``complement`` inverts it.
    """

    kind: str = "fraction"
    fraction: float = 0.5
    field: str = "family"
    value: str = ""
    pattern: str = ""
    complement: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("fraction", "meta", "regex"):
            raise ConfigError(f"subset.kind {self.kind!r} is not supported", "use fraction, meta or regex")
        _num("subset", "fraction", self.fraction, 0.0, 1.0)
        if self.kind == "regex" and not self.pattern:
            raise ConfigError("subset.kind is regex but subset.pattern is empty", "set subset.pattern")
        if self.kind == "meta" and not (self.field and self.value):
            raise ConfigError("subset.kind is meta but subset.field/value are empty", "set subset.field and subset.value")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: a zoo preset trained in place (``zoo``), or a hub/local model (``path``).

    ``data`` is the text the model is trained on (``D`` or ``D_prime``, zoo models only);
    ``overrides`` change preset fields (e.g. ``{steps: 100}``); ``checkpoints``: ``final``, ``all``,
    or an explicit list of revision names.
    """

    name: str
    zoo: str | None = None
    path: str | None = None
    revision: str | None = None
    data: str = "D"
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoints: Any = "final"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"model name {self.name!r} must be letters, digits, - or _", "rename the model")
        if (self.zoo is None) == (self.path is None):
            raise ConfigError(f"model {self.name!r} needs exactly one of zoo (a preset) or path (hub name or folder)",
                              "set models[].zoo or models[].path")
        if self.data not in ("D", "D_prime"):
            raise ConfigError(f"model {self.name!r}: data must be D or D_prime, got {self.data!r}", "fix models[].data")
        ck = self.checkpoints
        if not (ck in ("final", "all") or (isinstance(ck, (list, tuple)) and ck and all(isinstance(c, str) for c in ck))):
            raise ConfigError(f"model {self.name!r}: checkpoints must be final, all or a list of revision names",
                              "e.g. checkpoints: [step0, step64, step200]")
        object.__setattr__(self, "overrides", dict(self.overrides))
        if isinstance(ck, list):
            object.__setattr__(self, "checkpoints", tuple(ck))


@dataclass(frozen=True)
class HarvestSpec:
    """Tokens harvested per (model, checkpoint, data) for SAE training, and the shared eval spans.

    Documents are read in a stable hashed order, at most ``max_doc_tokens`` tokens of each, so a
    harvest of ``train_tokens`` samples many documents rather than the first few long ones.
    """

    train_tokens: int = 20_000
    context_length: int = 64
    batch_size: int = 16
    eval_spans: int = 96
    span_chars: int = 200
    max_doc_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("train_tokens", "context_length", "batch_size", "eval_spans", "span_chars", "max_doc_tokens"):
            _int("harvest", name, getattr(self, name))


@dataclass(frozen=True)
class SAESpec:
    """The dictionaries trained at every cell; ``seeds`` are the seed copies every figure is compared to."""

    architecture: str = "topk"
    expansion: int = 4
    k: int = 8
    sparsity_coeff: float = 0.0
    steps: int = 600
    batch_size: int = 256
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        _int("sae", "expansion", self.expansion)
        _int("sae", "k", self.k)
        _int("sae", "steps", self.steps)
        _int("sae", "batch_size", self.batch_size)
        _num("sae", "lr", self.lr, 1e-7, 1.0)
        _num("sae", "sparsity_coeff", self.sparsity_coeff, 0.0, 1e3)
        seeds = tuple(self.seeds)
        if len(seeds) < 2 or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"sae.seeds must hold at least 2 distinct integers (the skyline), got {list(seeds)}",
                              "use e.g. seeds: [0, 1, 2]")
        object.__setattr__(self, "seeds", seeds)


@dataclass(frozen=True)
class MatchSpec:
    """Matching settings: thresholds of the shared-fraction sweep, permutations, GW subsample size."""

    thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    n_perm: int = 10
    gw_max: int = 256
    corr_threshold: float = 0.5

    def __post_init__(self) -> None:
        th = tuple(float(t) for t in self.thresholds)
        if not th or any(not 0.0 <= t <= 1.0 for t in th):
            raise ConfigError(f"match.thresholds must be numbers in [0, 1], got {list(self.thresholds)}", "fix match.thresholds")
        object.__setattr__(self, "thresholds", th)
        _int("match", "n_perm", self.n_perm, 0)
        _int("match", "gw_max", self.gw_max, 8)
        _num("match", "corr_threshold", self.corr_threshold, 0.0, 1.0)


@dataclass(frozen=True)
class StudyConfig:
    """One study: what to build, what to compare, and where the results go."""

    name: str
    analyses: tuple[str, ...]
    models: tuple[ModelSpec, ...]
    sites: tuple[str, ...]
    out_dir: str = "runs/${.name}"
    corpus: CorpusConfig = CorpusConfig()
    subset: SubsetConfig = SubsetConfig()
    tokenizer_vocab: int = 512
    harvest: HarvestSpec = HarvestSpec()
    sae: SAESpec = SAESpec()
    match: MatchSpec = MatchSpec()
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("study.name must be a non-empty string", "name the study")
        unknown = [a for a in self.analyses if a not in ANALYSES]
        if unknown or not self.analyses:
            raise ConfigError(f"unknown or missing analyses {unknown or '[]'}", f"use some of {', '.join(ANALYSES)}")
        if not self.models:
            raise ConfigError("study.models is empty", "list at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names repeat: {names}", "give every model a distinct name")
        for s in self.sites:
            Site.parse(s)
        if not self.sites:
            raise ConfigError("study.sites is empty", "list at least one site, e.g. blocks.1.hook_resid_post")
        _int("study", "tokenizer_vocab", self.tokenizer_vocab, 257)
        if not isinstance(self.device, str) or not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"study.device must be cpu or cuda[:N], got {self.device!r}", "fix study.device")

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"study {self.name!r} has no model {name!r}", f"use one of {[m.name for m in self.models]}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_NESTED = {"corpus": CorpusConfig, "subset": SubsetConfig, "harvest": HarvestSpec, "sae": SAESpec, "match": MatchSpec}


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}", f"write {where} as key: value pairs")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}", f"valid keys are {sorted(names)}")
    try:
        return cls(**dict(data))
    except TypeError as exc:
        raise ConfigError(f"bad {where}: {exc}", f"valid keys are {sorted(names)}") from None


def study_from_dict(data: Mapping[str, Any]) -> StudyConfig:
    """Validate a plain mapping (from YAML) into a :class:`StudyConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a study config must be a mapping, got {type(data).__name__}", "check configs/study/*.yaml")
    data = dict(data)
    for key, cls in _NESTED.items():
        if key in data:
            data[key] = _build(cls, data[key], f"study.{key}")
    if "models" in data:
        if not isinstance(data["models"], (list, tuple)):
            raise ConfigError("study.models must be a list", "write models as a YAML list")
        data["models"] = tuple(_build(ModelSpec, m, f"study.models[{i}]") for i, m in enumerate(data["models"]))
    for key in ("analyses", "sites"):
        if key in data:
            if isinstance(data[key], str) or not isinstance(data[key], (list, tuple)):
                raise ConfigError(f"study.{key} must be a list", f"write {key} as a YAML list")
            data[key] = tuple(data[key])
    cfg = _build(StudyConfig, data, "study")
    for token in ("${.name}", "${name}"):
        if token in cfg.out_dir:
            cfg = dataclasses.replace(cfg, out_dir=cfg.out_dir.replace(token, cfg.name))
    return cfg


def _thaw(node: Any) -> None:
    """Clear the read-only flag OmegaConf sets on frozen dataclasses, so YAML and overrides can fill it."""
    from omegaconf import DictConfig, ListConfig

    node._set_flag("readonly", None)
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                _thaw(child)


def register_configs() -> None:
    """Put the study schema into Hydra's ConfigStore as ``study/study_schema``.

    Study YAML files start with ``defaults: [study_schema, _self_]``, so every key has its type and
    default and overrides such as ``study.corpus.max_docs=100`` work without ``+``.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.structured(StudyConfig)
    _thaw(node)
    ConfigStore.instance().store(group="study", name="study_schema", node=node)
