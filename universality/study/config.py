"""Study configuration: small frozen dataclasses filled from ``configs/study/*.yaml``.

A study is a grid: models (zoo presets trained in place, or hub/local models) x checkpoints x
sites x data (D, or the subset D' inside D) x SAE seeds, and the analyses to run on it. Library
code takes a :class:`StudyConfig`; :func:`study_from_dict` turns the YAML mapping (a plain dict,
e.g. ``OmegaConf.to_container(cfg.study)``) into one and rejects unknown keys and bad values with a
one-line :class:`~universality.errors.ConfigError`; :func:`compose_study` does the same for
``configs/config.yaml`` plus Hydra overrides (Hydra's own errors included) without running anything.

Paths: ``out_dir`` may be anywhere; every name that becomes a path component below it (the study
name, model names, revisions and checkpoint names, zoo preset names) is checked so it cannot leave
its folder, and :func:`inside` / :meth:`StudyConfig.path` resolve a path and refuse one that would.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from universality import resources
from analysis.studies import ANALYSES as _ANALYSIS_REGISTRY
from universality.checks import check_bool, check_int, check_number, leaves_folder
from universality.errors import ConfigError, DataError, ModelLoadError, UnknownSiteError
from universality.sae.config import (
    BUILTIN_OPTIONS,
    BatchTopKOptions,
    GatedOptions,
    JumpReLUOptions,
    ReLUOptions,
    TopKOptions,
    sae_config,
)
from universality.sites import Site, as_site, describe_sites
from universality.zoo.config import preset_names

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
    "compose_study",
    "check_inputs",
    "hydra_problem",
    "inside",
    "check_name",
    "check_revision",
    "MODEL_SEED_STEP",
    "seed_copy_name",
    "register_configs",
    "CONFIG_DIR",
]

#: The Hydra config folder of ``python -m universality`` (``configs/`` at the repository root, shipped
#: in the wheel as ``universality/configs``): see :func:`universality.resources.config_dir`.
CONFIG_DIR = resources.config_dir()

#: Names of the registered analyses (:data:`analysis.studies.ANALYSES`, the one registry).
ANALYSES = tuple(_ANALYSIS_REGISTRY)


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def check_name(what: str, value: Any) -> str:
    """A name that becomes one path component: letters, digits, ``_``, ``-``, ``.``; not starting with ``.``."""
    if not isinstance(value, str) or not value or value[0] == "." or not set(value) <= _NAME_CHARS or len(value) > 128:
        raise ConfigError(f"{what} {value!r} must be 1-128 letters, digits, _, - or . (not starting with .)",
                          f"rename it, e.g. {what.split('.')[-1]}: my_study")
    return value


def check_revision(what: str, value: Any) -> str:
    """A revision or checkpoint name (``step1000``, ``main``, hub refs such as ``refs/pr/1``).

    It may contain ``/`` (hub refs) but never an absolute path, a backslash, an empty, ``.`` or ``..``
    component, so a revision joined to a model folder stays inside that folder.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}", "use a revision name such as step1000 or main")
    if leaves_folder(value):
        raise ConfigError(f"{what} {value!r} would leave the model folder", "use a plain revision name such as step1000")
    return value


