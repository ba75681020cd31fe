"""Dataset subsets D' inside D, declared as small frozen configs and reproducible across runs.

A subset is a predicate on a :class:`~universality.data.sources.Document`:

- :class:`HashFraction` - keep a document when ``u(id) < fraction``, where
  ``u(id) = int(sha256(salt + "\\x00" + id)[:16], 16) / 2**64`` is a uniform number in [0, 1)
  fixed by the document id (not by its position, so adding documents never reshuffles others).
- :class:`MetaEquals` - keep a document when ``meta[field]`` is one of ``values``.
- :class:`TextRegex` - keep a document when ``re.search(pattern, text, flags)`` matches.
- :class:`Complement` - keep a document when ``of`` does not keep it (D minus D').
- :class:`AllOf` - keep a document when every part keeps it (intersection).

:func:`select_subset` applies one to a source and returns a :class:`Subset` recording the
definition's hash, the hash of the selected ids, and one combined ``hash`` (what manifests and
SAE artifacts record as ``subset_hash``). An empty selection raises
:class:`~universality.errors.DataError`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Union

from universality.data.sources import Document
from universality.errors import ConfigError, DataError
from universality.io import stable_hash

__all__ = [
    "HashFraction",
    "MetaEquals",
    "TextRegex",
    "Complement",
    "AllOf",
    "SubsetSpec",
    "Subset",
    "select_subset",
    "subset_definition",
    "hash_unit",
]

_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


def hash_unit(doc_id: str, salt: str = "") -> float:
    """Uniform number in [0, 1) fixed by ``salt`` and ``doc_id`` (first 64 bits of SHA-256)."""
    digest = hashlib.sha256(f"{salt}\x00{doc_id}".encode("utf-8")).hexdigest()
    return int(digest[:16], 16) / float(1 << 64)


@dataclass(frozen=True)
class HashFraction:
    """The documents whose id hashes below ``fraction`` (about that fraction of D)."""

    fraction: float
    salt: str = ""

    def __post_init__(self) -> None:
        if (not isinstance(self.fraction, (int, float)) or isinstance(self.fraction, bool)
                or not 0.0 < float(self.fraction) <= 1.0):
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction!r}", "pass e.g. fraction=0.5")
        if not isinstance(self.salt, str):
            raise ConfigError(f"HashFraction.salt must be a string, got {self.salt!r}", "pass e.g. salt='run1'")

    def keep(self, doc: Document) -> bool:
        return hash_unit(doc.id, self.salt) < self.fraction


@dataclass(frozen=True)
class MetaEquals:
    """The documents whose metadata ``field`` equals one of ``values``."""

    field: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not self.field:
            raise ConfigError(f"MetaEquals.field must be a non-empty string, got {self.field!r}",
                              "name a metadata field, e.g. 'genre'")
        values = self.values
        if isinstance(values, (str, int, float, bool)) or values is None:
            values = (values,)
        if not isinstance(values, (tuple, list, set, frozenset)):
            raise ConfigError(f"MetaEquals.values must be a value or a list of values, got {type(values).__name__}",
                              "pass e.g. values=('poetry', 'romance')")
        object.__setattr__(self, "values", tuple(values))
        if not self.values:
            raise ConfigError("MetaEquals.values is empty", "give at least one value")

    def keep(self, doc: Document) -> bool:
        return doc.meta.get(self.field) in self.values


@dataclass(frozen=True)
class TextRegex:
    """The documents whose text contains a match of ``pattern`` (``flags``: letters from 'ims')."""

    pattern: str
    flags: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str):
            raise ConfigError(f"TextRegex.pattern must be a string, got {self.pattern!r}", "pass e.g. pattern=r'\\bghost\\b'")
        if not isinstance(self.flags, str) or set(self.flags) - set(_FLAGS):
            raise ConfigError(f"unknown regex flags {self.flags!r}", "use letters from 'ims'")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ConfigError(f"bad regular expression {self.pattern!r} ({exc})", "fix the pattern") from None

    def keep(self, doc: Document) -> bool:
        flags = 0
        for letter in self.flags:
            flags |= _FLAGS[letter]
        return re.search(self.pattern, doc.text, flags) is not None


@dataclass(frozen=True)
class Complement:
    """The documents that ``of`` does not select."""

    of: "SubsetSpec"

    def __post_init__(self) -> None:
        if not isinstance(self.of, _SPEC_TYPES):
            raise ConfigError(f"Complement.of must be a subset spec, got {type(self.of).__name__}", "wrap a spec")

    def keep(self, doc: Document) -> bool:
        return not self.of.keep(doc)


@dataclass(frozen=True)
class AllOf:
    """The documents that every spec in ``parts`` selects."""

    parts: tuple["SubsetSpec", ...]

    def __post_init__(self) -> None:
        if not isinstance(self.parts, (tuple, list)):
            raise ConfigError(f"AllOf.parts must be a tuple of subset specs, got {type(self.parts).__name__}",
                              "pass e.g. AllOf((HashFraction(0.5), MetaEquals('genre', 'poetry')))")
        object.__setattr__(self, "parts", tuple(self.parts))
        if not self.parts or not all(isinstance(p, _SPEC_TYPES) for p in self.parts):
            raise ConfigError("AllOf.parts must be a non-empty tuple of subset specs", "pass e.g. (HashFraction(0.5), ...)")

    def keep(self, doc: Document) -> bool:
        return all(p.keep(doc) for p in self.parts)


SubsetSpec = Union[HashFraction, MetaEquals, TextRegex, Complement, AllOf]
_SPEC_TYPES = (HashFraction, MetaEquals, TextRegex, Complement, AllOf)


def subset_definition(spec: SubsetSpec | None) -> dict[str, Any]:
    """JSON-able definition: ``{"kind": <class name>, ...fields}``, nested for Complement/AllOf."""
    if spec is None:
        return {"kind": "All"}
    if isinstance(spec, Complement):
        return {"kind": "Complement", "of": subset_definition(spec.of)}
    if isinstance(spec, AllOf):
        return {"kind": "AllOf", "parts": [subset_definition(p) for p in spec.parts]}
    if not isinstance(spec, _SPEC_TYPES):
        raise ConfigError(f"not a subset spec: {type(spec).__name__}", "use HashFraction, MetaEquals, TextRegex, Complement or AllOf")
    out = {"kind": type(spec).__name__}
    for f in fields(spec):
        value = getattr(spec, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


@dataclass(frozen=True)
class Subset:
    """A selected subset: its documents, its definition and the hashes that identify it."""

    source_name: str
    definition: dict[str, Any]
    documents: tuple[Document, ...]
    definition_hash: str
    ids_hash: str

    @property
    def hash(self) -> str:
        """Combined hash of the source name, the definition and the selected ids."""
        return stable_hash({"source": self.source_name, "definition": self.definition_hash, "ids": self.ids_hash})

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(d.id for d in self.documents)

    @property
    def name(self) -> str:
        return f"{self.source_name}[{self.hash}]"

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source_name,
            "definition": self.definition,
            "definition_hash": self.definition_hash,
            "ids_hash": self.ids_hash,
            "hash": self.hash,
            "n_documents": len(self.documents),
        }


def select_subset(source: Iterable[Document], spec: SubsetSpec | None, name: str | None = None) -> Subset:
    """Apply ``spec`` (``None`` = all of D) to ``source``; raises ``DataError`` when nothing is kept."""
    definition = subset_definition(spec)
    source_name = name or getattr(source, "name", "documents")
    kept = tuple(d for d in source if spec is None or spec.keep(d))
    if not kept:
        raise DataError(
            f"subset {definition} of {source_name!r} selects no documents",
            "loosen the subset (larger fraction, other metadata value or pattern) or check the source",
        )
    ids = [d.id for d in kept]
    if len(set(ids)) != len(ids):
        raise DataError(f"source {source_name!r} has duplicate document ids", "give every document a unique id")
    return Subset(source_name, definition, kept, stable_hash(definition), stable_hash(ids))

