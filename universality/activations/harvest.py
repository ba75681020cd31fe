"""Harvest activations of many sites in one forward pass into an :class:`ActivationStore`.

``harvest(adapter, documents, sites, out_dir)`` packs the documents with the model's tokenizer
(:mod:`universality.data.packing`), runs ``adapter.capture`` once per batch of contexts for every
requested site (MoE routing sites included), keeps the text-token rows (BOS and padding rows are
left out unless ``include_bos=True``) and writes shards of about ``shard_rows`` rows.

Writing overlaps the forward: tokenisation runs one batch ahead on a prefetch thread and shards are
saved by a background writer thread (:class:`~universality.activations.writer.ShardWriter`).

**Crash safety.** Every file is written under a temporary name and renamed
(:mod:`universality.io`); a shard's safetensors file and document table are on disk before the
manifest that lists them, and each manifest entry carries their SHA-256 (checked by the store
when it reads them). A kill at any moment leaves a manifest whose listed files are all whole.

**Resume.** The manifest records a key (hash of model, revision, sites, dataset, subset, packing,
dtype and shard settings) and ``contexts_done`` after each complete shard. Running the same
harvest again on the same folder continues after the last complete shard (packing is
deterministic, so it skips exactly the contexts already written); a finished harvest returns at
once; a folder holding a different harvest raises :class:`~universality.errors.ArtifactError`
unless ``overwrite=True`` (a manifest that lists no shard holds no rows and is simply replaced).

**Failures.** The model's sites, the tokenizer (BOS when the packing needs one) and the context
length (at most the model's positions, :func:`max_positions`) are checked before anything is
written. A harvest that fails before its first shard (empty or undecodable text, an interruption)
removes what it wrote: its manifest, and the folders it created, so a corrected retry into the same
folder starts clean. A failure after a shard keeps the partial store, which the same harvest resumes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from jaxtyping import Float
from torch import Tensor

import universality
from universality.activations.layout import acts_key
from universality.activations.store import FORMAT, MANIFEST, ActivationStore, shard_name
from universality.activations.writer import ShardWriter, shard_partial_stats
from universality.data.eval_tokens import SpanTokens
from universality.data.packing import PAD, TEXT, PackedBatch, Packer, PackingConfig
from universality.data.sources import Document, as_documents
from universality.data.subsets import Subset
from universality.errors import ArtifactError, ConfigError, DataError
from universality.io import is_temp_name, read_json, save_tensors_digest, sha256_file, stable_hash, write_json
from universality.progress import model_label, progress_bar
from universality.sites import Site, as_site, as_sites, require_sites

__all__ = ["HarvestConfig", "harvest", "check_sites", "site_table", "check_context_len", "max_positions", "capture_rows",
           "span_activations", "harvest_label"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class HarvestConfig:
    """How a harvest runs (what it reads is given to :func:`harvest` directly)."""

    packing: PackingConfig = PackingConfig()
    batch_size: int = 8  # contexts per forward pass
    shard_rows: int = 65536  # a shard is closed once it holds at least this many rows
    dtype: str = "float32"  # storage dtype of float sites
    include_bos: bool = False
    max_tokens: int | None = None  # stop after this many rows
    background_writer: bool = True
    max_pending_shards: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.packing, PackingConfig):
            raise ConfigError("HarvestConfig.packing must be a PackingConfig", "pass PackingConfig(...)")
        for name in ("batch_size", "shard_rows", "max_pending_shards"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"HarvestConfig.{name} must be a positive integer, got {value!r}", "fix it")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"unknown storage dtype {self.dtype!r}", f"use one of {sorted(_DTYPES)}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise ConfigError(f"max_tokens must be a positive integer or None, got {self.max_tokens!r}", "fix it")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def site_table(adapter) -> Mapping[Site, int]:
    """The adapter's sites, typed (``Site -> width``): its ``site_table`` (every
    :class:`~models.base.ModelAdapter` has one), else its ``sites`` names parsed here, at the edge."""
    table = getattr(adapter, "site_table", None)
    if table is not None:
        return table
    return {as_site(n): int(w) for n, w in adapter.sites.items()}


def check_sites(adapter, sites: str | Site | Sequence[str | Site]) -> tuple[Site, ...]:
    """``sites`` as sorted :class:`~universality.sites.Site` objects (names are parsed here, once);
    :class:`~universality.errors.UnknownSiteError` listing the model's sites when it lacks one."""
    parsed = as_sites(sites)
    require_sites(parsed, site_table(adapter), f"model {getattr(adapter, 'name', '?')!r}")
    return parsed


_POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx")


def max_positions(adapter) -> int | None:
    """The longest input the model takes: its config's ``n_positions`` (GPT-2),
    ``max_position_embeddings`` (GPT-NeoX, Mixtral...) or ``n_ctx`` (TransformerLens); None when it has
    no limit (Mamba) or does not say."""
    own = getattr(adapter, "max_positions", None)
    if isinstance(own, int) and not isinstance(own, bool):
        return own
    model = getattr(adapter, "model", None)
    for config in (getattr(model, "config", None), getattr(model, "cfg", None)):
        for name in _POSITION_FIELDS:
            value = getattr(config, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_context_len(adapter, context_len: int) -> None:
    """Raise :class:`ConfigError` when contexts of ``context_len`` tokens exceed the model's positions."""
    limit = max_positions(adapter)
    if limit is not None and context_len > limit:
        raise ConfigError(
            f"context_len={context_len} is longer than model {getattr(adapter, 'name', '?')!r} takes ({limit} positions)",
            f"use contexts of at most {limit} tokens (PackingConfig(context_len=...), or max_len= of evaluation spans)",
        )


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what ``mkdir(parents=True)`` creates)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _discard_stub(out_dir: Path, created: Path | None) -> None:
    """Remove what a harvest that completed no shard wrote: its manifest, stray shard files and
    temporaries, then the folders it created (when empty)."""
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if (p.name == MANIFEST or p.name.startswith("shard-") or is_temp_name(p.name)) and p.is_file():
                p.unlink(missing_ok=True)
    if created is None:
        return
    for folder in (out_dir, *out_dir.parents):
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone
            return
        if folder == created:
            return


def _holds_rows(manifest: Any) -> bool:
    """Whether a manifest found in the output folder lists any data (a stub without shards does not)."""
    return not isinstance(manifest, dict) or bool(manifest.get("shards")) or bool(manifest.get("complete"))


def _resumable(out_dir: Path, key: str, overwrite: bool) -> dict[str, Any] | None:
    """The manifest in ``out_dir`` when it is this harvest's (to resume, or complete), else None (start
    afresh); :class:`ArtifactError` when it holds rows of another harvest and ``overwrite`` is False."""
    path = out_dir / MANIFEST
    if not path.is_file() or overwrite:
        return None
    old = read_json(path)
    if isinstance(old, dict) and old.get("key") == key:
        return old
    if _holds_rows(old):
        info = old if isinstance(old, dict) else {}
        raise ArtifactError(
            f"{out_dir} holds a different harvest (model {info.get('model')!r}, sites {sorted(info.get('sites') or {})})",
            "choose another out_dir, or pass overwrite=True to replace it",
        )
    return None


