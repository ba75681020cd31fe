"""Aligned rows of sources on different tokenizers: one row per shared unit of text.

:mod:`universality.activations.aligned` needs every source to read the same token ids. Models with their
own tokenizers (GPT-2 vs Pythia, a hub model vs a zoo model) cut the same text differently, so
:class:`AlignedTextReader` (``aligned_text(adapters, documents, sites, ...)``) aligns them through
characters instead:

1. the documents are cut into text spans of at most ``span_chars`` characters (at a whitespace when one
   falls in the last quarter), in document order; with a shuffle buffer the span order is permuted per
   epoch;
2. a group of spans is tokenised by every adapter on its own (:func:`universality.data.tokenize_spans`,
   each span its own sequence, BOS first where the tokenizer has one, cut to ``max_len`` tokens and to the
   model's positions) and
   every model is run on it (:func:`universality.activations.span_activations`);
3. each span's text is limited to the characters every side covers (a side cut short by its positions
   does not leave the others' tail units unpaired), and the text tokens of all sides are mapped onto
   shared units (:func:`universality.data.align_many`: a unit is the smallest span that every side
   tiles with whole tokens);
4. each side's rows are pooled onto the units (``pool="last"``: the unit's last token, the first that
   has read all of it in a causal model; or ``"mean"``).

Row ``r`` of every source is then the same unit of the same span. **Refusal:** when more than
``max_dropped`` of a group's units are covered by some sides only (one tokenizer skipped or rewrote
text the others read: normalisation, unknown characters), the group raises
:class:`~universality.errors.DataError` naming the group and the fraction; a tokenizer without character
offsets (not "fast") is refused up front.

The reader is resumable like every :class:`~universality.activations.readers.RowReader` and yields
``{name_i: (batch, width_i)}`` with names ``"<i>:<site>"``; ``JointSource.aligned(reader)`` concatenates
them for a crosscoder and ``source_provenance(name)`` names each source's model and revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from universality.activations.aligned import source_names
from universality.activations.harvest import check_sites, max_positions, span_activations
from universality.activations.readers import RowReader
from universality.data.alignment import align_many
from universality.data.eval_tokens import EvalSpans, tokenize_spans
from universality.data.sources import as_documents
from universality.data.subsets import Subset
from universality.errors import ConfigError, DataError
from universality.sites import Site
from universality.zoo.lineage import lineage_of

__all__ = ["AlignedTextReader", "aligned_text", "text_spans"]

_POOLS = ("last", "mean")


def text_spans(documents, span_chars: int = 512, min_chars: int = 16) -> EvalSpans:
    """Every document cut into consecutive spans of at most ``span_chars`` characters, in order (a cut moves
    back to the last whitespace in the final quarter of a span when there is one); spans with fewer than
    ``min_chars`` non-space characters are left out."""
    if not isinstance(span_chars, int) or span_chars < 8:
        raise ConfigError(f"span_chars must be an integer >= 8, got {span_chars!r}", "pass e.g. 512")
    texts, ids, offsets = [], [], []
    for doc in as_documents(documents):
        text, start = doc.text, 0
        while start < len(text):
            end = min(start + span_chars, len(text))
            if end < len(text):
                cut = text.rfind(" ", start + (3 * span_chars) // 4, end)
                end = cut if cut > start else end
            piece = text[start:end]
            if len(piece.strip()) >= min_chars:
                texts.append(piece)
                ids.append(doc.id)
                offsets.append(start)
            start = end
    if not texts:
        raise DataError(f"no document holds a span of at least {min_chars} characters", "pass documents with text")
    return EvalSpans(tuple(texts), tuple(ids), tuple(offsets))


class AlignedTextReader(RowReader):
    """Source ``i`` is site ``sites[i]`` of ``adapters[i]``, each on its own tokenizer, one row per shared
    unit of text (see module doc)."""

    def __init__(
        self,
        adapters: Sequence[Any],
        documents,
        sites: Sequence[str | Site],
        batch_size: int = 4096,
        shuffle_buffer: int = 0,
        seed: int = 0,
        epochs: int | None = 1,
        drop_last: bool = False,
        span_chars: int = 512,
        max_len: int | None = None,
        group_spans: int | None = None,
        forward_batch: int = 8,
        pool: str = "last",
        max_dropped: float = 0.02,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if len(adapters) < 2 or len(adapters) != len(sites):
            raise ConfigError(f"{len(adapters)} adapters for {len(sites)} sites", "give one adapter per source (two or more)")
        if pool not in _POOLS:
            raise ConfigError(f"unknown pooling {pool!r}", f"use one of {_POOLS}")
        if not 0.0 <= float(max_dropped) < 1.0:
            raise ConfigError(f"max_dropped must lie in [0, 1), got {max_dropped!r}", "pass e.g. 0.02")
        for a in adapters:
            if not getattr(a.tokenizer, "is_fast", False):
                raise ConfigError(f"model {getattr(a, 'name', '?')!r} has no fast tokenizer, so no character offsets",
                                  "load the model's fast tokenizer (use_fast=True)")
        typed = [check_sites(a, [s])[0] for a, s in zip(adapters, sites)]
        super().__init__(typed, batch_size, shuffle_buffer, seed, epochs, drop_last, device, dtype)
        self.adapters, self.pool, self.max_dropped = list(adapters), pool, float(max_dropped)
        self.subset_hash = documents.hash if isinstance(documents, Subset) else None
        self.dataset_name = documents.source_name if isinstance(documents, Subset) else None
        docs = as_documents(documents)
        if self.dataset_name is None:
            self.dataset_name = getattr(docs, "name", None)
        self.spans = text_spans(docs, span_chars)
        self.span_chars, self.forward_batch = span_chars, int(forward_batch)
        if max_len is not None and (not isinstance(max_len, int) or max_len < 2):
            raise ConfigError(f"max_len must be an integer >= 2, got {max_len!r}", "pass e.g. 128 (BOS plus text tokens per span)")
        self.max_len = max_len
        # about shuffle_buffer units per group (a unit is a few characters); at least one forward batch
        default = self.forward_batch if shuffle_buffer == 0 else max(self.forward_batch, -(-4 * shuffle_buffer // span_chars))
        self.group_spans = int(group_spans or default)
        if self.group_spans < 1:
            raise ConfigError(f"group_spans must be >= 1, got {group_spans!r}", "pass e.g. 8")
        self.sites = self.names = source_names(typed, names)
        self.labels = [f"source {i} ({getattr(a, 'name', '?')})" for i, a in enumerate(adapters)]
        self.units_dropped = 0  # units left out so far (covered by some sides only)

    def _max_len(self, adapter) -> int | None:
        """Tokens per span ``adapter`` reads: ``max_len`` and the model's positions, whichever is smaller."""
        limits = [n for n in (self.max_len, max_positions(adapter)) if n is not None]
        return min(limits) if limits else None

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.spans)
        if self.shuffle_buffer == 0:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, 0x5EA]).permutation(n)

    @torch.no_grad()
    def _load_group(self, epoch: int, group: int) -> dict[str, Tensor] | None:
        order = self._order(epoch)[group * self.group_spans : (group + 1) * self.group_spans]
        if len(order) == 0:
            return None
        spans = EvalSpans(tuple(self.spans.texts[i] for i in order), tuple(self.spans.doc_ids[i] for i in order),
                          tuple(self.spans.char_offsets[i] for i in order))
        tokens = [tokenize_spans(spans, a.tokenizer, max_len=self._max_len(a)) for a in self.adapters]
        per_side = [t.text_token_spans() for t in tokens]
        # each span's text up to the last character every side covers
        limits = [min(int(side[j][:, 1].max()) if len(side[j]) else 0 for side in per_side) for j in range(len(order))]
        kept_spans, keep_rows = [], []
        for side in per_side:
            masks = [sp[:, 1] <= lim for sp, lim in zip(side, limits)]
            kept_spans.append([sp[m] for sp, m in zip(side, masks)])
            keep_rows.append(torch.cat(masks))
        alignment = align_many(kept_spans)
        total = alignment.n_units + alignment.n_dropped
        if alignment.n_dropped > self.max_dropped * total:
            raise DataError(
                f"aligned text sources disagree on the text of group {group} of epoch {epoch}: {alignment.n_dropped} of "
                f"{total} units ({alignment.n_dropped / total:.1%}) are covered by only some of {', '.join(self.labels)}",
                "use tokenizers that keep the text as written (no normalisation), or raise max_dropped")
        self.units_dropped += alignment.n_dropped
        out: dict[str, Tensor] = {}
        for i, (adapter, site, name) in enumerate(zip(self.adapters, self.typed_sites, self.names)):
            acts = span_activations(adapter, tokens[i], [site], batch_size=self.forward_batch, progress=False)[site.name]
            out[name] = alignment.pool(acts[keep_rows[i]], i, self.pool)
        return out

    def _fingerprint(self) -> dict[str, Any]:
        return super()._fingerprint() | {"spans": self.spans.hash, "group_spans": self.group_spans, "pool": self.pool,
                                         "max_len": self.max_len,
                                         "models": [getattr(a, "name", None) for a in self.adapters]}

    def source_provenance(self, name: str) -> dict[str, Any]:
        """Model, revision, dataset and subset hash behind source ``name`` (and the alignment it was read by)."""
        i = self.names.index(name)
        model = getattr(self.adapters[i], "name", None)
        return {"model": model, "revision": getattr(self.adapters[i], "revision", None), "dataset": self.dataset_name,
                "subset_hash": self.subset_hash, "lineage": lineage_of(model) if isinstance(model, str) else None,
                "site": self.typed_sites[i].name, "alignment": f"character units, {self.pool} token"}

    def provenance(self) -> dict[str, Any]:
        return {k: v for k, v in self.source_provenance(self.names[0]).items() if k not in ("site", "alignment")}


def aligned_text(adapters: Sequence[Any], documents, sites: Sequence[str | Site], batch_size: int = 4096,
                 shuffle_buffer: int = 0, seed: int = 0, **kwargs: Any) -> AlignedTextReader:
    """:class:`AlignedTextReader` running ``adapters`` (any tokenizers) on ``documents``; source ``i`` = ``sites[i]``
    of ``adapters[i]``, one row per unit of text that every tokenizer covers with whole tokens."""
    return AlignedTextReader(adapters, documents, sites, batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed, **kwargs)

