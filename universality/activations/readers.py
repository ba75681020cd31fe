"""Resumable activation readers with a bounded shuffle buffer.

Every reader yields ``dict[site -> Float[Tensor, "batch width"]]`` and has ``state_dict()`` /
``load_state_dict()``; iterating a reader continues from its current position.

**The row stream.** An epoch is a sequence of *groups*; a group is at most ``shuffle_buffer`` rows
(for a store: row ranges of shards, visited in an order permuted by ``(seed, epoch)`` and packed
greedily into groups; for live harvesting, :class:`~universality.activations.live.LiveReader`: a
fixed number of contexts). Each group is loaded, its rows are permuted with a generator seeded by
``(seed, epoch, group)`` and emitted in that order; batches are consecutive slices of the
concatenated stream and may cross group boundaries. The position ``(epoch, group, offset)``
therefore fixes the next row exactly: a reader restored from a ``state_dict`` yields the same
batches an uninterrupted reader would have yielded. Without a shuffle buffer (``shuffle_buffer=0``) the rows come in store order.

**Memory.** At most one group plus one partial batch is resident: ``max(shuffle_buffer,
piece_rows) + batch_size`` rows, whatever the size of the store (``resident_rows`` records the
largest count seen, for tests).

**Copies.** A shuffled group that is one row range of one shard is not copied into a buffer: the
range is mapped read-only (:class:`MappedRows`; the page cache is the shuffle buffer) and each
batch is gathered once, straight out of it, into the batch tensor (page-locked when the batches go
to a CUDA device, so the host-to-device copy is asynchronous and needs no staging copy). Other
groups are read into a reused buffer and gathered from there; batches that cross a group boundary
are gathered into one tensor, not concatenated. In store order (no shuffle buffer) every group is
one range and is mapped the same way; each batch is one copy of its rows out of the page cache
(``read()`` into a fresh group buffer faulted in every page of it and ran at a quarter of the
speed). With ``map_files = False`` groups are read into buffers and in-order batches are views of them.
"""

from __future__ import annotations

import mmap
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from universality.activations.layout import ROW_FIELDS, acts_key
from universality.errors import ConfigError
from universality.io import stable_hash
from universality.sites import Site
from universality.zoo.lineage import lineage_of

__all__ = ["DevicePrefetcher", "MappedRows", "RowReader", "StoreReader", "plan_groups", "store_provenance"]

_MIX = 0x9E3779B97F4A7C15


def _seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + _MIX) % (1 << 63)
    return h


