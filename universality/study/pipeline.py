"""The stages of a study, each cached by a hash of the config that made it.

:class:`StudyContext` builds, on demand and at most once per key (:class:`StageCache`):

1. the corpus D and the subset D' (with the planted family when asked),
2. the shared byte-level BPE tokenizer (zoo models),
3. zoo models trained in place (``<root>/cache/model-<hash>/step{N}/``) or hub/local models,
4. harvested activation stores per (model, revision, data),
5. SAEs per (model, revision, data): every site x every seed, trained in one pass,
6. activations of the shared evaluation spans per (model, revision) (the same text for all models).

Analyses (``universality.study.analyses``) ask for what they need; nothing else is built.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from universality.errors import ConfigError
from universality.io import load_tensors, read_json, save_tensors, stable_hash
from universality.study.cache import StageCache
from universality.study.config import ModelSpec, StudyConfig

__all__ = ["StudyContext", "Cell", "zoo_config"]


_PLANTED_SEED = 7
_INJECT_SEED = 11
_INJECT_PREFIX = "injected/"
_INJECT_HARVEST_COPIES = 16  # the injected text's share of a harvest of D: about what the model saw after S
_INJECT_EVAL_COPIES = 8


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (model, revision, data) point of the grid; ``data`` is D or D_prime."""

    model: str
    revision: str
    data: str


def zoo_config(cfg: StudyConfig, spec: ModelSpec):
    """The :class:`~universality.zoo.ZooModelConfig` of a zoo model of the study (preset + overrides)."""
    from universality.zoo import load_preset

    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.overrides.items()}
    overrides.setdefault("vocab_size", cfg.tokenizer_vocab)
    overrides.setdefault("seed", cfg.seed)
    overrides.setdefault("name", spec.name)
    return load_preset(spec.zoo, **overrides)