def _new_manifest(adapter, key: str, request: dict[str, Any], subset: Subset | None, widths: dict[Site, int],
                  cfg: HarvestConfig) -> dict[str, Any]:
    """The manifest of a harvest that has written nothing yet."""
    return {
        "format": FORMAT,
        "key": key,
        "family": getattr(adapter, "family", None),
        **{k: request[k] for k in ("model", "revision", "dataset", "subset_hash", "packing", "include_bos")},
        "subset": subset.describe() if subset is not None else None,
        "sites": {
            s.name: {"width": w, "kind": s.kind, "dtype": "int64" if s.is_integer else cfg.dtype, "stats": None}
            for s, w in widths.items()
        },
        "harvest": {k: request[k] for k in ("batch_size", "shard_rows", "max_tokens")},
        "row_fields": ["token_ids", "doc_index", "position", "context_index", "char_start", "char_end"],
        "shards": [],
        "n_rows": 0,
        "n_tokens": 0,
        "contexts_done": 0,
        "complete": False,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def harvest_label(adapter) -> str:
    """The harvest bar's description: ``harvest <model>@<revision>`` (:func:`~universality.progress.model_label`)."""
    return f"harvest {model_label(getattr(adapter, 'name', None), getattr(adapter, 'revision', None))}"


def keep_mask(batch: PackedBatch, include_bos: bool = False) -> Tensor:
    """Which tokens get rows: text tokens, plus BOS tokens when ``include_bos`` (never padding)."""
    return batch.kind == TEXT if not include_bos else batch.kind != PAD


def capture_rows(
    adapter, batch: PackedBatch, sites: str | Site | Sequence[str | Site], include_bos: bool = False,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, Float[Tensor, "rows width"]], Tensor]:
    """One forward pass over ``batch``; returns ``(site name -> kept rows, keep mask (batch, pos))``.

    ``sites`` are :class:`~universality.sites.Site` objects (names are accepted too and converted
    once). Kept rows are the text tokens (and BOS tokens when ``include_bos``) in row-major order;
    rows stay on the model's device.
    """
    check_context_len(adapter, int(batch.input_ids.shape[1]))
    parsed = as_sites(sites)
    keep = keep_mask(batch, include_bos)
    acts = adapter.capture(batch.input_ids, parsed, attention_mask=batch.attention_mask, dtype=dtype)
    flat_idx = keep.flatten().nonzero().squeeze(1)
    out, idx_dev = {}, {}
    for s in parsed:
        a = acts[s.name]
        if a.device not in idx_dev:
            idx_dev[a.device] = flat_idx.to(a.device, non_blocking=True)
        out[s.name] = a.flatten(0, 1).index_select(0, idx_dev[a.device])
    return out, keep


