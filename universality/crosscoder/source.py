""":class:`JointSource`: the concatenated input of a crosscoder, from one stream or several.

A crosscoder reads ``[x_1, ..., x_N]`` as one site. ``JointSource(stream, sites=[...])`` concatenates
sites of one stream's batches (layers of one model, or the paired sites of a synthetic world);
``JointSource([stream_a, stream_b], sites=[...])`` takes site ``i`` from stream ``i`` (two models, two
checkpoints, each read by its own activation reader over the same tokens); ``JointSource.aligned(reader)``
takes every source of an aligned reader (:mod:`universality.activations.aligned`: several stores or
models in one row order, token ids checked). Listing one site twice
gives the "everything shared" anchor (a source crossed with a copy of itself).

``provenance()`` returns ``{"sources": [...]}`` (each source's model, revision, dataset and subset hash
as its stream reports them, or the model names given as ``models``, plus its site), which the trainer records in the crosscoder's meta;
``state_dict``/``load_state_dict`` delegate to the streams, so training resumes exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from universality.errors import ConfigError, DataError

__all__ = ["JointSource"]


class JointSource:
    """Yields ``{name: (batch, sum of widths)}``: the listed sites, concatenated in order."""

    def __init__(self, streams: Iterable | Sequence[Iterable], sites: Sequence[str], name: str = "joint",
                 models: Sequence[str] | None = None) -> None:
        sites = list(sites)
        if len(sites) < 2:
            raise ConfigError(f"a joint source needs at least two sites, got {sites}", "list one site per crosscoder source")
        many = isinstance(streams, (list, tuple))
        self.streams = list(streams) if many else [streams]
        if many and len(self.streams) != len(sites):
            raise ConfigError(f"{len(self.streams)} streams for {len(sites)} sites", "give one stream per site, or one stream for all")
        if models is not None and len(models) != len(sites):
            raise ConfigError(f"{len(models)} model names for {len(sites)} sites", "give one model name per source, or none")
        self.sites, self.name = sites, name
        self.models = None if models is None else [str(m) for m in models]

    @classmethod
    def aligned(cls, reader, name: str = "joint", models: Sequence[str] | None = None) -> "JointSource":
        """The sources of an aligned reader (:func:`universality.activations.aligned_stores`,
        :func:`~universality.activations.aligned_live`, :func:`~universality.activations.aligned_text`),
        concatenated in order. ``models[i]``, when given, is recorded as source ``i``'s model instead of what its
        reader reports (a study names its models; a store only knows the folder it was harvested from)."""
        return cls(reader, sites=list(reader.names), name=name, models=models)

    def _stream_of(self, i: int) -> int:
        return i if len(self.streams) > 1 else 0

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        its = [iter(s) for s in self.streams]
        while True:
            try:
                batches = [next(it) for it in its]
            except StopIteration:
                return
            parts = []
            for i, site in enumerate(self.sites):
                b = batches[self._stream_of(i)]
                x = b if isinstance(b, Tensor) else b.get(site) if isinstance(b, Mapping) else None
                if not isinstance(x, Tensor) or x.ndim != 2:
                    raise DataError(f"joint source: stream {self._stream_of(i)} gave no (batch, d) tensor for site {site!r}",
                                    "check the site names and that each stream yields {site: tensor}")
                parts.append(x)
            rows = {p.shape[0] for p in parts}
            if len(rows) != 1:
                raise DataError(f"joint source: the sites give different row counts {sorted(rows)}",
                                "read every source over the same tokens with the same batch size")
            yield {self.name: torch.cat([p.float() for p in parts], dim=1)}

    def provenance(self) -> dict[str, Any]:
        sources = []
        for i, site in enumerate(self.sites):
            stream = self.streams[self._stream_of(i)]
            own = getattr(stream, "source_provenance", None)  # an aligned reader knows each source's origin
            get = (lambda: own(site)) if callable(own) else getattr(stream, "provenance", None)
            prov = dict(get()) if callable(get) else {}
            prov.pop("sources", None)
            site = prov.pop("site", None) or site  # an aligned reader names the site behind its source key
            if self.models is not None:
                prov["model"] = self.models[i]
            sources.append({**{k: v for k, v in prov.items() if v is not None}, "site": site, "index": i})
        return {"sources": sources}

    def state_dict(self) -> dict[str, Any]:
        return {"streams": [s.state_dict() if hasattr(s, "state_dict") else None for s in self.streams]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        states = list(state.get("streams") or [])
        if len(states) != len(self.streams):
            raise DataError(f"joint source state holds {len(states)} streams, this source has {len(self.streams)}",
                            "resume with the same streams")
        for stream, st in zip(self.streams, states):
            if st is not None:
                stream.load_state_dict(st)