class MappedRows:
    """``rows`` rows of one tensor of a file, mapped read-only (``mmap``): nothing is copied until rows
    are gathered out of it (:func:`gather_rows`). The mapping lives as long as this object (and its
    ``array``); the pages are the kernel's page cache, so they are resident only while mapped.

    ``array`` is a ``(rows, row_bytes)`` uint8 view of the mapping; ``dtype`` and ``shape`` describe
    the rows as a tensor.
    """

    __slots__ = ("array", "dtype", "shape")

    def __init__(self, array: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        self.array, self.dtype, self.shape = array, dtype, tuple(shape)

    @classmethod
    def map(cls, fileno: int, start: int, rows: int, row_shape: tuple[int, ...], dtype: torch.dtype) -> "MappedRows":
        """Map ``rows`` rows of ``row_shape``/``dtype`` starting at byte ``start`` of the open file ``fileno``
        (read-only, pages read in at once where the platform can: one sequential read, not a fault per page)."""
        row_bytes = _row_bytes(row_shape, dtype)
        n_bytes = rows * row_bytes
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        if hasattr(mmap, "MAP_SHARED"):
            m = mmap.mmap(fileno, start + n_bytes - aligned, offset=aligned, prot=mmap.PROT_READ,
                          flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        else:  # pragma: no cover - not POSIX
            m = mmap.mmap(fileno, start + n_bytes - aligned, offset=aligned, access=mmap.ACCESS_READ)
        array = np.frombuffer(m, dtype=np.uint8, count=n_bytes, offset=start - aligned).reshape(rows, row_bytes)
        return cls(array, dtype, (rows, *row_shape))

    def rows(self, lo: int, hi: int) -> Tensor:
        """A copy of rows ``[lo, hi)`` as a tensor."""
        return torch.from_numpy(self.array[lo:hi].copy()).view(self.dtype).view(hi - lo, *self.shape[1:])


def _row_bytes(row_shape: Sequence[int], dtype: torch.dtype) -> int:
    n = 1
    for d in row_shape:
        n *= int(d)
    return n * torch.empty(0, dtype=dtype).element_size()


def _rows_u8(t: Tensor | MappedRows) -> np.ndarray | None:
    """Rows of ``t`` as a ``(rows, row_bytes)`` uint8 numpy array sharing its memory, or ``None`` (not
    on the CPU, not contiguous, empty)."""
    if isinstance(t, MappedRows):
        return t.array
    if t.device.type != "cpu" or t.dim() == 0 or t.numel() == 0 or not t.is_contiguous():
        return None
    return t.view(torch.uint8).view(t.shape[0], -1).numpy()


def gather_rows(src: Tensor | MappedRows, index: Tensor, out: Tensor) -> None:
    """``out[i] = src[index[i]]``: one copy per row, written straight into ``out`` (a contiguous slice
    of a batch tensor). On the CPU this is ``numpy.take`` on the rows as bytes: single-threaded,
    memcpy-bound, and far cheaper than a parallel ``index_select`` on a busy machine."""
    a = _rows_u8(src)
    o = _rows_u8(out) if a is not None else None
    if a is not None and o is not None:
        # indices are in range, so "clip" changes nothing; it lets numpy write into out unbuffered
        np.take(a, index.numpy(), axis=0, out=o, mode="clip")
    elif isinstance(src, MappedRows):
        out.copy_(torch.from_numpy(np.take(src.array, index.numpy(), axis=0)).view(src.dtype).view(out.shape))
    elif out.numel():
        torch.index_select(src, 0, index.to(src.device), out=out)


def _take_rows(t: Tensor | MappedRows, sl: slice) -> Tensor:
    return t.rows(sl.start, sl.stop) if isinstance(t, MappedRows) else t[sl]


def plan_groups(pieces: Sequence[tuple[int, int, int]], shuffle_buffer: int, seed: int, epoch: int) -> list[list[tuple[int, int, int]]]:
    """The groups of one epoch: row ranges ``(shard, lo, hi)`` in an order permuted by ``(seed, epoch)``,
    packed greedily into groups of at most ``shuffle_buffer`` rows (one range per group unshuffled)."""
    if shuffle_buffer <= 0:
        return [[p] for p in pieces]
    g = torch.Generator().manual_seed(_seed(seed, epoch, 1 << 20))
    groups, current, rows = [], [], 0
    for p in (pieces[i] for i in torch.randperm(len(pieces), generator=g).tolist()):
        n = p[2] - p[1]
        if current and rows + n > shuffle_buffer:
            groups.append(current)
            current, rows = [], 0
        current.append(p)
        rows += n
    if current:
        groups.append(current)
    return groups


def store_provenance(store) -> dict[str, Any]:
    """A store manifest's ``model``, ``revision``, ``dataset`` (its name), ``subset_hash`` and the zoo ``lineage``
    of that model (see :meth:`StoreReader.provenance`)."""
    m = store.manifest
    dataset = m.get("dataset")
    model = m.get("model")
    return {"model": model, "revision": m.get("revision"),
            "dataset": dataset.get("name") if isinstance(dataset, Mapping) else dataset,
            "subset_hash": m.get("subset_hash"), "lineage": lineage_of(model) if isinstance(model, str) else None}


class RowReader:
    """Base class: turns ``_load_group(epoch, group)`` results into resumable batches.

    ``typed_sites`` are the sites read (:class:`~universality.sites.Site`); ``sites`` their names,
    which key the yielded batches and the resumable state (data that leaves the library).
    """

    def __init__(
        self,
        sites: Sequence[Site],
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
        epochs: int | None,
        drop_last: bool,
        device: str | torch.device | None,
        dtype: torch.dtype | None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", "pass e.g. 4096")
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ConfigError(f"shuffle_buffer must be an integer >= 0, got {shuffle_buffer!r}", "pass 0 (no shuffle) or e.g. 2**18")
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ConfigError(f"epochs must be a positive integer or None (endless), got {epochs!r}", "pass e.g. 1")
        self.typed_sites: tuple[Site, ...] = tuple(sites)
        self.sites: list[str] = [s.name for s in self.typed_sites]
        self.batch_size, self.shuffle_buffer, self.seed = batch_size, shuffle_buffer, int(seed)
        self.epochs, self.drop_last = epochs, drop_last
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.epoch, self.group, self.offset = 0, 0, 0
        self.rows_yielded = 0
        self.resident_rows = 0
        #: gather shuffled batches into page-locked memory (None: when ``device`` is a CUDA device);
        #: :class:`DevicePrefetcher` sets it when it sends the batches to a CUDA device itself
        self.pin_output: bool | None = None

    # subclasses ------------------------------------------------------------
    def _load_group(self, epoch: int, group: int) -> dict[str, Tensor] | None:
        """Rows of one group (unshuffled), or ``None`` after the last group of the epoch."""
        raise NotImplementedError

    def _fingerprint(self) -> dict[str, Any]:
        return {"sites": self.sites, "batch_size": self.batch_size, "shuffle_buffer": self.shuffle_buffer, "seed": self.seed}

    def provenance(self) -> dict[str, Any]:
        """What the rows are: ``model``, ``revision``, ``dataset``, ``subset_hash`` (``None`` when unknown).
        The trainer records these in every dictionary's meta (:func:`universality.train.trainer.source_provenance`)."""
        return {"model": None, "revision": None, "dataset": None, "subset_hash": None}

    # state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Position of the next row; JSON-able."""
        return {
            "epoch": self.epoch,
            "group": self.group,
            "offset": self.offset,
            "rows_yielded": self.rows_yielded,
            "fingerprint": stable_hash(self._fingerprint()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != stable_hash(self._fingerprint()):
            raise ConfigError(
                "reader state was saved by a reader with other sites, batch size, shuffle buffer or seed",
                "build the reader with the same arguments before load_state_dict",
            )
        self.epoch, self.group, self.offset = int(state["epoch"]), int(state["group"]), int(state["offset"])
        self.rows_yielded = int(state.get("rows_yielded", 0))

    # iteration -------------------------------------------------------------
    def _pinned(self) -> bool:
        pin = self.pin_output if self.pin_output is not None else (self.device is not None and self.device.type == "cuda")
        return bool(pin) and torch.cuda.is_available()

    def _batch_tensor(self, t: Tensor | MappedRows) -> Tensor:
        """An empty batch (``batch_size`` rows) for rows like ``t``'s, gathered into by :func:`gather_rows`."""
        shape = (self.batch_size, *t.shape[1:])
        if isinstance(t, Tensor) and t.device.type != "cpu":
            return torch.empty(shape, dtype=t.dtype, device=t.device)
        return torch.empty(shape, dtype=t.dtype, pin_memory=self._pinned())

    def _emit(self, parts: list[dict[str, Tensor]], gathered: dict[str, Tensor] | None = None, rows: int = 0) -> dict[str, Tensor]:
        if gathered is not None:  # shuffled: the batch tensors were filled in place
            out = {s: (t if rows == t.shape[0] else t[:rows]) for s, t in gathered.items()}
        else:
            out = {s: (torch.cat([p[s] for p in parts]) if len(parts) > 1 else parts[0][s]) for s in parts[0]}
        if self.device is not None or self.dtype is not None:
            out = {
                s: t.to(device=self.device or t.device, dtype=self.dtype if (self.dtype and t.is_floating_point()) else t.dtype, non_blocking=True)
                for s, t in out.items()
            }
        return out

    def __iter__(self) -> Iterator[dict[str, Float[Tensor, "batch width"]]]:
        parts: list[dict[str, Tensor]] = []  # unshuffled: views of group buffers
        gathered: dict[str, Tensor] | None = None  # shuffled: the batch being gathered into
        have = 0
        while self.epochs is None or self.epoch < self.epochs:
            data = self._load_group(self.epoch, self.group)
            if data is None:
                if self.group == 0 and self.offset == 0:
                    break  # an empty epoch: nothing to read at all
                self.epoch, self.group, self.offset = self.epoch + 1, 0, 0
                continue
            n = next(iter(data.values())).shape[0]
            self.resident_rows = max(self.resident_rows, n + have)
            perm = None
            if self.shuffle_buffer > 0:
                g = torch.Generator().manual_seed(_seed(self.seed, self.epoch, self.group))
                perm = torch.randperm(n, generator=g)
            while self.offset < n:
                take = min(self.batch_size - have, n - self.offset)
                sl = slice(self.offset, self.offset + take)
                if perm is not None:  # one copy per row: from the group straight into the batch
                    if gathered is None:
                        gathered = {s: self._batch_tensor(t) for s, t in data.items()}
                    index = perm[sl]
                    for s, t in data.items():
                        gather_rows(t, index, gathered[s][have : have + take])
                else:
                    parts.append({s: _take_rows(t, sl) for s, t in data.items()})
                have += take
                self.offset += take
                if have == self.batch_size:
                    batch = self._emit(parts, gathered, have)
                    parts, gathered, have = [], None, 0
                    self.rows_yielded += self.batch_size
                    yield batch
            del data, perm
            self.group, self.offset = self.group + 1, 0
        if have and not self.drop_last:
            batch = self._emit(parts, gathered, have)
            self.rows_yielded += have
            yield batch


class StoreReader(RowReader):
    """Reads an :class:`~universality.activations.store.ActivationStore` (see module docstring)."""

    def __init__(
        self,
        store,
        sites: str | Site | Sequence[str | Site] | None = None,
        batch_size: int = 4096,
        shuffle_buffer: int = 0,
        seed: int = 0,
        epochs: int | None = 1,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        fields: Sequence[str] = (),
        piece_rows: int | None = None,
    ) -> None:
        # the store's sites in manifest order, or the requested ones (sorted; UnknownSiteError for a missing one)
        typed = store.typed_sites if sites is None else store.require(sites)
        bad = [f for f in fields if f not in ROW_FIELDS]
        if bad:
            raise ConfigError(f"unknown row fields {bad}", f"use some of {ROW_FIELDS}")
        super().__init__(typed, batch_size, shuffle_buffer, seed, epochs, drop_last, device, dtype)
        self.store = store
        self.fields = list(fields)
        # shard tensor key -> key of the yielded batch (the site name, or the row field itself)
        self._keys: dict[str, str] = {acts_key(s): s.name for s in typed} | {f: f for f in self.fields}
        default_piece = shuffle_buffer if shuffle_buffer > 0 else max(batch_size, 1 << 16)
        self.piece_rows = int(piece_rows or default_piece)
        self._pieces: list[tuple[int, int, int]] = []
        for i, shard in enumerate(store.shards):
            for lo in range(0, int(shard["rows"]), self.piece_rows):
                self._pieces.append((i, lo, min(lo + self.piece_rows, int(shard["rows"]))))
        self._buffers: dict[str, Tensor] = {}
        #: map single-range shuffled groups instead of reading them into a buffer (see module doc)
        self.map_files = True
        self._layout_epoch: int | None = None
        self._layout: list[list[tuple[int, int, int]]] = []

    def _fingerprint(self) -> dict[str, Any]:
        return super()._fingerprint() | {"store": self.store.manifest.get("key"), "rows": self.store.n_rows, "piece_rows": self.piece_rows}

    def provenance(self) -> dict[str, Any]:
        """The store manifest's ``model``, ``revision``, ``dataset`` (its name) and ``subset_hash`` (and the zoo
        ``lineage`` of that model, when its folder is a zoo run). The store's
        own key is left out: it hashes where the model was loaded from, so two identical runs in different
        folders would record different artifacts (the study determinism test)."""
        return store_provenance(self.store)

    def _groups(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        if self._layout_epoch == epoch:
            return self._layout
        groups = plan_groups(self._pieces, self.shuffle_buffer, self.seed, epoch)
        self._layout_epoch, self._layout = epoch, groups
        return groups

    def _load_group(self, epoch: int, group: int) -> dict[str, Tensor] | None:
        groups = self._groups(epoch)
        if group >= len(groups):
            return None
        pieces = groups[group]
        if self.map_files and len(pieces) == 1:
            # one row range of one shard: map it; batches are gathered (shuffled) or copied (in order)
            # straight out of the page cache
            shard, lo, hi = pieces[0]
            mapped = {k: self.store.map_rows(shard, k, lo, hi) for k in self._keys}
            if all(m is not None for m in mapped.values()):
                return {self._keys[k]: v for k, v in mapped.items()}
        total = sum(hi - lo for _, lo, hi in pieces)
        out: dict[str, Tensor] = {}
        for key in self._keys:  # each piece is read straight into its rows of the group buffer
            dtype, shape = self.store.key_info(pieces[0][0], key)
            buf = self._buffers.get(key)
            if self.shuffle_buffer > 0 and buf is not None and buf.shape[0] >= total:
                buf = buf[:total]  # shuffled batches are gathered copies, so the buffer can be reused
            else:
                buf = torch.empty((total, *shape[1:]), dtype=dtype)
                if self.shuffle_buffer > 0:
                    self._buffers[key] = buf
            at = 0
            for shard, lo, hi in pieces:
                self.store.read_rows_into(shard, key, lo, hi, buf[at : at + hi - lo])
                at += hi - lo
            out[key] = buf
        return {self._keys[k]: v for k, v in out.items()}

    def __len__(self) -> int:
        """Batches per epoch."""
        n = self.store.n_rows
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


_DONE = object()


class DevicePrefetcher:
    """Wraps an activation source: a background thread reads the next ``depth`` batches, pins them
    and copies them to ``device`` asynchronously, so reading and the host-to-device copy overlap
    with training.

    On CUDA each batch is copied into page-locked (pinned) memory and sent with
    ``non_blocking=True`` on a side CUDA stream; the consumer's stream waits on an event recorded
    after the copy, and the tensors are marked as used by the consumer's stream (so the caching
    allocator never hands their memory out early). On the CPU there is nothing to pin or copy: the
    thread still reads ahead (useful when reading costs I/O), and the batches are the source's own.

    Items are yielded in the source's order, unchanged (``dtype`` optionally casts floating
    tensors on the device). ``state_dict()`` is the source's position *after the last batch this
    wrapper yielded* (not after what the thread read ahead), so a trainer that checkpoints through
    the wrapper resumes at exactly the next row; ``load_state_dict`` stops the thread and restores
    the source. Iterating again continues from the last yielded batch.
    """

    def __init__(
        self,
        source: Iterable,
        device: str | torch.device | None = None,
        depth: int = 2,
        dtype: torch.dtype | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        if not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"prefetch depth must be a positive integer, got {depth!r}", "pass e.g. depth=2")
        self.source = source
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"prefetch device {self.device} asked for but CUDA is not available", "pass device='cpu'")
        self.depth = depth
        self.dtype = dtype
        self.pin_memory = (self.device.type == "cuda") if pin_memory is None else bool(pin_memory and self.device.type == "cuda")
        if self.pin_memory and hasattr(source, "pin_output") and getattr(source, "pin_output", None) is None:
            source.pin_output = True  # a reader then gathers its batches into pinned memory: no second copy here
        self._state = source.state_dict() if hasattr(source, "state_dict") else None
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._queue: queue.Queue | None = None
        self._read_ahead = False

    def provenance(self) -> dict[str, Any]:
        """The wrapped source's ``provenance()`` (``{}`` when it has none)."""
        get = getattr(self.source, "provenance", None)
        return dict(get()) if callable(get) else {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if not hasattr(self.source, "state_dict"):
            raise ConfigError(f"the wrapped source {type(self.source).__name__} has no state_dict", "wrap a resumable reader")
        return self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.source.load_state_dict(state)
        self._state = self.source.state_dict() if hasattr(self.source, "state_dict") else state
        self._read_ahead = False

    # ------------------------------------------------------------------ transfer
    def _to_device(self, item: Any, stream) -> Any:
        if isinstance(item, Tensor):
            t = item
            if self.pin_memory and t.device.type == "cpu" and not t.is_pinned():
                t = t.pin_memory()
            if stream is not None:
                with torch.cuda.stream(stream):
                    t = t.to(self.device, non_blocking=True)
            else:
                t = t.to(self.device)
            if self.dtype is not None and t.is_floating_point():
                if stream is not None:
                    with torch.cuda.stream(stream):
                        t = t.to(self.dtype)
                else:
                    t = t.to(self.dtype)
            return t
        if isinstance(item, Mapping):
            return {k: self._to_device(v, stream) for k, v in item.items()}
        return item

    def _worker(self, it: Iterator, out: queue.Queue, stop: threading.Event) -> None:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        try:
            for item in it:
                moved = self._to_device(item, stream)
                event = None
                if stream is not None:
                    event = torch.cuda.Event()
                    event.record(stream)
                state = self.source.state_dict() if hasattr(self.source, "state_dict") else None
                while not stop.is_set():
                    try:
                        out.put((moved, event, state), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put((_DONE, None, None))
        except BaseException as exc:  # handed to the consumer, raised there
            out.put((exc, None, None))

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._worker, args=(iter(self.source), self._queue, self._stop),
                                        name="device-prefetch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background thread (the source's own position is then past what was read ahead;
        :meth:`load_state_dict` rewinds it)."""
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread = None

    def _generate(self) -> Iterator[Any]:
        if self._thread is not None:
            self.close()
        if self._read_ahead and self._state is not None and hasattr(self.source, "load_state_dict"):
            self.source.load_state_dict(self._state)  # rewind what an earlier thread read ahead
        self._read_ahead = True
        self._start()
        try:
            while True:
                item, event, state = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for t in (item.values() if isinstance(item, Mapping) else [item]):
                        if isinstance(t, Tensor) and t.device.type == "cuda":
                            t.record_stream(current)
                self._state = state
                yield item
        finally:
            self.close()

    def __iter__(self) -> Iterator[dict[str, Float[Tensor, "batch width"]]]:
        return self._generate()