class StudyContext:
    """Lazily built, cached products of a study; see the module docstring."""

    def __init__(self, cfg: StudyConfig, root: str | Path | None = None) -> None:
        self.cfg = cfg
        self.root = Path(root or cfg.out_dir)
        self.cache = StageCache(self.root)
        self._adapters: dict[tuple[str, str | None], Any] = {}
        self._saes: dict[Cell, dict[str, list[Any]]] = {}
        self._eval: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ data
    @cached_property
    def corpus(self) -> dict[str, Any]:
        """``{"D": Subset, "D_prime": Subset, "pattern": str | None}``."""
        from universality.data import HashFraction, MetaEquals, TextRegex, Complement, open_source, select_subset
        from universality.data.sources import SourceConfig, shakespeare

        c, s = self.cfg.corpus, self.cfg.subset
        if c.source == "shakespeare":
            source = shakespeare(limit=c.max_docs)
        else:
            if c.source.startswith("hf:"):
                cfg = SourceConfig(kind="hf", path=c.source[3:], text_field=c.text_field, limit=c.max_docs)
            else:
                kind = "jsonl" if c.source.endswith((".jsonl", ".jsonl.gz")) else "texts_dir"
                cfg = SourceConfig(kind=kind, path=c.source, text_field=c.text_field, limit=c.max_docs)
            source = open_source(cfg)
        if s.kind == "fraction":
            spec: Any = HashFraction(s.fraction, salt=f"study-subset/{s.seed}")
        elif s.kind == "meta":
            spec = MetaEquals(s.field, (s.value,))
        else:
            spec = TextRegex(s.pattern)
        if s.complement:
            spec = Complement(spec)
        if c.planted:
            from universality.zoo import planted_corpus, synthetic_pattern

            pattern = synthetic_pattern(_PLANTED_SEED)
            pc = planted_corpus((d.text for d in source), n_planted=c.planted_docs, pattern=pattern,
                                subset_spec=spec, name=f"{c.source}+planted")
            planted = frozenset(d.id for d in pc.full.documents if d.meta.get("planted") is True)
            return {"D": pc.full, "D_prime": pc.subset, "pattern": pattern, "planted_ids": planted}
        docs = list(source)
        return {"D": select_subset(docs, None, name=c.source), "D_prime": select_subset(docs, spec, name=c.source),
                "pattern": None, "planted_ids": frozenset()}

    def subset(self, data: str):
        return self.corpus[data]

    @cached_property
    def injection(self) -> dict[str, Any] | None:
        """The curriculum pattern zoo models on D see only after ``corpus.inject_after_step``."""
        after = self.cfg.corpus.inject_after_step
        if after is None:
            return None
        from universality.zoo import word_passage

        # common words in a fixed order: its tokens occur everywhere, only the order is new, so what
        # SAEs find on it beyond its tokens is what the model learned after the step
        pattern = word_passage((d.text for d in self.subset("D").documents), seed=_INJECT_SEED)
        return {"after_step": after, "texts": ("\n".join([pattern] * 4),)}

    # ------------------------------------------------------------- tokenizer
    @cached_property
    def tokenizer_dir(self) -> Path:
        from universality.zoo import train_tokenizer

        d = self.subset("D")
        key = {"stage": "tokenizer", "corpus": d.hash, "vocab": self.cfg.tokenizer_vocab}
        rec = self.cache.run("tokenizer", key, lambda tmp: train_tokenizer(
            (doc.text for doc in d.documents), self.cfg.tokenizer_vocab, tmp / "tokenizer"))
        return rec.path / "tokenizer"

    # ---------------------------------------------------------------- models
    def _zoo_config(self, spec: ModelSpec):
        return zoo_config(self.cfg, spec)

    def model_path(self, name: str) -> Path | str:
        """Folder of a zoo model's checkpoint series (trained on first use), or the spec's path."""
        spec = self.cfg.model(name)
        if spec.path is not None:
            return spec.path
        from transformers import AutoTokenizer

        from universality.zoo import train_lm

        zcfg = self._zoo_config(spec)
        data = self.subset(spec.data)
        inject = self.injection if spec.data == "D" else None
        key = {"stage": "model", "zoo": dataclasses.asdict(zcfg), "data": data.hash,
               "tokenizer": stable_hash(read_json(self.tokenizer_dir / "tokenizer.json")),
               "inject": None if inject is None else {"after_step": inject["after_step"], "texts": list(inject["texts"])}}

        def build(tmp: Path) -> None:
            tok = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
            train_lm(zcfg, data, tmp / "model", tokenizer=tok, inject=inject, progress=True)

        return self.cache.run(f"model-{name}", key, build).path / "model"

    def adapter(self, name: str, revision: str | None = None):
        """A loaded :class:`models.ModelAdapter` for ``name`` at ``revision`` (kept in memory)."""
        import models

        key = (name, revision)
        if key not in self._adapters:
            spec = self.cfg.model(name)
            path = self.model_path(name)
            rev = revision if revision is not None else spec.revision
            self._adapters[key] = models.load(str(path), revision=rev, device=self.cfg.device)
        return self._adapters[key]

    def revisions(self, name: str) -> list[str]:
        """The revisions the spec asks for (``final`` = the last checkpoint, or ``main``)."""
        spec = self.cfg.model(name)
        series = list(self.adapter(name).checkpoints)
        if spec.checkpoints == "all":
            if not series:
                raise ConfigError(f"model {name!r} has no checkpoint series", "set checkpoints: final for it")
            return series
        if spec.checkpoints == "final":
            return [series[-1]] if series else [spec.revision or "main"]
        missing = [c for c in spec.checkpoints if c not in series]
        if missing:
            raise ConfigError(f"model {name!r} has no checkpoints {missing}", f"choose from {series}")
        return list(spec.checkpoints)

    def adapter_at(self, name: str, revision: str):
        base = self.adapter(name)
        if revision in ("main", base.revision) or not base.checkpoints:
            return base
        key = (name, revision)
        if key not in self._adapters:
            self._adapters[key] = base.at_revision(revision)
        return self._adapters[key]

    def _model_key(self, name: str, revision: str) -> dict[str, Any]:
        spec = self.cfg.model(name)
        return {"model": str(self.model_path(name)) if spec.path else Path(self.model_path(name)).parent.name,
                "revision": revision}

    def sites_of(self, name: str) -> list[str]:
        """The sites read in model ``name`` (its own ``sites`` or the study's); every one must exist there."""
        wanted = list(self.cfg.sites_for(name))
        have = self.adapter(name).sites
        missing = [s for s in wanted if s not in have]
        if missing:
            raise ConfigError(f"model {name!r} has no site(s) {missing}; its sites are {', '.join(sorted(have, key=_site_order))}",
                              f"give the model its own list (study.models[].sites) or drop {missing[0]} from study.sites")
        return wanted

    # --------------------------------------------------------------- harvest
    def store(self, cell: Cell):
        """The activation store of ``cell`` (harvested on first use)."""
        from universality.activations import ActivationStore, harvest

        sites = self.sites_of(cell.model)
        h = self.cfg.harvest
        data = self.subset(cell.data)
        key = {"stage": "harvest", **self._model_key(cell.model, cell.revision), "data": data.hash, "sites": sites,
               "tokens": h.train_tokens, "ctx": h.context_length, "batch": h.batch_size, "doc_tokens": h.max_doc_tokens,
               "inject": None if self.injection is None or cell.data != "D" else list(self.injection["texts"])}

        def build(tmp: Path) -> None:
            from universality.activations import HarvestConfig
            from universality.data import PackingConfig

            hc = HarvestConfig(packing=PackingConfig(context_len=h.context_length, max_doc_tokens=h.max_doc_tokens),
                               batch_size=h.batch_size, max_tokens=h.train_tokens)
            harvest(self.adapter_at(cell.model, cell.revision), self.harvest_documents(cell.data), sites,
                    tmp / "store", hc, dataset_name=f"{self.cfg.corpus.source}:{cell.data}")

        rec = self.cache.run("harvest", key, build)
        return ActivationStore.open(rec.path / "store")

    def _injected_documents(self, copies: int):
        """``copies`` documents of each injected text (distinct ids, so spans and shuffles differ)."""
        from universality.data import Document

        return [Document(f"{_INJECT_PREFIX}{i}#{c}", t, {}) for i, t in enumerate(self.injection["texts"])
                for c in range(copies)]

    def harvest_documents(self, data: str):
        """The documents an SAE of ``data`` reads: the subset (plus, for D, the injected curriculum
        texts the zoo models were trained on), in a stable order hashed from the document ids."""
        from universality.data import hash_unit

        docs = list(self.subset(data).documents)
        if data == "D" and self.injection is not None:
            docs += self._injected_documents(_INJECT_HARVEST_COPIES)
        return sorted(docs, key=lambda d: (hash_unit(d.id, f"harvest/{self.cfg.seed}"), d.id))

    # ------------------------------------------------------------------ SAEs
    def saes(self, cell: Cell) -> dict[str, list[Any]]:
        """``{site: [SAE per seed]}`` for ``cell`` (trained on first use, all sites and seeds in one pass)."""
        if cell in self._saes:
            return self._saes[cell]
        from universality import SAE
        from universality.train import RunConfig, TrainConfig, train_saes

        store = self.store(cell)
        sp = self.cfg.sae
        sites = store.sites
        key = {"stage": "saes", "store": str(store.path.parent.name), "sae": sp.selected(), "sites": sites,
               "device": self.cfg.device}

        def build(tmp: Path) -> None:
            configs = []
            for site in sites:
                sae_cfg = sp.sae_config(store.width(site))
                for seed in sp.seeds:
                    configs.append(TrainConfig(sae=sae_cfg, site=site, seed=seed, lr=sp.lr,
                                               warmup_steps=sp.effective_warmup(),
                                               sparsity_warmup_steps=sp.sparsity_warmup_steps if sae_cfg.uses_penalty else 0,
                                               name=_sae_key(site, seed)))
            reader = store.iter_batches(sites, batch_size=sp.batch_size, shuffle_buffer=sp.effective_shuffle_buffer(),
                                        seed=self.cfg.seed, epochs=None, drop_last=True)
            run = RunConfig(steps=sp.steps, device=self.cfg.device, seed=self.cfg.seed, out_dir=str(tmp / "saes"),
                            dead_window=sp.effective_dead_window(), init_rows=min(sp.init_rows, store.n_rows))
            meta = {"model": cell.model, "revision": cell.revision, "dataset": f"{self.cfg.corpus.source}:{cell.data}",
                    "subset_hash": self.subset(cell.data).hash}
            train_saes(reader, configs, run, meta=meta, progress=True)

        rec = self.cache.run("saes", key, build)
        out: dict[str, list[Any]] = {}
        for site in sites:
            out[site] = [SAE.load(rec.path / "saes" / _sae_key(site, seed)) for seed in sp.seeds]
        self._saes[cell] = out
        return out

    # ------------------------------------------------------ shared eval text
    @cached_property
    def eval_spans(self):
        """The one fixed set of evaluation spans every model is read on.

        The spans are split evenly over D', D \\ D' (without the planted family), the planted
        family and the injected pattern (the last two when the study has them), so both sides of
        every subset comparison and every planted positive are measured. Spans are picked by a stable hash of the document id (``make_eval_spans``).
        """
        from universality.data import EvalSpans, make_eval_spans

        h = self.cfg.harvest
        inside = {d.id for d in self.subset("D_prime").documents}
        planted = self.corpus["planted_ids"]
        d_docs = self.subset("D").documents
        groups = [[d for d in d_docs if d.id in inside], [d for d in d_docs if d.id not in inside | planted],
                  [d for d in d_docs if d.id in planted]]
        if self.injection is not None:
            groups.append(self._injected_documents(_INJECT_EVAL_COPIES))
        groups = [g for g in groups if g]
        parts = []
        for i, group in enumerate(groups):
            n = max(1, h.eval_spans // len(groups) + (1 if i < h.eval_spans % len(groups) else 0))
            parts.append(make_eval_spans(group, n_spans=n, span_chars=h.span_chars, seed=self.cfg.seed))
        return EvalSpans(tuple(t for p in parts for t in p.texts), tuple(d for p in parts for d in p.doc_ids),
                         tuple(o for p in parts for o in p.char_offsets))

    def eval_span_flags(self, name: str) -> dict[str, torch.Tensor]:
        """Per text-token row of ``name``'s eval activations: ``span`` index, ``in_subset`` (document in
        D'), ``planted`` (the planted family) and ``injected`` (the curriculum pattern)."""
        tokens = self.eval_tokens(name)
        in_sub = {d.id for d in self.subset("D_prime").documents}
        span_in = torch.tensor([doc in in_sub for doc in self.eval_spans.doc_ids])
        span_inj = torch.tensor([doc.startswith(_INJECT_PREFIX) for doc in self.eval_spans.doc_ids])
        span_pl = torch.tensor([doc in self.corpus["planted_ids"] for doc in self.eval_spans.doc_ids])
        rows = torch.arange(tokens.input_ids.shape[0]).unsqueeze(1).expand_as(tokens.input_ids)[tokens.text_mask]
        return {"span": rows, "in_subset": span_in[rows], "injected": span_inj[rows], "planted": span_pl[rows]}

    def eval_tokens(self, name: str):
        from universality.data import tokenize_spans

        return tokenize_spans(self.eval_spans, self.adapter(name).tokenizer,
                              max_len=self.cfg.harvest.context_length)

    def eval_acts(self, name: str, revision: str) -> dict[str, torch.Tensor]:
        """``{site: (n_text_tokens, width)}`` on the shared spans, plus ``token_ids`` (cached on disk)."""
        if (name, revision) in self._eval:
            return self._eval[(name, revision)]
        from universality.activations import span_activations

        adapter = self.adapter_at(name, revision)
        sites = [s for s in adapter.sites if s in set(self.cfg.sites_for(name)) or (
            "moe_experts" in self.cfg.analyses and s.endswith("mlp.hook_expert_indices"))]
        key = {"stage": "eval", **self._model_key(name, revision), "spans": self.eval_spans.hash, "sites": sites,
               "max_len": self.cfg.harvest.context_length}

        def build(tmp: Path) -> None:
            tokens = self.eval_tokens(name)
            acts = span_activations(adapter, tokens, sites)
            acts["token_ids"] = tokens.input_ids[tokens.text_mask]
            save_tensors(tmp / "eval.safetensors", acts)

        rec = self.cache.run("eval", key, build)
        self._eval[(name, revision)] = load_tensors(rec.path / "eval.safetensors")
        return self._eval[(name, revision)]

def _site_order(name: str) -> tuple:
    """Sort key that puts ``blocks.2`` before ``blocks.10``."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def _sae_key(site: str, seed: int) -> str:
    """Name of a dictionary in ``train_saes`` and its folder (relative to the run's ``out_dir``)."""
    return f"{site}/s{seed}"