def _prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Run ``it`` on a background thread, ``depth`` items ahead (tokenisation overlaps the forward)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def run():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    t = threading.Thread(target=run, name="pack-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _versions() -> dict[str, str]:
    return {"universality": universality.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


class _ShardBuffer:
    """Host buffers for one shard, filled batch by batch (device->host copies land here directly).

    Float sites on a CUDA device get their statistics partial sums on the device as they arrive;
    otherwise the writer thread computes them from the buffer.
    """

    def __init__(self, widths: dict[Site, int], dtypes: dict[Site, torch.dtype], fields: Sequence[str], capacity: int,
                 pin: bool) -> None:
        self.acts = {s: torch.empty((capacity, w), dtype=dtypes[s], pin_memory=pin) for s, w in widths.items()}
        self.fields = {f: torch.empty(capacity, dtype=torch.int64) for f in fields}
        self.dtypes = dtypes
        self.sums: dict[str, Tensor] = {}
        self.n = 0

    def add(self, acts: dict[str, Tensor], rows: Tensor, fields: dict[str, Tensor]) -> None:
        """Append ``acts[site name].flatten(0, 1)[rows]`` (``capture``'s output, (batch, pos, width)) and
        the row fields."""
        lo, hi = self.n, self.n + rows.shape[0]
        idx: dict[torch.device, Tensor] = {}
        for s, shard_acts in self.acts.items():
            name = s.name
            flat = acts[name].flatten(0, 1)
            if flat.device not in idx:
                idx[flat.device] = rows.to(flat.device, non_blocking=True)
            target = shard_acts[lo:hi]
            if not flat.is_cuda and flat.dtype == target.dtype:
                torch.index_select(flat, 0, idx[flat.device], out=target)  # gather straight into the shard
                continue
            picked = flat.index_select(0, idx[flat.device])
            picked = picked.to(target.dtype) if picked.is_floating_point() else picked
            if picked.is_cuda and picked.is_floating_point():
                for key, v in shard_partial_stats({name: picked}).items():
                    self.sums[key] = self.sums[key] + v if key in self.sums else v
            target.copy_(picked, non_blocking=picked.is_cuda)
        for f, t in fields.items():
            self.fields[f][lo:hi].copy_(t)
        self.n = hi

    def reset(self) -> "_ShardBuffer":
        self.sums, self.n = {}, 0
        return self

    def views(self) -> tuple[dict[Site, Tensor], dict[str, Tensor], dict[str, Tensor] | None]:
        acts = {s: t[: self.n] for s, t in self.acts.items()}
        fields = {f: t[: self.n] for f, t in self.fields.items()}
        stats = {k: v.cpu() for k, v in self.sums.items()} if self.sums else None
        return acts, fields, stats


class _StoreBuilder:
    """Owns the manifest while a harvest runs; ``write_shard`` runs on the writer thread."""

    def __init__(self, out_dir: Path, manifest: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.manifest = manifest
        self.sums: dict[str, Tensor] = {}
        self.sumsq: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.pool: queue.SimpleQueue = queue.SimpleQueue()  # shard buffers free for reuse

    def add_stats(self, stats: dict[str, Tensor], rows: int) -> None:
        for key, value in stats.items():
            kind, site = key.split("/", 1)
            if kind == "stat_sum":
                self.sums[site] = self.sums[site] + value if site in self.sums else value.clone()
                self.counts[site] = self.counts.get(site, 0) + rows
            else:
                self.sumsq[site] = self.sumsq.get(site, 0.0) + float(value.item())

    def refresh_stats(self) -> None:
        for site, entry in self.manifest["sites"].items():
            n = self.counts.get(site, 0)
            if entry["kind"] == "float" and n > 0:
                entry["stats"] = {"n": n, "mean": (self.sums[site] / n).tolist(), "mean_sq_norm": self.sumsq[site] / n}

    def write_shard(self, item: tuple[int, dict[Site, Tensor], dict[str, Tensor], dict[str, Tensor] | None, list[str], int,
                                      int, int, _ShardBuffer]) -> None:
        index, acts, fields, stats, doc_ids, first_doc, contexts_done, rows, buffer = item
        named = {s.name: a for s, a in acts.items()}  # statistics keys (stat_sum/<name>) go to disk
        computed = shard_partial_stats({n: a for n, a in named.items() if stats is None or f"stat_sum/{n}" not in stats})
        stats = (stats or {}) | computed
        tensors = {acts_key(s): a for s, a in acts.items()} | fields | stats
        fname = shard_name(index)
        docs_name = fname.replace(".safetensors", ".docs.json")
        docs_sha = sha256_file(write_json(self.out_dir / docs_name, {"first_index": first_doc, "ids": doc_ids}))
        shard_sha = save_tensors_digest(self.out_dir / fname, tensors, metadata={"format": FORMAT, "shard": str(index)})
        self.add_stats(stats, rows)
        self.refresh_stats()
        self.manifest["shards"].append({"file": fname, "docs": docs_name, "rows": rows, "contexts_end": contexts_done,
                                        "sha256": shard_sha, "docs_sha256": docs_sha})
        self.manifest["contexts_done"] = contexts_done
        self.manifest["n_rows"] = self.manifest["n_tokens"] = self.manifest["n_rows"] + rows
        write_json(self.out_dir / MANIFEST, self.manifest)
        del acts, named, fields, tensors
        self.pool.put(buffer)


def _fill_store(adapter, documents: Iterable[Document], sites: tuple[Site, ...], widths: dict[Site, int], packer: Packer,
                manifest: dict[str, Any], out_dir: Path, cfg: HarvestConfig, progress: bool) -> ActivationStore:
    """Run the forward passes and write the shards of the harvest ``manifest`` describes (resuming
    after its complete shards), then mark it complete."""
    manifest_path = out_dir / MANIFEST
    builder = _StoreBuilder(out_dir, manifest)
    if manifest["shards"]:  # rebuild running statistics from the complete shards (same partial sums, same order)
        previous = ActivationStore(out_dir, manifest)
        for i, shard in enumerate(manifest["shards"]):
            keys = [k for k in previous._header(i) if k.startswith("stat_")]
            builder.add_stats(previous.read_rows(i, keys), int(shard["rows"]))
    for stray in out_dir.iterdir():  # temporary files of an interrupted write
        if is_temp_name(stray.name) and stray.is_file():
            stray.unlink(missing_ok=True)

    start_context = int(manifest["contexts_done"])
    rows_done = int(manifest["n_rows"])
    shard_index = len(manifest["shards"])
    next_doc = len(ActivationStore(out_dir, manifest).doc_ids) if manifest["shards"] else 0
    writer = ShardWriter(builder.write_shard, max_pending=cfg.max_pending_shards, threaded=cfg.background_writer)
    store_dtypes = {s: torch.int64 if s.is_integer else cfg.torch_dtype for s in sites}
    capacity = cfg.shard_rows + cfg.batch_size * cfg.packing.context_len
    device = getattr(adapter, "device", torch.device("cpu"))
    on_cuda = torch.device(device).type == "cuda"

    def new_buffer() -> _ShardBuffer:  # buffers come back from the writer once their shard is on disk
        try:
            return builder.pool.get_nowait().reset()
        except queue.Empty:
            return _ShardBuffer(widths, store_dtypes, manifest["row_fields"], capacity, pin=on_cuda)

    buf = new_buffer()
    contexts_done = start_context

    def flush() -> None:
        nonlocal buf, shard_index, next_doc
        if buf.n == 0:
            return
        if on_cuda:
            torch.cuda.current_stream(device).synchronize()  # the non-blocking host copies have landed
        acts, fields, stats = buf.views()
        max_doc = int(fields["doc_index"].max().item()) if fields["doc_index"].numel() else next_doc - 1
        hi = max(max_doc + 1, next_doc)
        doc_ids = packer.doc_ids[next_doc:hi]
        writer.submit((shard_index, acts, fields, stats, doc_ids, next_doc, contexts_done, buf.n, buf))
        shard_index += 1
        next_doc = hi
        buf = new_buffer()

    limit = cfg.max_tokens
    bar = progress_bar(desc=harvest_label(adapter), total=limit, initial=rows_done, unit="tok", dynamic_ncols=True,
                       progress=progress)
    finished = False
    batches = _prefetch(packer.batches(documents, cfg.batch_size, start_context=start_context))
    try:
        with torch.no_grad():
            for batch in batches:
                keep = keep_mask(batch, cfg.include_bos)
                flat_keep = keep.flatten().nonzero().squeeze(1)
                take = len(flat_keep) if limit is None else min(len(flat_keep), limit - rows_done)
                flat_keep = flat_keep[:take]
                acts = adapter.capture(batch.input_ids, sites, attention_mask=batch.attention_mask)
                pos = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)
                ctx = batch.context_index.view(-1, 1).expand_as(batch.input_ids)
                fields = {f: t.reshape(-1).index_select(0, flat_keep) for f, t in (
                    ("token_ids", batch.input_ids), ("doc_index", batch.doc_index), ("position", pos),
                    ("context_index", ctx), ("char_start", batch.char_start), ("char_end", batch.char_end))}
                buf.add(acts, flat_keep, fields)
                rows_done += take
                contexts_done = int(batch.context_index[-1]) + 1
                bar.update(take)
                if limit is not None and rows_done >= limit:
                    break
                if buf.n >= cfg.shard_rows:
                    flush()
            finished = True
            flush()
    finally:
        batches.close()  # stops the prefetch thread
        bar.close()
        writer.close()  # completes queued shards even when the loop raised
    if finished:
        if manifest["n_rows"] == 0:
            raise DataError("the harvest produced no rows (the documents hold no text tokens: empty texts?)",
                            "pass non-empty documents")
        manifest["complete"] = True
        builder.refresh_stats()
        write_json(manifest_path, manifest)
    return ActivationStore.open(out_dir)


def harvest(
    adapter,
    texts_or_dataset: Iterable[Document] | Sequence[str] | Subset,
    sites: str | Site | Sequence[str | Site],
    out_dir: str | os.PathLike,
    cfg: HarvestConfig | None = None,
    *,
    dataset_name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> ActivationStore:
    """Harvest ``sites`` of ``adapter`` on the documents into ``out_dir``; returns the opened store.

    ``texts_or_dataset`` is a :class:`~universality.data.sources.Source`, a
    :class:`~universality.data.subsets.Subset` (its hash is recorded), a list of documents or a list
    of strings. ``overrides`` set :class:`HarvestConfig` fields (``batch_size=16``, ...).
    """
    cfg = cfg or HarvestConfig()
    if overrides:
        cfg = HarvestConfig(**(asdict(cfg) | {"packing": cfg.packing} | overrides))
    parsed = check_sites(adapter, sites)
    packer = Packer(adapter.tokenizer, cfg.packing)  # checks the tokenizer before anything is written
    check_context_len(adapter, cfg.packing.context_len)
    out_dir = Path(out_dir)
    subset = texts_or_dataset if isinstance(texts_or_dataset, Subset) else None
    documents = as_documents(texts_or_dataset)
    describe = getattr(documents, "describe", None)
    dataset = describe() if callable(describe) and subset is None else {"name": getattr(documents, "name", "documents")}
    if subset is not None:
        dataset = {"name": subset.source_name}
    if dataset_name:
        dataset["name"] = dataset_name
    table = site_table(adapter)
    widths = {s: int(table[s]) for s in parsed}
    request = {
        "model": getattr(adapter, "name", None),
        "revision": getattr(adapter, "revision", None),
        "sites": [s.name for s in parsed],  # names: the key (and the manifest) is what goes to disk
        "dataset": dataset,
        "subset_hash": subset.hash if subset is not None else None,
        "packing": asdict(cfg.packing),
        "dtype": cfg.dtype,
        "include_bos": cfg.include_bos,
        "batch_size": cfg.batch_size,
        "shard_rows": cfg.shard_rows,
        "max_tokens": cfg.max_tokens,
    }
    key = stable_hash(request)

    manifest_path = out_dir / MANIFEST
    created = _first_missing(out_dir)
    manifest: dict[str, Any] | None = None
    try:
        manifest = _resumable(out_dir, key, overwrite)
        if manifest is not None and manifest.get("complete"):
            return ActivationStore.open(out_dir)
        if manifest is None:
            if out_dir.exists():  # the manifest goes first: a kill midway leaves no manifest listing missing shards
                manifest_path.unlink(missing_ok=True)
                for p in out_dir.glob("shard-*"):
                    p.unlink()
            out_dir.mkdir(parents=True, exist_ok=True)
            manifest = _new_manifest(adapter, key, request, subset, widths, cfg)
            write_json(manifest_path, manifest)
        return _fill_store(adapter, documents, parsed, widths, packer, manifest, out_dir, cfg, progress)
    except BaseException:
        if manifest is not None and not manifest["shards"]:  # nothing worth keeping: leave no stub behind
            _discard_stub(out_dir, created)
        raise


@torch.no_grad()
def span_activations(
    adapter, tokens: SpanTokens, sites: str | Site | Sequence[str | Site], batch_size: int = 16,
    dtype: torch.dtype | None = torch.float32, progress: bool = True,
) -> dict[str, Float[Tensor, "n_text_tokens width"]]:
    """Activations of the text tokens of shared evaluation spans, rows in ``SpanTokens`` order.

    The rows line up with :func:`universality.data.align_span_tokens` (side a or b), so
    ``alignment.pool(rows, side)`` puts two models on the same units. A bar (``spans <model>@<revision>``)
    shows for passes of at least :data:`~universality.progress.MIN_WORK` token x width values.
    """
    parsed = check_sites(adapter, sites)
    out: dict[Site, list[Tensor]] = {s: [] for s in parsed}
    n_spans = tokens.input_ids.shape[0]
    table = site_table(adapter)
    work = tokens.input_ids.numel() * sum(int(table[s]) for s in parsed)
    label = model_label(getattr(adapter, "name", None), getattr(adapter, "revision", None))
    for i in progress_bar(range(0, n_spans, batch_size), f"spans {label}", leave=False, progress=progress, work=work):
        sl = slice(i, i + batch_size)
        batch = PackedBatch(
            input_ids=tokens.input_ids[sl], attention_mask=tokens.attention_mask[sl], doc_index=tokens.kind[sl] * 0,
            char_start=tokens.char_spans[sl][..., 0], char_end=tokens.char_spans[sl][..., 1], kind=tokens.kind[sl],
            context_index=torch.arange(i, min(i + batch_size, n_spans)),
        )
        acts, _ = capture_rows(adapter, batch, parsed, include_bos=False, dtype=dtype)
        for s in parsed:
            out[s].append(acts[s.name].cpu())
    return {s.name: torch.cat(v) for s, v in out.items()}

