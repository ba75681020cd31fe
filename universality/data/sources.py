"""Text sources: every document has a stable id and metadata.

A *source* is a re-iterable object with a ``name`` whose iteration yields :class:`Document`\\ s in a
fixed order. Ids are stable across runs: ``<source name>/<index>`` unless the data carries an id
field (JSONL ``id_field``, Hugging Face ``id_field``) or the shipped corpus, whose ids are
``<work>/<ordinal>``. Sources:

- :class:`TextsSource` - an in-memory list of strings (ids ``<name>/<index>``).
- :class:`TextFileSource` - local plain-text files, one document per file, or one per paragraph
  (blank-line separated) with ``split="paragraph"``; ids ``<file stem>/<index>``.
- :class:`JsonlSource` - a JSON Lines file (optionally ``.gz``/``.xz``) with a text field, an
  optional id field and optional metadata fields.
- :class:`HFDatasetSource` - a Hugging Face dataset, streamed (``datasets`` is imported lazily,
  only when iterated; it is the optional ``hf`` extra and needs a network or a local cache).
- :func:`shakespeare` - the public-domain corpus shipped with the package (see
  ``universality/data/corpus/README.md``).

:func:`open_source` builds any of them from a :class:`SourceConfig`.
"""

from __future__ import annotations

import gzip
import itertools
import json
import lzma
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from universality.errors import ConfigError, DataError

__all__ = [
    "Document",
    "Source",
    "TextsSource",
    "TextFileSource",
    "JsonlSource",
    "HFDatasetSource",
    "SourceConfig",
    "open_source",
    "shakespeare",
    "corpus_path",
    "as_documents",
]


@dataclass(frozen=True)
class Document:
    """One text with a stable id and read-only metadata (JSON-able values)."""

    id: str
    text: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise DataError(f"document id must be a non-empty string, got {self.id!r}", "give every document an id")
        if not isinstance(self.text, str):
            raise DataError(f"document {self.id!r} text is {type(self.text).__name__}, not str",
                            "pass text as str (decode bytes first, e.g. data.decode('utf-8'))")
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


