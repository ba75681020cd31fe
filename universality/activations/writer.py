"""Background shard writer: saves shards and updates the manifest while the next forward runs.

Shards are written in order by one thread. For each shard the writer (1) computes the shard's
normalisation partial sums in float64, (2) writes ``shard-XXXXX.safetensors`` and its document
table atomically through :mod:`universality.io`, keeping the SHA-256 of the bytes written, and
only then (3) appends the shard, with those checksums, to the manifest and rewrites it
atomically. A crash at any point leaves a manifest that lists only complete shards; a
half-written shard is a temporary file no reader ever opens. (The write function itself is
``harvest._StoreBuilder.write_shard``; this module runs it.)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ShardWriter", "shard_partial_stats"]


def shard_partial_stats(acts: dict[str, torch.Tensor], chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Per-site partial sums of a shard: ``sum_x`` (width,) and ``sum_sq`` (1,) = sum of ||x||^2.

    Rows are summed in float32 within chunks of ``chunk`` rows and the chunk sums in float64.

    Integer sites (routing indices) get no statistics.
    """
    out: dict[str, torch.Tensor] = {}
    for name, a in acts.items():
        if not a.is_floating_point():
            continue
        total = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
        sumsq = torch.zeros(1, dtype=torch.float64, device=a.device)
        for i in range(0, a.shape[0], chunk):  # float32 partial sums over `chunk` rows, float64 across chunks
            c = a[i : i + chunk].float().contiguous()
            total += c.sum(0).double()
            flat = c.view(-1)
            sumsq += torch.dot(flat, flat).double()
        out[f"stat_sum/{name}"] = total
        out[f"stat_sumsq/{name}"] = sumsq
    return out


class ShardWriter:
    """Runs ``write(item)`` for queued items on one background thread, in submission order.

    ``submit`` blocks when ``max_pending`` items are waiting (bounded memory). An exception in the
    thread is re-raised by the next ``submit`` or by ``close``. ``threaded=False`` writes inline.
    """

    def __init__(self, write: Callable[[Any], None], max_pending: int = 2, threaded: bool = True) -> None:
        self._write = write
        self._error: BaseException | None = None
        self._threaded = threaded
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, item: Any) -> None:
        self._raise()
        if not self._threaded:
            self._write(item)
            return
        self._queue.put(item)

    def close(self) -> None:
        """Finish every queued write, stop the thread, re-raise a writer error."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()
