"""The stages of a study as plain functions, each cached by a hash of the config that made it.

A stage takes the study config, the :class:`~universality.study.cache.StageCache` and the products
of earlier stages, and returns its own product; :class:`universality.study.pipeline.StudyContext`
only wires them together lazily and keeps what was built in memory. In data-flow order:

1. :func:`build_corpus` - the corpus D and the subset D' (with the planted family when asked);
   :func:`build_injection` - the curriculum passage zoo models on D see after a step;
2. :func:`build_tokenizer` - the shared byte-level BPE tokenizer of the zoo models;
3. :func:`build_model` - a zoo model trained in place (``cache/model-<name>-<hash>/model/step{N}/``);
4. :func:`harvest_cell` - the activation store of one (model, revision, data) cell;
5. :func:`train_cell` - the dictionaries of one cell: every site x every seed, in one pass;
6. :func:`build_eval_spans` and :func:`eval_activations` - the shared evaluation text and each
   model's activations on it.

Cache keys are exactly what each stage's output depends on, so a rerun rebuilds nothing and a
change rebuilds only the stages it reaches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from universality.activations import ActivationStore, HarvestConfig, harvest, span_activations
from universality.activations.harvest import site_table
from universality.data import (
    Complement,
    Document,
    EvalSpans,
    HashFraction,
    MetaEquals,
    PackingConfig,
    TextRegex,
    hash_unit,
    make_eval_spans,
    open_source,
    Subset,
    select_subset,
)
from universality.data.sources import SourceConfig, shakespeare
from universality.errors import ConfigError
from universality.io import load_tensors, read_json, save_tensors, stable_hash
from universality.progress import model_label
from universality.activations.aligned import aligned_stores
from universality.activations.aligned_text import aligned_text
from universality.crosscoder.source import JointSource
from universality.sae import SAE
from universality.sae.crosscoder_config import crosscoder_config
from universality.sites import Site, as_site
from universality.study.cache import StageCache
from universality.study.config import ModelSpec, StudyConfig
from universality.train import RunConfig, TrainConfig, train_saes
from universality.zoo.ioi import ioi_documents
from universality.zoo import load_preset, planted_corpus, synthetic_pattern, train_lm, train_tokenizer, word_passage

__all__ = [
    "INJECT_PREFIX",
    "Cell",
    "zoo_config",
    "build_corpus",
    "build_injection",
    "injected_documents",
    "build_tokenizer",
    "build_model",
    "harvest_documents",
    "harvest_cell",
    "train_cell",
    "sae_key",
    "train_on_source",
    "crosscoder_spec",
    "train_crosscoders",
    "build_eval_spans",
    "eval_activations",
]

_PLANTED_SEED = 7
_INJECT_SEED = 11
#: Document ids of the injected curriculum texts start with this.
INJECT_PREFIX = "injected/"
_INJECT_HARVEST_COPIES = 16  # the injected text's share of a harvest of D: about what the model saw after S
_INJECT_EVAL_COPIES = 8


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (model, revision, data) point of the grid; ``data`` is D or D_prime."""

    model: str
    revision: str
    data: str


# ------------------------------------------------------------------------------------------ data
def _subset_spec(cfg: StudyConfig) -> Any:
    s = cfg.subset
    if s.kind == "fraction":
        spec: Any = HashFraction(s.fraction, salt=f"study-subset/{s.seed}")
    elif s.kind == "meta":
        spec = MetaEquals(s.field, (s.value,))
    else:
        spec = TextRegex(s.pattern)
    return Complement(spec) if s.complement else spec


def _source(cfg: StudyConfig):
    c = cfg.corpus
    if c.source == "shakespeare":
        return shakespeare(limit=c.max_docs)
    if c.source.startswith("hf:"):
        return open_source(SourceConfig(kind="hf", path=c.source[3:], text_field=c.text_field, limit=c.max_docs))
    kind = "jsonl" if c.source.endswith((".jsonl", ".jsonl.gz")) else "texts_dir"
    return open_source(SourceConfig(kind=kind, path=c.source, text_field=c.text_field, limit=c.max_docs))