class Source:
    """Base class: a named, re-iterable sequence of documents (``limit`` caps the count)."""

    name: str = "source"
    limit: int | None = None

    def _iter(self) -> Iterator[Document]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Document]:
        docs = self._iter()
        return itertools.islice(docs, self.limit) if self.limit is not None else docs

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded in manifests."""
        return {"type": type(self).__name__, "name": self.name, "limit": self.limit}


def _bad_byte(exc: UnicodeDecodeError) -> str:
    return f"byte 0x{exc.object[exc.start]:02x} at byte {exc.start}"


def _surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate in ``text`` (not valid Unicode text, cannot be tokenised), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_unicode(text: str, what: str) -> None:
    """Raise :class:`DataError` when ``text`` holds a lone surrogate (e.g. bytes decoded with ``surrogateescape``)."""
    at = _surrogate_at(text)
    if at is not None:
        raise DataError(
            f"{what} holds the lone surrogate {text[at]!r} at character {at}, which is not valid Unicode text",
            "decode the original bytes with the right encoding, or with errors='replace' (not 'surrogateescape')",
        )


def as_text(item: Any, what: str) -> str:
    """``item`` as str: a str (without lone surrogates), or bytes that decode as UTF-8; else :class:`DataError`."""
    if isinstance(item, (bytes, bytearray)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{what} is not valid UTF-8 ({_bad_byte(exc)})",
                            "decode it with its real encoding (e.g. data.decode('latin-1')) or with errors='replace', "
                            "and pass str") from None
    if not isinstance(item, str):
        raise DataError(f"{what} is {type(item).__name__}, not str", "pass texts as str")
    check_unicode(item, what)
    return item


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}", "pass e.g. limit=1000")


class TextsSource(Source):
    """Documents from in-memory strings (or bytes that decode as UTF-8); ids are ``<name>/<index>``."""

    def __init__(self, texts: Sequence[str | bytes], name: str = "texts", limit: int | None = None) -> None:
        _check_limit(limit)
        if isinstance(texts, (str, bytes)):
            raise DataError("texts is a single string", "pass a list of strings")
        self.texts = [as_text(t, f"text {i}") for i, t in enumerate(texts)]
        self.name, self.limit = name, limit

    def _iter(self) -> Iterator[Document]:
        for i, text in enumerate(self.texts):
            yield Document(f"{self.name}/{i}", text, {"source": self.name})


class TextFileSource(Source):
    """Plain-text files: one document per file (``split="file"``) or per blank-line paragraph."""

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        name: str = "files",
        split: str = "file",
        encoding: str = "utf-8",
        limit: int | None = None,
    ) -> None:
        _check_limit(limit)
        if split not in ("file", "paragraph"):
            raise ConfigError(f"split must be 'file' or 'paragraph', got {split!r}", "pick one of those")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        expanded: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                expanded.extend(sorted(q for q in p.rglob("*.txt") if q.is_file()))
            elif p.is_file():
                expanded.append(p)
            else:
                raise DataError(f"text file {p} does not exist", "check the path")
        if not expanded:
            raise DataError(f"no .txt files found in {[str(p) for p in paths]}", "point at text files or a folder of them")
        self.paths, self.name, self.split, self.encoding, self.limit = expanded, name, split, encoding, limit

    def _iter(self) -> Iterator[Document]:
        for path in self.paths:
            text = self._read(path)
            meta = {"source": self.name, "path": str(path)}
            if self.split == "file":
                yield Document(path.stem, text, meta)
            else:
                paras = [p.strip("\n") for p in text.split("\n\n")]
                for i, para in enumerate(p for p in paras if p.strip()):
                    yield Document(f"{path.stem}/{i}", para, meta)

    def _read(self, path: Path) -> str:
        try:
            return path.read_bytes().decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise DataError(f"text file {path} is not valid {self.encoding} ({_bad_byte(exc)})",
                            "re-encode it as UTF-8, or pass encoding= with the encoding it was written in") from None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "paths": [str(p) for p in self.paths], "split": self.split}


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _first_bad_line(path: Path) -> str:
    """Where the first bytes of ``path`` that do not decode as UTF-8 are: ``"line N, byte 0x.. at byte K"``."""
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"line {lineno}, {_bad_byte(exc)} of the line"
    return "a multi-byte character is cut at the end of the file"


def _record_to_document(
    record: Mapping[str, Any],
    index: int,
    name: str,
    text_field: str,
    id_field: str | None,
    meta_fields: Sequence[str] | None,
    where: str,
) -> Document:
    if text_field not in record:
        raise DataError(f"{where}: no {text_field!r} field (fields: {sorted(record)})", "set text_field to the text column")
    doc_id = f"{name}/{index}"
    if id_field is not None:
        if id_field not in record:
            raise DataError(f"{where}: no id field {id_field!r}", "set id_field=None to use <name>/<index> ids")
        doc_id = str(record[id_field])
    skip = {text_field, id_field}
    keys = [k for k in record if k not in skip] if meta_fields is None else list(meta_fields)
    meta = {"source": name}
    for k in keys:
        if k not in record:
            raise DataError(f"{where}: no metadata field {k!r}", "fix meta_fields")
        value = record[k]
        if isinstance(value, (str, int, float, bool)) or value is None:
            meta[k] = value
    return Document(doc_id, record[text_field], meta)


class JsonlSource(Source):
    """A JSON Lines file (plain, ``.gz`` or ``.xz``): one JSON object per line.

    ``text_field`` holds the text; ``id_field`` (optional) a stable id; ``meta_fields`` the fields
    kept as metadata (default: every scalar field other than text and id).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        name: str | None = None,
        text_field: str = "text",
        id_field: str | None = None,
        meta_fields: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> None:
        _check_limit(limit)
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"JSONL file {self.path} does not exist", "check the path")
        self.name = name or self.path.name.split(".")[0]
        self.text_field, self.id_field, self.limit = text_field, id_field, limit
        self.meta_fields = tuple(meta_fields) if meta_fields is not None else None

    def _iter(self) -> Iterator[Document]:
        try:
            yield from self._records()
        except UnicodeDecodeError:
            raise DataError(f"{self.path} is not valid UTF-8 ({_first_bad_line(self.path)})",
                            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None

    def _records(self) -> Iterator[Document]:
        seen: set[str] = set()
        with _open_text(self.path) as fh:
            index = 0
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{self.path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where} is not valid JSON ({exc.msg})", "fix or remove that line") from None
                if not isinstance(record, dict):
                    raise DataError(f"{where} is not a JSON object", "write one object per line")
                doc = _record_to_document(record, index, self.name, self.text_field, self.id_field, self.meta_fields, where)
                if doc.id in seen:
                    raise DataError(f"{where}: duplicate document id {doc.id!r}", "make ids unique or set id_field=None")
                seen.add(doc.id)
                index += 1
                yield doc

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "text_field": self.text_field, "id_field": self.id_field}


