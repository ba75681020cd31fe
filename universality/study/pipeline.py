"""The study context: the stages of :mod:`universality.study.stages`, wired together lazily.

:class:`StudyContext` builds each product on first use and at most once per key (the stages cache
on disk through :class:`~universality.study.cache.StageCache`; the context keeps what it loaded in
memory): the corpus, the tokenizer, models and their adapters (model-seed copies included, by the
name :meth:`StudyContext.seed_copy` gives), activation stores and dictionaries per (model,
revision, data) cell, and the shared evaluation spans and activations.

Analyses (``analysis.studies``) ask for what they need; nothing else is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

import models
from universality.data import tokenize_spans
from universality.errors import ConfigError
from universality.io import stable_hash
from universality.progress import model_label
from universality.sites import Site
from universality.study import stages
from universality.study.cache import StageCache
from universality.study.config import StudyConfig
from universality.study.stages import Cell, zoo_config

__all__ = ["StudyContext", "Cell", "zoo_config"]


class StudyContext:
    """Lazily built, cached products of a study; see the module docstring."""

    def __init__(self, cfg: StudyConfig, root: str | Path | None = None) -> None:
        self.cfg = cfg
        self.root = Path(root or cfg.out_dir)
        self.cache = StageCache(self.root)
        self._adapters: dict[tuple[str, str | None], Any] = {}
        self._saes: dict[Cell | tuple[Cell, int], dict[str, list[Any]]] = {}
        self._eval: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ data
    @cached_property
    def corpus(self) -> dict[str, Any]:
        """``{"D": Subset, "D_prime": Subset, "pattern": str | None, "planted_ids": frozenset}``."""
        return stages.build_corpus(self.cfg)

    def subset(self, data: str):
        return self.corpus[data]

    @cached_property
    def injection(self) -> dict[str, Any] | None:
        """The curriculum passage zoo models on D see only after ``corpus.inject_after_step``."""
        return stages.build_injection(self.cfg, self.subset("D"))

    def _injection_for(self, data: str) -> dict[str, Any] | None:
        return self.injection if data == "D" else None

    # ------------------------------------------------------------- tokenizer
    @cached_property
    def tokenizer_dir(self) -> Path:
        return stages.build_tokenizer(self.cfg, self.cache, self.subset("D"))

    # ---------------------------------------------------------------- models
    def model_path(self, name: str) -> Path | str:
        """Folder of a zoo model's checkpoint series (trained on first use), or the spec's path."""
        spec = self.cfg.model(name)
        if spec.path is not None:
            return spec.path
        return stages.build_model(self.cfg, self.cache, spec, self.subset(spec.data), self.tokenizer_dir,
                                  self._injection_for(spec.data))

    def seed_copy(self, name: str) -> str | None:
        """Name of the model-seed copy of model ``name`` (trained on first use, like any zoo model), or
        ``None`` when the study has none for it (:meth:`~universality.study.config.StudyConfig.seed_copy`)."""
        copy = self.cfg.seed_copy(name)
        return None if copy is None else copy.name

    def adapter(self, name: str, revision: str | None = None):
        """A loaded :class:`models.ModelAdapter` for ``name`` at ``revision`` (kept in memory)."""
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

    def sites_of(self, name: str) -> list[Site]:
        """The sites read in model ``name`` (its own ``sites`` or the study's, in config order), parsed
        once here; every one must exist in the model."""
        return self.cfg.require_sites(name, self.adapter(name).site_table)

    # --------------------------------------------------------------- harvest
    def store(self, cell: Cell):
        """The activation store of ``cell`` (harvested on first use)."""
        return stages.harvest_cell(self.cfg, self.cache, cell, self.adapter_at(cell.model, cell.revision),
                                   self._model_key(cell.model, cell.revision), self.sites_of(cell.model),
                                   self.subset(cell.data), self._injection_for(cell.data))

    def text_crosscoders(self, cells: Sequence[Cell], sites: Sequence[str], seeds: Sequence[int], label: str) -> list[Any]:
        """One crosscoder per seed over site ``sites[i]`` of ``cells[i]`` for models on different tokenizers: run live
        on the first cell's text, one row per unit of text every tokenizer covers (:func:`~universality.study.stages.train_text_crosscoders`)."""
        adapters = [self.adapter_at(c.model, c.revision) for c in cells]
        keys = [stable_hash(self._model_key(c.model, c.revision)) for c in cells]
        return stages.train_text_crosscoders(self.cfg, self.cache, adapters, keys, self.subset(cells[0].data), sites,
                                             [c.model for c in cells], seeds, label)

    def harvest_documents(self, data: str):
        """The documents an SAE of ``data`` reads (see :func:`universality.study.stages.harvest_documents`)."""
        return stages.harvest_documents(self.cfg, self.subset(data), self._injection_for(data))

    # ------------------------------------------------------------------ SAEs
    def saes(self, cell: Cell) -> dict[str, list[Any]]:
        """``{site: [SAE per seed]}`` for ``cell`` (trained on first use, all sites and seeds in one pass)."""
        if cell not in self._saes:
            self._saes[cell] = stages.train_cell(self.cfg, self.cache, cell, self.store(cell), self.subset(cell.data).hash)
        return self._saes[cell]

    def saes_at(self, cell: Cell, expansion: int) -> dict[str, list[Any]]:
        """``{site: [SAE per seed]}`` for ``cell`` at another width: the study's dictionaries with
        ``sae.expansion`` set to ``expansion`` (their own cached stage; the study's own width reuses :meth:`saes`)."""
        if expansion == self.cfg.sae.expansion:
            return self.saes(cell)
        key = (cell, int(expansion))
        if key not in self._saes:
            cfg = dataclasses.replace(self.cfg, sae=self.cfg.sae.at_expansion(expansion))
            self._saes[key] = stages.train_cell(cfg, self.cache, cell, self.store(cell), self.subset(cell.data).hash)
        return self._saes[key]

    # ------------------------------------------------------ shared eval text
    @cached_property
    def eval_spans(self):
        """The one fixed set of evaluation spans every model is read on (:func:`~universality.study.stages.build_eval_spans`)."""
        return stages.build_eval_spans(self.cfg, self.corpus, self.injection)

    def eval_span_flags(self, name: str) -> dict[str, torch.Tensor]:
        """Per text-token row of ``name``'s eval activations: ``span`` index, ``in_subset`` (document in
        D'), ``planted`` (the planted family) and ``injected`` (the curriculum pattern)."""
        tokens = self.eval_tokens(name)
        in_sub = {d.id for d in self.subset("D_prime").documents}
        span_in = torch.tensor([doc in in_sub for doc in self.eval_spans.doc_ids])
        span_inj = torch.tensor([doc.startswith(stages.INJECT_PREFIX) for doc in self.eval_spans.doc_ids])
        span_pl = torch.tensor([doc in self.corpus["planted_ids"] for doc in self.eval_spans.doc_ids])
        rows = torch.arange(tokens.input_ids.shape[0]).unsqueeze(1).expand_as(tokens.input_ids)[tokens.text_mask]
        return {"span": rows, "in_subset": span_in[rows], "injected": span_inj[rows], "planted": span_pl[rows]}

    def eval_tokens(self, name: str):
        return tokenize_spans(self.eval_spans, self.adapter(name).tokenizer, max_len=self.cfg.harvest.context_length)

    def eval_acts(self, name: str, revision: str) -> dict[str, torch.Tensor]:
        """``{site: (n_text_tokens, width)}`` on the shared spans, plus ``token_ids`` (cached on disk)."""
        if (name, revision) not in self._eval:
            adapter = self.adapter_at(name, revision)
            wanted = set(self.sites_of(name))
            routing = "moe_experts" in self.cfg.analyses  # it reads each token's top-1 expert
            sites = [s for s in sorted(adapter.site_table) if s in wanted or (routing and s.is_integer)]
            self._eval[(name, revision)] = stages.eval_activations(
                self.cfg, self.cache, adapter, self._model_key(name, revision), self.eval_tokens(name), sites,
                self.eval_spans.hash, label=model_label(name, revision))
        return self._eval[(name, revision)]