def build_corpus(cfg: StudyConfig) -> dict[str, Any]:
    """``{"D": Subset, "D_prime": Subset, "pattern": str | None, "planted_ids": frozenset}``."""
    c = cfg.corpus
    source, spec = _source(cfg), _subset_spec(cfg)
    if c.ioi:  # opt-in: without it the corpus (and every hash made from it) is unchanged
        source = list(source) + ioi_documents(c.ioi_docs, seed=cfg.seed, name=f"{c.source}+ioi")
    if c.planted:
        pattern = synthetic_pattern(_PLANTED_SEED)
        pc = planted_corpus((d.text for d in source), n_planted=c.planted_docs, pattern=pattern,
                            subset_spec=spec, name=f"{c.source}+planted")
        planted = frozenset(d.id for d in pc.full.documents if d.meta.get("planted") is True)
        return {"D": pc.full, "D_prime": pc.subset, "pattern": pattern, "planted_ids": planted}
    docs = list(source)
    return {"D": select_subset(docs, None, name=c.source), "D_prime": select_subset(docs, spec, name=c.source),
            "pattern": None, "planted_ids": frozenset()}


def build_injection(cfg: StudyConfig, d: Any) -> dict[str, Any] | None:
    """The curriculum passage zoo models on D see only after ``corpus.inject_after_step`` (or ``None``).

    Common words in a fixed order: its tokens occur everywhere and only the order is new, so what
    SAEs find on it beyond its tokens is what the model learned after the step.
    """
    after = cfg.corpus.inject_after_step
    if after is None:
        return None
    pattern = word_passage((doc.text for doc in d.documents), seed=_INJECT_SEED)
    return {"after_step": after, "texts": ("\n".join([pattern] * 4),)}


def injected_documents(injection: dict[str, Any], copies: int) -> list[Document]:
    """``copies`` documents of each injected text (distinct ids, so spans and shuffles differ)."""
    return [Document(f"{INJECT_PREFIX}{i}#{c}", t, {}) for i, t in enumerate(injection["texts"]) for c in range(copies)]


# ------------------------------------------------------------------------------ tokenizer, models
def build_tokenizer(cfg: StudyConfig, cache: StageCache, d: Any) -> Path:
    """Folder of the byte-level BPE tokenizer trained on D (shared by every zoo model)."""
    key = {"stage": "tokenizer", "corpus": d.hash, "vocab": cfg.tokenizer_vocab}
    rec = cache.run("tokenizer", key, lambda tmp: train_tokenizer(
        (doc.text for doc in d.documents), cfg.tokenizer_vocab, tmp / "tokenizer"))
    return rec.path / "tokenizer"


def zoo_config(cfg: StudyConfig, spec: ModelSpec):
    """The :class:`~universality.zoo.ZooModelConfig` of a zoo model of the study (preset + overrides)."""
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.overrides.items()}
    overrides.setdefault("vocab_size", cfg.tokenizer_vocab)
    overrides.setdefault("seed", cfg.seed)
    overrides.setdefault("name", spec.name)
    return load_preset(spec.zoo, **overrides)