class HFDatasetSource(Source):
    """A Hugging Face dataset read with ``datasets.load_dataset(..., streaming=True)``.

    ``datasets`` is imported when the source is iterated, not when it is built; it is the optional
    ``hf`` extra (``pip install universality[hf]``). Needs a network or a local datasets cache,
    except for the packaged builders on local files (``path="json", data_files=...``).
    """

    def __init__(
        self,
        path: str,
        config_name: str | None = None,
        split: str = "train",
        text_field: str = "text",
        id_field: str | None = None,
        meta_fields: Sequence[str] | None = None,
        revision: str | None = None,
        streaming: bool = True,
        name: str | None = None,
        limit: int | None = None,
        data_files: str | Sequence[str] | None = None,
    ) -> None:
        _check_limit(limit)
        if not path:
            raise ConfigError("HF dataset path is empty", "pass e.g. path='NeelNanda/pile-10k'")
        self.path, self.config_name, self.split = path, config_name, split
        self.text_field, self.id_field, self.revision, self.streaming = text_field, id_field, revision, streaming
        self.meta_fields = tuple(meta_fields) if meta_fields is not None else None
        self.name = name or path.replace("/", "__")
        self.limit = limit
        self.data_files = data_files

    def _iter(self) -> Iterator[Document]:
        try:
            import datasets
        except ImportError:
            raise ConfigError(
                "the Hugging Face `datasets` package is not installed", "pip install 'universality[hf]'"
            ) from None
        try:
            extra = {"data_files": self.data_files} if self.data_files is not None else {}
            ds = datasets.load_dataset(
                self.path, self.config_name, split=self.split, streaming=self.streaming, revision=self.revision, **extra
            )
        except Exception as exc:  # network, missing dataset, offline mode
            raise DataError(
                f"cannot load Hugging Face dataset {self.path!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                "check the name and network access, or use a local JsonlSource",
            ) from None
        for index, record in enumerate(ds):
            yield _record_to_document(
                record, index, self.name, self.text_field, self.id_field, self.meta_fields, f"{self.path}[{index}]"
            )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "path": self.path,
            "config_name": self.config_name,
            "split": self.split,
            "revision": self.revision,
        }


def corpus_path(name: str = "shakespeare") -> Path:
    """Path of a corpus file shipped in ``universality/data/corpus``."""
    path = Path(str(resources.files("universality.data").joinpath("corpus", f"{name}.jsonl.xz")))
    if not path.is_file():
        raise DataError(f"shipped corpus {name!r} not found at {path}", "reinstall the package; 'shakespeare' is the only corpus")
    return path


def shakespeare(limit: int | None = None) -> JsonlSource:
    """The shipped public-domain Shakespeare corpus (909 documents: scenes, sonnets and poems).

    Ids are ``<work>/<ordinal>``; metadata fields ``work``, ``title``, ``genre``, ``section``,
    ``heading``, ``source_url``.
    """
    return JsonlSource(corpus_path("shakespeare"), name="shakespeare", id_field="id", limit=limit)


@dataclass(frozen=True)
class SourceConfig:
    """Declarative source: ``kind`` is ``shakespeare`` | ``texts_dir`` | ``jsonl`` | ``hf``."""

    kind: str = "shakespeare"
    path: str | None = None
    text_field: str = "text"
    id_field: str | None = None
    split: str = "train"
    config_name: str | None = None
    revision: str | None = None
    limit: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("shakespeare", "texts_dir", "jsonl", "hf"):
            raise ConfigError(f"unknown source kind {self.kind!r}", "use shakespeare, texts_dir, jsonl or hf")
        if self.kind != "shakespeare" and not self.path:
            raise ConfigError(f"source kind {self.kind!r} needs a path", "set path")
        _check_limit(self.limit)


def open_source(cfg: SourceConfig) -> Source:
    """Build the source a :class:`SourceConfig` declares."""
    if cfg.kind == "shakespeare":
        return shakespeare(limit=cfg.limit)
    if cfg.kind == "texts_dir":
        return TextFileSource(cfg.path, name=cfg.name or Path(cfg.path).name, split="file", limit=cfg.limit)
    if cfg.kind == "jsonl":
        return JsonlSource(cfg.path, name=cfg.name, text_field=cfg.text_field, id_field=cfg.id_field, limit=cfg.limit)
    return HFDatasetSource(
        cfg.path,
        config_name=cfg.config_name,
        split=cfg.split,
        text_field=cfg.text_field,
        id_field=cfg.id_field,
        revision=cfg.revision,
        name=cfg.name,
        limit=cfg.limit,
    )


def as_documents(data: Iterable[Document] | Iterable[str] | str, name: str = "texts") -> Iterable[Document]:
    """Accept a source, a list of documents or a list of strings; return an iterable of documents."""
    if isinstance(data, str):
        raise DataError("got a single string where documents were expected", "pass a list of strings or a Source")
    if isinstance(data, Source):
        return data
    items = data if isinstance(data, Sequence) else None
    if items is not None:
        if len(items) and all(isinstance(x, (str, bytes, bytearray)) for x in items):
            return TextsSource(items, name=name)
        if not all(isinstance(x, Document) for x in items):
            raise DataError("documents must be all str or all Document", "convert them first")
        return items
    return data