def inside(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """``root/parts...`` resolved, or :class:`ConfigError` when it would leave ``root``.

    Relative parts are joined to ``root``; ``..`` components, absolute parts and symlinks that lead
    outside ``root`` are refused. ``root`` itself may be anywhere.
    """
    base = Path(root).resolve()
    for p in parts:
        if not isinstance(p, (str, os.PathLike)) or not os.fspath(p):
            raise ConfigError(f"path part {p!r} under {root} is empty or not a string", "give a relative file or folder name")
        if Path(p).is_absolute():
            raise ConfigError(f"path {os.fspath(p)!r} is absolute but must lie inside {root}",
                              "give a path relative to the output folder")
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise ConfigError(f"path {os.path.join(*map(os.fspath, parts))!r} leaves the output folder {root}",
                          "remove '..' (and links out of the folder) from the path")
    return target


def _str(owner: str, name: str, value: Any, empty_ok: bool = True) -> None:
    if not isinstance(value, str) or (not empty_ok and not value):
        raise ConfigError(f"{owner}.{name} must be a {'' if empty_ok else 'non-empty '}string, got {value!r}", f"fix {name}")


def _seq(owner: str, name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{owner}.{name} must be a list, got {value!r}", f"write {name} as a YAML list")
    return tuple(value)


def _site_list(where: str, value: Any) -> tuple[str, ...]:
    """A non-empty list of valid, distinct site names."""
    sites = _seq(where.split(".")[0], where.split(".", 1)[-1], value)
    for s in sites:
        if not isinstance(s, str):
            raise ConfigError(f"{where} holds {s!r}, not a site name", "list names like blocks.1.hook_resid_post")
        try:
            Site.parse(s)
        except UnknownSiteError as exc:
            raise ConfigError(f"{where}: {exc.problem}", exc.fix) from None
    if not sites:
        raise ConfigError(f"{where} is empty", "list at least one site, e.g. blocks.1.hook_resid_post")
    if len(set(sites)) != len(sites):
        raise ConfigError(f"{where} repeats a site: {list(sites)}", "list each site once")
    return tuple(sites)


def _check_zoo(model: str, zoo: Any) -> None:
    """A zoo preset name (``configs/zoo/<name>.yaml``) or a path to such a YAML file."""
    if not isinstance(zoo, str) or not zoo:
        raise ConfigError(f"model {model!r}: zoo must be a preset name, got {zoo!r}", "use e.g. zoo: tiny_pythia")
    if zoo.endswith((".yaml", ".yml")):
        if not Path(zoo).expanduser().is_file():
            raise ConfigError(f"model {model!r}: zoo preset file {zoo!r} does not exist", "check the path")
        return
    presets = preset_names()
    if zoo not in presets:
        raise ConfigError(f"model {model!r}: unknown zoo preset {zoo!r}", f"use one of {', '.join(presets)} or a YAML path")


@dataclass(frozen=True)
class CorpusConfig:
    """The text D. ``source``: ``shakespeare`` (shipped), a ``.txt``/``.jsonl`` path, or ``hf:<name>``.

    ``planted``: add the planted-positive text family of :mod:`universality.zoo.planted` (a
    synthetic word pattern in ``planted_docs`` extra documents with metadata ``planted=True``), so a
    subset that excludes those documents has a known missing feature.

    ``inject_after_step``: zoo models trained on D see a passage of common words in a fixed order
    (:func:`universality.zoo.word_passage`) only after this step (a curriculum,
    :class:`universality.zoo.InjectSpec`), so features of that passage beyond its words have a known
    birth step for the lineage; the evaluation spans then include the passage.

    ``ioi``: add ``ioi_docs`` documents of templated indirect-object-identification sentences
    (:mod:`universality.zoo.ioi`, metadata ``ioi=True``) to D, so zoo models learn the task the
    ``ioi_patching`` analysis patches; off by default, so other studies' corpora stay as they were.
    """

    source: str = "shakespeare"
    text_field: str = "text"
    max_docs: int | None = None
    planted: bool = False
    planted_docs: int = 40
    inject_after_step: int | None = None
    ioi: bool = False
    ioi_docs: int = 400

    def __post_init__(self) -> None:
        check_bool("corpus", "ioi", self.ioi)
        check_int("corpus", "ioi_docs", self.ioi_docs)
        if self.inject_after_step is not None:
            check_int("corpus", "inject_after_step", self.inject_after_step, 0)
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("corpus.source must be a non-empty string", "use shakespeare, a file path, or hf:<dataset>")
        _str("corpus", "text_field", self.text_field, empty_ok=False)
        if self.max_docs is not None:
            check_int("corpus", "max_docs", self.max_docs)
        check_bool("corpus", "planted", self.planted)
        check_int("corpus", "planted_docs", self.planted_docs)


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
        if not isinstance(self.kind, str) or self.kind not in ("fraction", "meta", "regex"):
            raise ConfigError(f"subset.kind {self.kind!r} is not supported", "use fraction, meta or regex")
        check_number("subset", "fraction", self.fraction, 0.0, 1.0)
        if self.kind == "fraction" and self.fraction == 0:
            raise ConfigError("subset.fraction is 0, so D' would be empty", "use a fraction in (0, 1]")
        for name in ("field", "value", "pattern"):
            _str("subset", name, getattr(self, name))
        check_bool("subset", "complement", self.complement)
        check_int("subset", "seed", self.seed, 0)
        if self.kind == "regex":
            if not self.pattern:
                raise ConfigError("subset.kind is regex but subset.pattern is empty", "set subset.pattern")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ConfigError(f"subset.pattern {self.pattern!r} is not a regular expression ({exc})",
                                  "fix the pattern (Python re syntax)") from None
        if self.kind == "meta" and not (self.field and self.value):
            raise ConfigError("subset.kind is meta but subset.field/value are empty", "set subset.field and subset.value")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: a zoo preset trained in place (``zoo``), or a hub/local model (``path``).

    ``data`` is the text the model is trained on (``D`` or ``D_prime``, zoo models only);
    ``overrides`` change preset fields (e.g. ``{steps: 100}``; on the command line
    ``+study.models.0.overrides.steps=40``, ``+`` because the key is new to that entry); ``checkpoints``: ``final``, ``all``, or an explicit list
    of revision names. ``sites``: this model's own site list (default: the study's ``sites``), for
    models that do not share every site (a Mamba has ``hook_mixer_out`` where a Transformer has
    ``hook_mlp_out``); every listed site must exist in the model, or the study stops with the
    model's sites in the message. The report lists each model's sites.
    """

    name: str
    zoo: str | None = None
    path: str | None = None
    revision: str | None = None
    data: str = "D"
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoints: Any = "final"
    sites: Any = None

    def __post_init__(self) -> None:
        if (not isinstance(self.name, str) or not self.name.isascii()
                or not self.name.replace("_", "").replace("-", "").isalnum()):
            raise ConfigError(f"model name {self.name!r} must be letters, digits, - or _", "rename the model")
        if (self.zoo is None) == (self.path is None):
            raise ConfigError(f"model {self.name!r} needs exactly one of zoo (a preset) or path (hub name or folder)",
                              "set models[].zoo or models[].path")
        if self.zoo is not None:
            _check_zoo(self.name, self.zoo)
        if self.path is not None:
            _str(f"models[{self.name}]", "path", self.path, empty_ok=False)
        if self.revision is not None:
            check_revision(f"model {self.name!r} revision", self.revision)
        if not isinstance(self.data, str) or self.data not in ("D", "D_prime"):
            raise ConfigError(f"model {self.name!r}: data must be D or D_prime, got {self.data!r}", "fix models[].data")
        if not isinstance(self.overrides, Mapping) or not all(isinstance(k, str) for k in self.overrides):
            raise ConfigError(f"model {self.name!r}: overrides must be a mapping of preset fields, got {self.overrides!r}",
                              "write overrides as {field: value}, e.g. {steps: 100}")
        if "name" in self.overrides:
            check_name(f"model {self.name!r} overrides.name", self.overrides["name"])
        ck = self.checkpoints
        if not (ck in ("final", "all") or (isinstance(ck, (list, tuple)) and ck and all(isinstance(c, str) for c in ck))):
            raise ConfigError(f"model {self.name!r}: checkpoints must be final, all or a list of revision names",
                              "e.g. checkpoints: [step0, step64, step200]")
        if isinstance(ck, (list, tuple)):
            for c in ck:
                check_revision(f"model {self.name!r} checkpoint", c)
        if self.sites is not None:
            object.__setattr__(self, "sites", _site_list(f"models[{self.name}].sites", self.sites))
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
            check_int("harvest", name, getattr(self, name))


@dataclass(frozen=True)
class SAESpec:
    """The dictionaries trained at every cell; ``seeds`` are the seed copies every figure is compared to.

    ``architecture`` picks one of the per-architecture blocks below (``topk``, ``batchtopk``,
    ``relu``, ``jumprelu``, ``gated``, each the options dataclass of :mod:`universality.sae.config`
    with that architecture's fields only); the other blocks are ignored and do not enter cache keys,
    so ``study.sae.architecture=relu`` switches a preset over with the relu block's defaults. A
    field a block does not have (``study.sae.relu.k``) is a one-line error at validation time.

    Training policy, with its defaults: ``warmup_steps`` of linear learning-rate warm-up (at most a
    tenth of ``steps``); ``sparsity_warmup_steps`` of linear penalty warm-up (penalty architectures);
    ``dead_window`` rows without firing before a latent counts as dead (``None``: the larger of
    1,000 and 20 batches); ``init_rows`` rows for the geometric-median initialisation of ``b_dec``
    (at most the store's rows); ``shuffle_buffer`` rows in the reader's shuffle buffer (``None``:
    8 batches).

    ``expansions``: extra widths (expansion factors, ascending) at which the ``feature_splitting`` analysis
    trains the same dictionaries (one stage per width, cached like the main one). Empty by default; it
    changes no other stage, so it is left out of :meth:`selected` and, when empty, out of the study's
    config hash (folders made before it existed stay valid).
    """

    architecture: str = "topk"
    expansion: int = 4
    steps: int = 600
    batch_size: int = 256
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    warmup_steps: int = 50
    sparsity_warmup_steps: int = 0
    dead_window: int | None = None
    init_rows: int = 4096
    shuffle_buffer: int | None = None
    expansions: tuple[int, ...] = ()
    topk: TopKOptions = TopKOptions()
    batchtopk: BatchTopKOptions = BatchTopKOptions()
    relu: ReLUOptions = ReLUOptions()
    jumprelu: JumpReLUOptions = JumpReLUOptions()
    gated: GatedOptions = GatedOptions()

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or self.architecture not in BUILTIN_OPTIONS:
            raise ConfigError(f"sae.architecture {self.architecture!r} is not a registered SAE architecture with a study block",
                              f"use one of {', '.join(BUILTIN_OPTIONS)}")
        for name in ("expansion", "steps", "batch_size", "init_rows"):
            check_int("sae", name, getattr(self, name))
        for name in ("warmup_steps", "sparsity_warmup_steps"):
            check_int("sae", name, getattr(self, name), 0)
        for name in ("dead_window", "shuffle_buffer"):
            check_int("sae", name, getattr(self, name), none_ok=True)
        check_number("sae", "lr", self.lr, 1e-7, 1.0)
        seeds = _seq("sae", "seeds", self.seeds)
        if (len(seeds) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
                or len(set(seeds)) != len(seeds)):
            raise ConfigError(f"sae.seeds must hold at least 2 distinct integers >= 0 (the skyline), got {list(seeds)}",
                              "use e.g. seeds: [0, 1, 2]")
        object.__setattr__(self, "seeds", seeds)
        widths = _seq("sae", "expansions", self.expansions)
        if (not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in widths)
                or list(widths) != sorted(set(widths))):
            raise ConfigError(f"sae.expansions must be distinct integers >= 1 in ascending order, got {list(widths)}",
                              "use e.g. expansions: [2, 4, 8, 16]")
        object.__setattr__(self, "expansions", widths)
        for arch, cls in BUILTIN_OPTIONS.items():
            if not isinstance(getattr(self, arch), cls):
                raise ConfigError(f"study.sae.{arch} must be a {cls.__name__}", "build the study with study_from_dict")

    @property
    def options(self) -> Any:
        """The options block of the selected architecture."""
        return getattr(self, self.architecture)

    def sae_config(self, d_in: int) -> Any:
        """The :class:`~universality.sae.config.SAEConfig` of a dictionary over ``d_in``-wide activations."""
        return sae_config(self.architecture, d_in, self.expansion * d_in, **dataclasses.asdict(self.options))

    def selected(self) -> dict[str, Any]:
        """The fields that matter: the shared ones and the selected architecture's block (cache keys, reports)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in BUILTIN_OPTIONS and f.name != "expansions"}
        out[self.architecture] = dataclasses.asdict(self.options)
        out["seeds"] = list(self.seeds)
        return out

    def describe(self) -> str:
        """One phrase for reports: ``topk (k=8), 4x expansion``."""
        opts = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.options).items())
        return f"{self.architecture} ({opts}), {self.expansion}x expansion"

    def at_expansion(self, expansion: int) -> SAESpec:
        """This spec with ``expansion`` replaced (the dictionaries of one width of ``expansions``)."""
        return dataclasses.replace(self, expansion=int(expansion))

    def effective_warmup(self) -> int:
        return min(self.warmup_steps, self.steps // 10)

    def effective_dead_window(self) -> int:
        return self.dead_window if self.dead_window is not None else max(1000, 20 * self.batch_size)

    def effective_shuffle_buffer(self) -> int:
        return self.shuffle_buffer if self.shuffle_buffer is not None else 8 * self.batch_size


@dataclass(frozen=True)
class MatchSpec:
    """Matching settings: thresholds of the shared-fraction sweep, permutations, GW subsample size."""

    thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    n_perm: int = 49
    gw_max: int = 256
    corr_threshold: float = 0.5

    def __post_init__(self) -> None:
        raw = _seq("match", "thresholds", self.thresholds)
        if not raw or any(not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 <= t <= 1.0 for t in raw):
            raise ConfigError(f"match.thresholds must be numbers in [0, 1], got {list(raw)}", "fix match.thresholds")
        object.__setattr__(self, "thresholds", tuple(float(t) for t in raw))
        check_int("match", "n_perm", self.n_perm, 0)
        check_int("match", "gw_max", self.gw_max, 8)
        check_number("match", "corr_threshold", self.corr_threshold, 0.0, 1.0)


#: A model-seed copy is trained with its original's model seed plus this (see :meth:`StudyConfig.seed_copy`).
MODEL_SEED_STEP = 1


def seed_copy_name(name: str, seed: int) -> str:
    """Name of the model-seed copy of model ``name`` trained with model seed ``seed``."""
    return f"{name}-modelseed{seed}"


@dataclass(frozen=True)
class StudyConfig:
    """One study: what to build, what to compare, and where the results go.

    ``model_seed_skyline``: also train a *model-seed copy* of every zoo model the analyses compare
    (the same preset, overrides and data, model seed + :data:`MODEL_SEED_STEP`; see
    :meth:`seed_copy`), so architecture and subset comparisons report the model-seed skyline (SAEs
    on two models pre-trained with different seeds, Wang et al. 2024) next to the SAE-seed skyline
    (two SAE seeds on one model). Off by default: each copy is one more model, harvest and set of SAEs.

    ``cards``: write ``cards.html`` next to the report: feature cards, pair cards and lineage strips
    behind each analysis's figures, linked from its findings (:mod:`analysis.studies.cards`).
    """

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
    model_seed_skyline: bool = False
    cards: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("study.name must be a non-empty string", "name the study")
        check_name("study.name", self.name)
        if not isinstance(self.out_dir, (str, os.PathLike)) or not os.fspath(self.out_dir) or "\x00" in os.fspath(self.out_dir):
            raise ConfigError(f"study.out_dir must be a non-empty path, got {self.out_dir!r}", "set study.out_dir=runs/<name>")
        analyses = _seq("study", "analyses", self.analyses)
        unknown = [a for a in analyses if not isinstance(a, str) or a not in ANALYSES]
        if unknown or not analyses:
            raise ConfigError(f"unknown or missing analyses {unknown or '[]'}", f"use some of {', '.join(ANALYSES)}")
        models = _seq("study", "models", self.models)
        if not models:
            raise ConfigError("study.models is empty", "list at least one model")
        if not all(isinstance(m, ModelSpec) for m in models):
            raise ConfigError("study.models must hold ModelSpec entries", "build the study with study_from_dict")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names repeat: {names}", "give every model a distinct name")
        sites = _site_list("study.sites", self.sites)
        for key, cls in (("corpus", CorpusConfig), ("subset", SubsetConfig), ("harvest", HarvestSpec),
                         ("sae", SAESpec), ("match", MatchSpec)):
            if not isinstance(getattr(self, key), cls):
                raise ConfigError(f"study.{key} must be a {cls.__name__}", "build the study with study_from_dict")
        check_int("study", "tokenizer_vocab", self.tokenizer_vocab, 257)
        check_int("study", "seed", self.seed, 0)
        if not isinstance(self.device, str) or not (self.device in ("cpu", "cuda") or
                                                    (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ConfigError(f"study.device must be cpu or cuda[:N], got {self.device!r}", "fix study.device")
        for key, value in (("analyses", analyses), ("models", models), ("sites", sites)):
            object.__setattr__(self, key, value)
        if "feature_splitting" in analyses and len(self.sae.expansions) < 2:
            raise ConfigError(f"feature_splitting needs at least two widths in study.sae.expansions, got {list(self.sae.expansions)}",
                              "set e.g. study.sae.expansions=[2,4,8,16]")
        if "ioi_patching" in analyses and not self.corpus.ioi:
            raise ConfigError("ioi_patching needs the IOI text family in the corpus (study.corpus.ioi is false)",
                              "set study.corpus.ioi=true so the zoo models learn the task")
        check_bool("study", "model_seed_skyline", self.model_seed_skyline)
        check_bool("study", "cards", self.cards)
        if self.model_seed_skyline:
            self._check_seed_copies()

    def _check_seed_copies(self) -> None:
        zoo = [m for m in self.models if m.zoo is not None]
        if not zoo:
            raise ConfigError("study.model_seed_skyline is on but no model is a zoo model, so no seed copy can be trained",
                              "set study.model_seed_skyline=false (hub models have no seed copies here)")
        names = {m.name for m in self.models}
        for m in zoo:
            copy = self.seed_copy(m.name)
            if copy is not None and copy.name in names:
                raise ConfigError(f"model name {copy.name!r} is taken, but it is the name of the model-seed copy of {m.name!r}",
                                  f"rename model {copy.name!r}, or set study.model_seed_skyline=false")

    def seed_copy(self, name: str) -> ModelSpec | None:
        """The model-seed copy of model ``name``, or ``None`` (``model_seed_skyline`` off, or not a zoo model).

        The copy is zoo model ``name`` with its model seed (``overrides.seed``, else ``study.seed``)
        plus :data:`MODEL_SEED_STEP`: the same preset, overrides, data and sites, so it differs in its
        initial weights and batch order only; its name is :func:`seed_copy_name`, and only its final
        checkpoint is read. :meth:`model` resolves that name too.
        """
        if not self.model_seed_skyline:
            return None
        spec = next((m for m in self.models if m.name == name), None)
        if spec is None or spec.zoo is None:
            return None
        base = spec.overrides.get("seed", self.seed)
        if not isinstance(base, int) or isinstance(base, bool) or base < 0:
            raise ConfigError(f"model {name!r}: overrides.seed must be an integer >= 0, got {base!r}", "fix overrides.seed")
        seed = base + MODEL_SEED_STEP
        overrides = {k: v for k, v in spec.overrides.items() if k != "name"}
        overrides["seed"] = seed
        return dataclasses.replace(spec, name=seed_copy_name(name, seed), overrides=overrides, checkpoints="final")

    def path(self, *parts: str) -> Path:
        """A path inside :attr:`out_dir` (see :func:`inside`); ``ConfigError`` when ``parts`` would leave it."""
        return inside(self.out_dir, *parts)

    def sites_for(self, name: str) -> tuple[str, ...]:
        """The sites read in model ``name``: its own ``sites`` or the study's."""
        spec = self.model(name)
        return spec.sites if spec.sites is not None else self.sites

    def require_sites(self, name: str, have: Collection[Site]) -> list[Site]:
        """The sites of model ``name`` (:meth:`sites_for`, parsed), or a :class:`ConfigError` listing
        ``have`` (the model's sites) when one of them is missing."""
        wanted = [as_site(s) for s in self.sites_for(name)]
        missing = [s.name for s in wanted if s not in have]
        if missing:
            raise ConfigError(f"model {name!r} has no site(s) {missing}; its sites are {describe_sites(have)}",
                              f"give the model its own list (study.models[].sites) or drop {missing[0]} from study.sites")
        return wanted

    def model(self, name: str) -> ModelSpec:
        """The spec of model ``name``: one of :attr:`models`, or a model-seed copy (:meth:`seed_copy`)."""
        for m in self.models:
            if m.name == name:
                return m
        for m in self.models:
            copy = self.seed_copy(m.name)
            if copy is not None and copy.name == name:
                return copy
        raise ConfigError(f"study {self.name!r} has no model {name!r}", f"use one of {[m.name for m in self.models]}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _twin(cls: type, name: str, **types: Any) -> type:
    """A non-frozen copy of dataclass ``cls`` named ``name`` in this module (importable, so Hydra's
    joblib/submitit launchers can pickle configs that use it), with some field types replaced."""
    import typing

    hints = typing.get_type_hints(cls)
    specs: list[Any] = []
    for f in dataclasses.fields(cls):
        tp = types.get(f.name, hints[f.name])
        if f.default is not dataclasses.MISSING:
            specs.append((f.name, tp, field(default=f.default)))
        elif f.default_factory is not dataclasses.MISSING:
            specs.append((f.name, tp, field(default_factory=f.default_factory)))
        else:
            specs.append((f.name, tp))
    twin = dataclasses.make_dataclass(name, specs)
    twin.__module__ = __name__
    return twin


#: Hydra's schema of a study: :class:`StudyConfig` with ``models`` typed by a non-frozen twin of
#: :class:`ModelSpec`. OmegaConf makes list entries of a frozen dataclass read-only as they are
#: merged, which would block ``+study.models.0.overrides.steps=40``; :func:`study_from_dict` still
#: builds (and validates) the frozen classes.
ModelSpecSchema = _twin(ModelSpec, "ModelSpecSchema")
StudySchema = _twin(StudyConfig, "StudySchema", models=tuple[ModelSpecSchema, ...])


_NESTED = {"corpus": CorpusConfig, "subset": SubsetConfig, "harvest": HarvestSpec, "sae": SAESpec, "match": MatchSpec}


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}", f"write {where} as key: value pairs")
    names = {f.name for f in dataclasses.fields(cls)}
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"non-string key(s) {bad} in {where}", f"valid keys are {sorted(names)}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}", f"valid keys are {sorted(names)}")
    try:
        return cls(**dict(data))
    except TypeError as exc:
        raise ConfigError(f"bad {where}: {exc}", f"valid keys are {sorted(names)}") from None


def _option_owners(name: str) -> list[str]:
    """The architectures whose ``study.sae.<architecture>`` block has a field ``name``."""
    return [a for a, cls in BUILTIN_OPTIONS.items() if name in {f.name for f in dataclasses.fields(cls)}]


def _build_sae(data: Any) -> SAESpec:
    """``study.sae`` with its per-architecture blocks; a flat architecture field gets a pointer to its block."""
    if not isinstance(data, Mapping):
        return _build(SAESpec, data, "study.sae")
    data = dict(data)
    arch = data.get("architecture", "topk")
    for key in list(data):
        owner = _option_owners(key)
        if owner and key not in {f.name for f in dataclasses.fields(SAESpec)}:
            block = arch if arch in owner else owner[0]
            raise ConfigError(f"study.sae.{key} is an option of {', '.join(owner)} and belongs in its block",
                              f"write it as study.sae.{block}.{key}")
    for arch_name, cls in BUILTIN_OPTIONS.items():
        if arch_name in data and not isinstance(data[arch_name], cls):
            data[arch_name] = _build(cls, data[arch_name], f"study.sae.{arch_name}")
    return _build(SAESpec, data, "study.sae")


def study_from_dict(data: Mapping[str, Any]) -> StudyConfig:
    """Validate a plain mapping (from YAML) into a :class:`StudyConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a study config must be a mapping, got {type(data).__name__}", "check configs/study/*.yaml")
    data = dict(data)
    for key, cls in _NESTED.items():
        if key in data:
            data[key] = _build_sae(data[key]) if key == "sae" else _build(cls, data[key], f"study.{key}")
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


def _has_text(path: Path, probe: int = 1 << 16) -> bool:
    """Whether the first ``probe`` bytes of a (possibly gzipped) file hold anything but whitespace."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            return bool(fh.read(probe).strip())
    except OSError as exc:
        raise DataError(f"cannot read corpus file {str(path)!r} ({exc})", "check the file and its permissions") from None


def check_inputs(cfg: StudyConfig) -> None:
    """Check, without reading them whole, that a study's local inputs are there before anything runs.

    A corpus given as a path must exist and hold some text (a non-blank file, or a folder with a
    non-empty file); a model given as a local path must be a folder. Hub names and ``hf:`` datasets
    are left to their loaders. Raises :class:`DataError` / :class:`ModelLoadError`; writes nothing.
    """
    src = cfg.corpus.source
    if src != "shakespeare" and not src.startswith("hf:"):
        path = Path(src).expanduser()
        if not path.exists():
            raise DataError(f"corpus source {src!r} does not exist",
                            "set study.corpus.source to shakespeare, a .jsonl/.txt file or folder, or hf:<dataset>")
        if path.is_file() and not _has_text(path):
            raise DataError(f"corpus file {src!r} is empty", "point study.corpus.source at a file that holds documents")
        if path.is_dir() and not any(f.is_file() and f.stat().st_size > 0 for f in path.rglob("*")):
            raise DataError(f"corpus folder {src!r} holds no non-empty file", "put text files in it, or fix the path")
    for m in cfg.models:
        if m.path is not None and (m.path.startswith((".", "/", "~")) or Path(m.path).expanduser().exists()):
            if not Path(m.path).expanduser().is_dir():
                raise ModelLoadError(f"model {m.name!r}: no model folder at {m.path!r}",
                                     "fix models[].path, or give a hub name like EleutherAI/pythia-70m")


def hydra_problem(exc: BaseException) -> str:
    """One line from a Hydra/OmegaConf error: its first line plus the first line of its cause."""
    def first(e: BaseException) -> str:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return lines[0] if lines else type(e).__name__

    text = first(exc).rstrip(".")
    cause = exc.__cause__ or exc.__context__
    if cause is not None and first(cause) not in text:
        text += f" ({first(cause).rstrip('.')})"
    # the schema twins (StudySchema, ModelSpecSchema) are an implementation detail: name the classes users know
    return text.replace("'StudySchema'", "'StudyConfig'").replace("'ModelSpecSchema'", "'ModelSpec'")


def _check_sae_overrides(overrides: Sequence[str]) -> None:
    """``study.sae.k=...`` (a field of an architecture block, written flat) gets a pointer to its block."""
    shared = {f.name for f in dataclasses.fields(SAESpec)}
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key.startswith("study.sae.") and key.count(".") == 2 and key[len("study.sae."):] not in shared:
            name = key[len("study.sae."):]
            owner = _option_owners(name)
            if owner:
                raise ConfigError(f"{key} is an option of {', '.join(owner)} and belongs in its block",
                                  f"write it as study.sae.{owner[0]}.{name}={value or '...'} (the block of the chosen architecture)")


def compose_study(overrides: Sequence[str] = (), config_dir: str | os.PathLike = CONFIG_DIR,
                  config_name: str = "config") -> StudyConfig:
    """Compose ``configs/config.yaml`` with Hydra ``overrides`` (``study=...``, ``study.sae.steps=...``)
    and validate it, without running anything or writing any file.

    Hydra's own errors (an unknown key, a value of the wrong type, a missing config group option)
    become a one-line :class:`ConfigError`, like the study's own validation errors.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides must be a list of strings, got {overrides!r}", "pass e.g. ['study.sae.steps=100']")
    _check_sae_overrides(overrides)
    register_configs()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        data = OmegaConf.to_container(cfg.study, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"config error: {hydra_problem(exc)}",
                          "check the override's key and value against configs/study/*.yaml "
                          "(python -m universality --cfg job prints the composed config)") from None
    return study_from_dict(data)


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
    default and overrides such as ``study.corpus.max_docs=100`` work without ``+``. A key that a
    model entry does not set yet takes ``+``: ``+study.models.0.overrides.steps=40``.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.structured(StudySchema)
    _thaw(node)
    ConfigStore.instance().store(group="study", name="study_schema", node=node)