def build_model(cfg: StudyConfig, cache: StageCache, spec: ModelSpec, data: Any, tokenizer_dir: Path,
                injection: dict[str, Any] | None) -> Path:
    """Folder of a zoo model's checkpoint series, trained on ``data`` (with the injection when given)."""
    zcfg = zoo_config(cfg, spec)
    key = {"stage": "model", "zoo": dataclasses.asdict(zcfg), "data": data.hash,
           "tokenizer": stable_hash(read_json(tokenizer_dir / "tokenizer.json")),
           "inject": None if injection is None else {"after_step": injection["after_step"],
                                                     "texts": list(injection["texts"])}}

    def build(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        train_lm(zcfg, data, tmp / "model", tokenizer=tok, inject=injection, progress=True)

    return cache.run(f"model-{spec.name}", key, build, label=spec.name).path / "model"


# ------------------------------------------------------------------------------------- harvest
def harvest_documents(cfg: StudyConfig, subset: Any, injection: dict[str, Any] | None) -> list[Document]:
    """The documents an SAE reads: ``subset`` (plus the injected curriculum texts when given), in a
    stable order hashed from the document ids."""
    docs = list(subset.documents)
    if injection is not None:
        docs += injected_documents(injection, _INJECT_HARVEST_COPIES)
    return sorted(docs, key=lambda d: (hash_unit(d.id, f"harvest/{cfg.seed}"), d.id))


def harvest_cell(cfg: StudyConfig, cache: StageCache, cell: Cell, adapter: Any, model_key: dict[str, Any],
                 sites: Sequence[Site], subset: Any, injection: dict[str, Any] | None) -> ActivationStore:
    """The activation store of ``cell``: ``harvest.train_tokens`` tokens of ``subset`` at ``sites``."""
    h = cfg.harvest
    key = {"stage": "harvest", **model_key, "data": subset.hash, "sites": [s.name for s in sites],
           "tokens": h.train_tokens, "ctx": h.context_length, "batch": h.batch_size, "doc_tokens": h.max_doc_tokens,
           "inject": None if injection is None else list(injection["texts"])}

    def build(tmp: Path) -> None:
        hc = HarvestConfig(packing=PackingConfig(context_len=h.context_length, max_doc_tokens=h.max_doc_tokens),
                           batch_size=h.batch_size, max_tokens=h.train_tokens)
        harvest(adapter, harvest_documents(cfg, subset, injection), list(sites), tmp / "store", hc,
                dataset_name=f"{cfg.corpus.source}:{cell.data}")

    rec = cache.run("harvest", key, build, label=f"{model_label(cell.model, cell.revision)} on {cell.data}")
    return ActivationStore.open(rec.path / "store")


# ---------------------------------------------------------------------------------- dictionaries
def sae_key(site: str, seed: int) -> str:
    """Name of a dictionary in ``train_saes`` and its folder (relative to the run's ``out_dir``)."""
    return f"{site}/s{seed}"


def _train_configs(cfg: StudyConfig, widths: dict[str, int], seed_offset: int = 0) -> list[TrainConfig]:
    """One config per site x seed of ``cfg.sae`` (each seed plus ``seed_offset``), named by :func:`sae_key`."""
    sp = cfg.sae
    configs = []
    for site, width in widths.items():
        sae_cfg = sp.sae_config(width)
        for seed in (s + seed_offset for s in sp.seeds):
            configs.append(TrainConfig(sae=sae_cfg, site=site, seed=seed, lr=sp.lr, warmup_steps=sp.effective_warmup(),
                                       sparsity_warmup_steps=sp.sparsity_warmup_steps if sae_cfg.uses_penalty else 0,
                                       name=sae_key(site, seed)))
    return configs


def train_cell(cfg: StudyConfig, cache: StageCache, cell: Cell, store: ActivationStore,
               subset_hash: str) -> dict[str, list[SAE]]:
    """``{site: [SAE per seed]}`` of ``cell``: every site and seed trained in one pass over ``store``."""
    sp = cfg.sae
    sites = store.sites
    key = {"stage": "saes", "store": str(store.path.parent.name), "sae": sp.selected(), "sites": sites,
           "device": cfg.device}

    def build(tmp: Path) -> None:
        reader = store.iter_batches(sites, batch_size=sp.batch_size, shuffle_buffer=sp.effective_shuffle_buffer(),
                                    seed=cfg.seed, epochs=None, drop_last=True)
        run = RunConfig(steps=sp.steps, device=cfg.device, seed=cfg.seed, out_dir=str(tmp / "saes"),
                        dead_window=sp.effective_dead_window(), init_rows=min(sp.init_rows, store.n_rows))
        meta = {"model": cell.model, "revision": cell.revision, "dataset": f"{cfg.corpus.source}:{cell.data}",
                "subset_hash": subset_hash}
        train_saes(reader, _train_configs(cfg, {site: store.width(site) for site in sites}), run, meta=meta, progress=True)

    rec = cache.run("saes", key, build, label=f"{model_label(cell.model, cell.revision)} on {cell.data}")
    return {site: [SAE.load(rec.path / "saes" / sae_key(site, seed)) for seed in sp.seeds] for site in sites}


def train_on_source(cfg: StudyConfig, cache: StageCache, stage: str, key: dict[str, Any], make_source: Any,
                    widths: dict[str, int], seed_offset: int, meta: dict[str, Any], label: str,
                    init_rows: int) -> dict[str, list[SAE]]:
    """``{site: [SAE per seed]}`` trained like :func:`train_cell` (the study's SAE spec, every site and seed in
    one pass) on the source ``make_source()`` builds (any activation source: control data), with seeds
    ``cfg.sae.seeds`` plus ``seed_offset``; cached as stage ``stage`` under ``key`` (plus the SAE spec,
    sites, seeds and device)."""
    sp = cfg.sae
    full = {**key, "sae": sp.selected(), "sites": sorted(widths), "seed_offset": seed_offset, "device": cfg.device}

    def build(tmp: Path) -> None:
        run = RunConfig(steps=sp.steps, device=cfg.device, seed=cfg.seed, out_dir=str(tmp / "saes"),
                        dead_window=sp.effective_dead_window(), init_rows=init_rows)
        train_saes(make_source(), _train_configs(cfg, widths, seed_offset), run, meta=meta, progress=True)

    rec = cache.run(stage, full, build, label=label)
    return {site: [SAE.load(rec.path / "saes" / sae_key(site, seed + seed_offset)) for seed in sp.seeds]
            for site in widths}


# ---------------------------------------------------------------------------------- crosscoders
CROSSCODER_K = 32
"""k of a crosscoder when the study's SAE architecture has none (relu, gated, ...)."""


def crosscoder_spec(cfg: StudyConfig, widths: Sequence[int]) -> dict[str, Any]:
    """The study's SAE settings carried to a BatchTopK crosscoder over sources of ``widths``:
    ``d_sae = expansion x max width``, ``k`` = the study's ``k`` (or :data:`CROSSCODER_K`), at most ``d_sae``."""
    sp = cfg.sae
    d_sae = sp.expansion * max(widths)
    k = min(int(getattr(sp.options, "k", CROSSCODER_K)), d_sae)
    return {"source_widths": [int(w) for w in widths], "d_sae": d_sae, "k": k, "sparsity": "batchtopk"}


def _crosscoder_stage(cfg: StudyConfig, cache: StageCache, key: dict[str, Any], make_reader, widths: Sequence[int],
                      models: Sequence[str], seeds: Sequence[int], init_rows: int, label: str) -> list[SAE]:
    """Train (or load from the cache) one BatchTopK crosscoder per seed on the rows of ``make_reader()``."""
    sp = cfg.sae
    spec = crosscoder_spec(cfg, widths)
    seeds = [int(s) for s in seeds]
    key = key | {"models": list(models), "seeds": seeds, "spec": spec, "sae": sp.selected(), "device": cfg.device}

    def build(tmp: Path) -> None:
        cc_cfg = crosscoder_config(tuple(spec["source_widths"]), spec["d_sae"], k=spec["k"], sparsity="batchtopk")
        configs = [TrainConfig(sae=cc_cfg, site="joint", seed=seed, lr=sp.lr, warmup_steps=sp.effective_warmup(),
                               name=f"crosscoder/s{seed}") for seed in seeds]
        run = RunConfig(steps=sp.steps, device=cfg.device, seed=cfg.seed, out_dir=str(tmp / "saes"),
                        dead_window=sp.effective_dead_window(), init_rows=init_rows)
        # the artifact records the study's model names, not the stores' cache folders: two runs write equal documents
        source = JointSource.aligned(make_reader(), models=models)
        train_saes(source, configs, run, meta={"dataset": cfg.corpus.source}, progress=True)

    rec = cache.run("crosscoder", key, build, label=label)
    return [SAE.load(rec.path / "saes" / "crosscoder" / f"s{seed}") for seed in seeds]


def train_crosscoders(cfg: StudyConfig, cache: StageCache, stores: Sequence[ActivationStore], sites: Sequence[str],
                      models: Sequence[str], seeds: Sequence[int], label: str) -> list[SAE]:
    """One BatchTopK crosscoder per seed (:func:`crosscoder_spec`) over source ``i`` = site ``sites[i]`` of
    ``stores[i]``, read in one row order (:func:`~universality.activations.aligned_stores`: same tokens, checked).
    A store and site listed twice give the "everything shared" anchor (a source crossed with a copy of itself).
    ``models[i]`` is the study's name of source ``i``'s model: the artifact records it (as the SAE stage does).
    Cached as stage ``crosscoder`` by the stores, sites, models, seeds, SAE spec and device."""
    sp = cfg.sae
    if not len(stores) == len(sites) == len(models):
        raise ConfigError(f"train_crosscoders got {len(stores)} stores, {len(sites)} sites and {len(models)} model names",
                          "give one store, site and model name per source")
    key = {"stage": "crosscoder", "stores": [str(st.path.parent.name) for st in stores], "sites": list(sites)}

    def reader():
        return aligned_stores(list(stores), list(sites), batch_size=sp.batch_size, shuffle_buffer=sp.effective_shuffle_buffer(),
                              seed=cfg.seed, epochs=None, drop_last=True)

    return _crosscoder_stage(cfg, cache, key, reader, [st.width(site) for st, site in zip(stores, sites)], models, seeds,
                             min(sp.init_rows, stores[0].n_rows), label)


def train_text_crosscoders(cfg: StudyConfig, cache: StageCache, adapters: Sequence[Any], model_keys: Sequence[str],
                           documents: Subset, sites: Sequence[str], models: Sequence[str], seeds: Sequence[int],
                           label: str) -> list[SAE]:
    """As :func:`train_crosscoders` for models on different tokenizers: source ``i`` is site ``sites[i]`` of
    ``adapters[i]`` run live on ``documents``, one row per unit of text every tokenizer covers with whole tokens
    (:func:`~universality.activations.aligned_text`, last token of each unit). ``model_keys[i]`` identifies
    adapter ``i``'s weights in the cache key. Cached as stage ``crosscoder`` by the models, subset, sites,
    seeds, SAE spec and device."""
    sp = cfg.sae
    if not len(adapters) == len(model_keys) == len(sites) == len(models):
        raise ConfigError(f"train_text_crosscoders got {len(adapters)} adapters, {len(model_keys)} model keys, {len(sites)} "
                          f"sites and {len(models)} model names", "give one of each per source")
    key = {"stage": "crosscoder", "aligned": "text", "model_keys": list(model_keys), "subset": documents.hash,
           "sites": list(sites), "span_chars": cfg.harvest.span_chars, "max_len": cfg.harvest.context_length}

    def reader():
        return aligned_text(list(adapters), documents, list(sites), batch_size=sp.batch_size,
                            shuffle_buffer=sp.effective_shuffle_buffer(), seed=cfg.seed, epochs=None, drop_last=True,
                            span_chars=key["span_chars"], max_len=cfg.harvest.context_length,
                            forward_batch=cfg.harvest.batch_size)

    widths = [int(site_table(a)[as_site(s)]) for a, s in zip(adapters, sites)]
    return _crosscoder_stage(cfg, cache, key, reader, widths, models, seeds, sp.init_rows, label)


# ------------------------------------------------------------------------------ shared eval text
def build_eval_spans(cfg: StudyConfig, corpus: dict[str, Any], injection: dict[str, Any] | None) -> EvalSpans:
    """The one fixed set of evaluation spans every model is read on.

    The spans are split evenly over D', D \\ D' (without the planted family), the planted family and
    the injected passage (the last two when the study has them), so both sides of every subset
    comparison and every planted positive are measured; spans are picked by a stable hash of the
    document id (``make_eval_spans``).
    """
    h = cfg.harvest
    inside = {d.id for d in corpus["D_prime"].documents}
    planted = corpus["planted_ids"]
    d_docs = corpus["D"].documents
    groups = [[d for d in d_docs if d.id in inside], [d for d in d_docs if d.id not in inside | planted],
              [d for d in d_docs if d.id in planted]]
    if injection is not None:
        groups.append(injected_documents(injection, _INJECT_EVAL_COPIES))
    groups = [g for g in groups if g]
    parts = []
    for i, group in enumerate(groups):
        n = max(1, h.eval_spans // len(groups) + (1 if i < h.eval_spans % len(groups) else 0))
        parts.append(make_eval_spans(group, n_spans=n, span_chars=h.span_chars, seed=cfg.seed))
    return EvalSpans(tuple(t for p in parts for t in p.texts), tuple(d for p in parts for d in p.doc_ids),
                     tuple(o for p in parts for o in p.char_offsets))


def eval_activations(cfg: StudyConfig, cache: StageCache, adapter: Any, model_key: dict[str, Any], tokens: Any,
                     sites: Sequence[Site], spans_hash: str, label: str | None = None) -> dict[str, torch.Tensor]:
    """``{site name: (n_text_tokens, width)}`` of ``adapter`` on the tokenised eval spans, plus ``token_ids``
    (``label``: the ``model@revision`` of the stage's log lines; default from ``model_key``)."""
    key = {"stage": "eval", **model_key, "spans": spans_hash, "sites": [s.name for s in sites],
           "max_len": cfg.harvest.context_length}

    def build(tmp: Path) -> None:
        acts = span_activations(adapter, tokens, list(sites))
        acts["token_ids"] = tokens.input_ids[tokens.text_mask]
        save_tensors(tmp / "eval.safetensors", acts)

    label = label or model_label(model_key.get("model"), model_key.get("revision"))
    rec = cache.run("eval", key, build, label=label)
    return load_tensors(rec.path / "eval.safetensors")
