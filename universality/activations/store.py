"""On-disk activation store: sharded safetensors plus one manifest JSON.

Layout of a store folder::

    manifest.json                 format, model, revision, sites (width, dtype, normalisation
                                  statistics), dataset, subset, packing, shard list, row count
    shard-00000.safetensors       acts/<site> (rows, width) for every site, and per row:
                                  token_ids, doc_index, position, context_index, char_start,
                                  char_end (int64); stat_sum/<site>, stat_sumsq/<site> (float64)
    shard-00000.docs.json         {"first_index": i, "ids": [...]}: ids of documents i, i+1, ...
                                  first referenced in this shard (``doc_index`` -> document id)

Rows are tokens; by default BOS and padding tokens have no rows. Statistics per float site:
``mean`` = (1/N) sum_n x_n and ``mean_sq_norm`` = (1/N) sum_n ||x_n||^2 over every row of the store,
accumulated in float64 from per-shard partial sums (so a resumed harvest has the same numbers).
A common normalisation (SAELens ``normalize_activations="expected_average_only_in"``, Anthropic's
April 2024 update) scales inputs by ``sqrt(d / mean_sq_norm)``; :meth:`ActivationStore.norm_scale`
returns that factor.

**Checksums.** Each shard entry of the manifest records the SHA-256 of its safetensors file
(``sha256``) and of its document table (``docs_sha256``). A store checks a shard the first time it
reads from it (``verify="lazy"``, the default: one extra sequential read per shard, once per
process), checks everything at :meth:`ActivationStore.open` (``verify="all"``) or on
:meth:`ActivationStore.verify_all`, or trusts the files (``verify="none"``). A mismatch raises
:class:`~universality.errors.ArtifactError` naming the shard. Stores written before checksums
existed have no ``sha256`` entries and are read unchecked.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from universality.activations.layout import ROW_FIELDS, acts_key
from universality.activations.readers import MappedRows, StoreReader
from universality.errors import ArtifactError, ConfigError, UnknownSiteError
from universality.io import read_json, verify_sha256
from universality.progress import MIN_BYTES, progress_bar
from universality.sites import Site, as_site, as_sites

__all__ = ["ActivationStore", "MANIFEST", "FORMAT", "ROW_FIELDS", "VERIFY_MODES", "shard_name"]

MANIFEST = "manifest.json"
FORMAT = "activation_store/1"
VERIFY_MODES = ("lazy", "all", "none")


# safetensors dtype codes (https://github.com/huggingface/safetensors, format description)
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


class ActivationStore:
    """A harvested store, read-only. Open with :meth:`open`; stream with :meth:`iter_batches`."""

    def __init__(self, path: Path, manifest: dict[str, Any], verify: str = "lazy") -> None:
        if verify not in VERIFY_MODES:
            raise ConfigError(f"unknown verify mode {verify!r}", f"use one of {list(VERIFY_MODES)}")
        self.path = path
        self.manifest = manifest
        self.verify = verify
        self._entries = _parse_manifest_sites(path, manifest)  # Site -> manifest entry, in manifest order
        self._headers: dict[int, dict[str, tuple[torch.dtype, tuple[int, ...], int]]] = {}
        self._verified: set[int] = set()

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        expect: Mapping[str, Any] | None = None,
        allow_partial: bool = False,
        verify: str = "lazy",
    ) -> "ActivationStore":
        """Open the store at ``path``; ``expect`` checks manifest fields (see :meth:`check`).

        A store whose harvest has not finished raises :class:`ArtifactError` unless
        ``allow_partial`` (then only its complete shards are visible). ``verify`` is ``"lazy"``
        (check each shard's checksum on its first read), ``"all"`` (check every file now) or
        ``"none"``; see the module docstring.
        """
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise ArtifactError(f"{path} is not an activation store (no {MANIFEST})", "harvest into it first, or fix the path")
        manifest = read_json(path / MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArtifactError(f"{path / MANIFEST} is not a {FORMAT} manifest", "re-harvest with this version of universality")
        for entry in manifest.get("shards", []):  # shard files live in the store folder itself, nowhere else
            for field in ("file", "docs"):
                name = entry.get(field) if isinstance(entry, dict) else None
                if name is not None and (not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")):
                    raise ArtifactError(f"{path / MANIFEST} names shard file {name!r} outside the store",
                                        "the manifest is corrupt or forged: delete the store and harvest again")
        store = cls(path, manifest, verify=verify)
        if not manifest.get("complete") and not allow_partial:
            raise ArtifactError(
                f"the harvest in {path} is not complete ({manifest.get('n_rows', 0)} rows so far)",
                "rerun the same harvest to resume it, or pass allow_partial=True",
            )
        if expect:
            store.check(expect)
        if verify == "all":
            store.verify_all()
        return store

    # ----------------------------------------------------------------- checksums
    def _fix(self) -> str:
        return f"the store is corrupt: delete {self.path} and run the same harvest again"

    def verify_shard(self, index: int) -> bool:
        """Check shard ``index`` (its safetensors file and document table) against the manifest.

        Returns False when the manifest records no checksum (an older store), True when checked;
        a mismatch or a missing file raises :class:`ArtifactError` naming the shard.
        """
        entry = self.manifest["shards"][index]
        sha = entry.get("sha256")
        if sha is None:
            return False
        try:
            verify_sha256(self.path / entry["file"], sha, self._fix())
            if entry.get("docs_sha256") is not None:
                verify_sha256(self.path / entry["docs"], entry["docs_sha256"], self._fix())
        except ArtifactError as exc:
            raise ArtifactError(f"shard {index} ({entry['file']}): {exc.problem}", exc.fix) from None
        self._verified.add(index)
        return True

    def verify_all(self) -> int:
        """Check every shard listed in the manifest; returns how many carried checksums (a bar shows
        from :data:`~universality.progress.MIN_BYTES` of shard files on)."""
        shards = self.manifest["shards"]
        size = sum(_file_size(self.path / s["file"]) for s in shards)
        bar = progress_bar(range(len(shards)), "verify store", unit="shard", leave=False, work=size, min_work=MIN_BYTES)
        return sum(self.verify_shard(i) for i in bar)

    def check(self, expect: Mapping[str, Any]) -> None:
        """Raise :class:`ArtifactError` when the manifest does not match ``expect``.

        Keys: ``model``, ``revision``, ``dataset`` (source name), ``subset_hash``, ``dtype``,
        ``packing`` (dict, compared field by field), ``site`` / ``sites`` (must be present).
        """
        m = self.manifest
        for key, want in expect.items():
            if key in ("site", "sites"):
                missing = [s.name for s in as_sites(want) if s not in self._entries]
                if missing:
                    raise ArtifactError(
                        f"store {self.path} has no site(s) {missing} (it has {sorted(m['sites'])})",
                        "harvest those sites, or open the store that has them",
                    )
            elif key == "dtype":
                bad = {s: v["dtype"] for s, v in m["sites"].items() if v["dtype"] != str(want).removeprefix("torch.") and v["kind"] == "float"}
                if bad:
                    raise ArtifactError(f"store {self.path} holds dtype {bad}, not {want}", "re-harvest with that dtype")
            elif key == "dataset":
                have = (m.get("dataset") or {}).get("name")
                if have != want:
                    raise ArtifactError(f"store {self.path} was harvested from dataset {have!r}, not {want!r}", "open the matching store")
            elif key == "packing":
                have = m.get("packing") or {}
                diff = {k: (have.get(k), v) for k, v in dict(want).items() if have.get(k) != v}
                if diff:
                    raise ArtifactError(f"store {self.path} packing differs (have, want): {diff}", "re-harvest with that packing")
            elif key in ("model", "revision", "subset_hash", "family"):
                if m.get(key) != want:
                    raise ArtifactError(f"store {self.path} has {key}={m.get(key)!r}, not {want!r}", "open the matching store or re-harvest")
            else:
                raise ArtifactError(f"unknown expect key {key!r}", "use model, revision, family, site(s), dataset, subset_hash, dtype, packing")

    # ----------------------------------------------------------------- metadata
    @property
    def sites(self) -> list[str]:
        """Site names as the manifest lists them (the keys of the batches this store yields)."""
        return list(self.manifest["sites"])

    @property
    def typed_sites(self) -> tuple[Site, ...]:
        """The same sites as :class:`~universality.sites.Site` objects (parsed once, when the store was opened)."""
        return tuple(self._entries)

    def require(self, sites: str | Site | Sequence[str | Site]) -> tuple[Site, ...]:
        """``sites`` as ``Site`` objects (sorted); :class:`UnknownSiteError` for one the store lacks."""
        parsed = as_sites(sites)
        for s in parsed:
            self._site(s)
        return parsed

    @property
    def n_rows(self) -> int:
        return int(sum(s["rows"] for s in self.manifest["shards"]))

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.manifest["shards"])

    def width(self, site: str | Site) -> int:
        return int(self._site(site)["width"])

    def _site(self, site: str | Site) -> dict[str, Any]:
        s = as_site(site)
        entry = self._entries.get(s)
        if entry is None:
            raise UnknownSiteError(f"store {self.path} has no site {s.name!r} (it has {self.sites})", "harvest that site first")
        return entry

    def stats(self, site: str | Site) -> dict[str, Any]:
        """``{"n", "mean" (Tensor (width,)), "mean_sq_norm"}`` of a float site."""
        entry = self._site(site)
        st = entry.get("stats")
        if st is None:
            raise ArtifactError(f"site {site} ({entry['dtype']}) has no normalisation statistics", "integer sites carry none")
        return {"n": st["n"], "mean": torch.tensor(st["mean"], dtype=torch.float64), "mean_sq_norm": st["mean_sq_norm"]}

    def norm_scale(self, site: str | Site) -> float:
        """``sqrt(width / mean_sq_norm)``: scales inputs so that E||x||^2 = width (see module doc)."""
        st = self.stats(site)
        return math.sqrt(self.width(site) / st["mean_sq_norm"]) if st["mean_sq_norm"] > 0 else 1.0

    @cached_property
    def doc_ids(self) -> list[str]:
        """Document id of every ``doc_index`` value."""
        ids: list[str] = []
        for i, shard in enumerate(self.manifest["shards"]):
            if self.verify != "none" and shard.get("docs_sha256") is not None:
                try:
                    verify_sha256(self.path / shard["docs"], shard["docs_sha256"], self._fix())
                except ArtifactError as exc:
                    raise ArtifactError(f"shard {i} ({shard['docs']}): {exc.problem}", exc.fix) from None
            table = read_json(self.path / shard["docs"])
            if table["first_index"] != len(ids):
                raise ArtifactError(f"document table {shard['docs']} is out of order", "the store is corrupt; re-harvest")
            ids.extend(table["ids"])
        return ids

    def describe(self) -> dict[str, Any]:
        """Self-describing fields for downstream artifacts (SAE ``meta``)."""
        m = self.manifest
        return {k: m.get(k) for k in ("model", "revision", "family", "subset_hash", "dataset", "packing", "key")} | {
            "store": str(self.path),
            "n_rows": self.n_rows,
        }

    # ----------------------------------------------------------------- reading
    def _shard_path(self, index: int) -> Path:
        return self.path / self.manifest["shards"][index]["file"]

    def _header(self, shard: int) -> dict[str, tuple[torch.dtype, tuple[int, ...], int]]:
        """``key -> (dtype, shape, absolute byte offset)`` from a shard's safetensors header (cached)."""
        cached = self._headers.get(shard)
        if cached is not None:
            return cached
        if self.verify != "none" and shard not in self._verified:
            self.verify_shard(shard)  # first read of this shard: check its bytes once
        path = self._shard_path(shard)
        try:
            with open(path, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
            size = path.stat().st_size
            out = {}
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                if 8 + n + end > size:
                    raise ValueError("tensor data runs past the end of the file")
                out[key] = (_ST_DTYPES[info["dtype"]], tuple(info["shape"]), 8 + n + begin)
        except (OSError, ValueError, KeyError, struct.error) as exc:
            raise ArtifactError(f"cannot read {path} ({exc})", "the shard is missing or corrupt; re-harvest") from None
        self._headers[shard] = out
        return out

    def read_rows_into(self, shard: int, key: str, lo: int, hi: int, out: torch.Tensor) -> None:
        """Read rows ``[lo, hi)`` of tensor ``key`` straight into the contiguous tensor ``out``."""
        dtype, shape, offset = self._header(shard)[key]
        row_bytes = math.prod(shape[1:]) * torch.empty(0, dtype=dtype).element_size()
        if out.dtype != dtype or not out.is_contiguous() or out.shape[0] != hi - lo:
            raise ArtifactError(f"buffer for {key} has the wrong dtype or shape", "allocate it with read_rows")
        view = out.view(-1).view(torch.uint8).numpy() if out.numel() else None
        if view is None:
            return
        with open(self._shard_path(shard), "rb", buffering=0) as fh:
            fh.seek(offset + lo * row_bytes)
            got = fh.readinto(memoryview(view))
        if got != (hi - lo) * row_bytes:
            raise ArtifactError(f"{self._shard_path(shard)} is truncated", "re-harvest the store")

    def map_rows(self, shard: int, key: str, lo: int, hi: int) -> MappedRows | None:
        """Rows ``[lo, hi)`` of tensor ``key`` mapped read-only (no copy: see
        :class:`~universality.activations.readers.MappedRows`); ``None`` when there are no bytes to map."""
        dtype, shape, offset = self._header(shard)[key]
        row_bytes = math.prod(shape[1:]) * torch.empty(0, dtype=dtype).element_size()
        if hi <= lo or row_bytes == 0:
            return None
        start, path = offset + lo * row_bytes, self._shard_path(shard)
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < start + (hi - lo) * row_bytes:
                    raise ArtifactError(f"{path} is truncated", "re-harvest the store")  # mapped, it would fault later
                return MappedRows.map(fh.fileno(), start, hi - lo, tuple(shape[1:]), dtype)
        except OSError as exc:
            raise ArtifactError(f"cannot read {path} ({exc})", "the shard is missing or corrupt; re-harvest") from None

    def key_info(self, shard: int, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        if key not in self._header(shard):
            raise ArtifactError(f"shard {shard} of {self.path} has no tensor {key!r}", "re-harvest the store")
        dtype, shape, _ = self._header(shard)[key]
        return dtype, shape

    def read_rows(self, shard: int, keys: Sequence[str], lo: int = 0, hi: int | None = None) -> dict[str, torch.Tensor]:
        """Rows ``[lo, hi)`` of shard ``shard`` for tensor ``keys`` (``acts/<site>`` or a row field)."""
        out = {}
        for k in keys:
            dtype, shape = self.key_info(shard, k)
            end = shape[0] if hi is None else min(hi, shape[0])
            t = torch.empty((end - lo, *shape[1:]), dtype=dtype)
            self.read_rows_into(shard, k, lo, end, t)
            out[k] = t
        return out

    def rows(self, fields: Sequence[str] = ROW_FIELDS, sites: str | Site | Sequence[str | Site] = ()) -> dict[str, torch.Tensor]:
        """Every row of the named fields/sites concatenated in store order (small stores, tests);
        keyed by field and site name."""
        parsed = as_sites(sites) if sites else ()
        out_name = {acts_key(s): s.name for s in parsed}
        keys = list(fields) + list(out_name)
        parts = [self.read_rows(i, keys) for i in range(len(self.manifest["shards"]))]
        return {out_name.get(k, k): torch.cat([p[k] for p in parts]) for k in keys}

    def iter_batches(
        self,
        sites: str | Site | Sequence[str | Site] | None = None,
        batch_size: int = 4096,
        shuffle_buffer: int = 0,
        seed: int = 0,
        epochs: int | None = 1,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        fields: Sequence[str] = (),
    ):
        """A resumable :class:`~universality.activations.readers.StoreReader` over this store."""
        return StoreReader(
            self,
            sites=sites,
            batch_size=batch_size,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            epochs=epochs,
            drop_last=drop_last,
            device=device,
            dtype=dtype,
            fields=fields,
        )

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, model={self.manifest.get('model')!r}, sites={self.sites}, rows={self.n_rows})"


def _parse_manifest_sites(path: Path, manifest: Mapping[str, Any]) -> dict[Site, dict[str, Any]]:
    """The manifest's ``sites`` table keyed by :class:`~universality.sites.Site`: site names are
    parsed once, when a store is opened (the file keeps them as strings)."""
    table = manifest.get("sites") if isinstance(manifest, Mapping) else None
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ArtifactError(f"{path / MANIFEST} has a malformed sites table", "the store is corrupt; re-harvest it")
    out: dict[Site, dict[str, Any]] = {}
    for name, entry in table.items():
        try:
            out[as_site(name)] = entry
        except UnknownSiteError as exc:
            raise ArtifactError(f"{path / MANIFEST} lists a bad site: {exc.problem}", "the store is corrupt; re-harvest it") from None
    return out


def _file_size(path: Path) -> int:
    """Bytes of ``path`` (0 when it is missing: :meth:`ActivationStore.verify_shard` names it)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
