"""Peak memory of a benchmark: the process's resident set (sampled) and, on CUDA, the allocator's peak.

Every benchmark script records ``PeakMemory(...).as_dict()`` under ``"memory"`` in its JSON::

    mem = PeakMemory().start()
    ...                                  # the benchmark
    results["memory"] = mem.stop().as_dict()

``rss_peak_mib`` is the largest resident set seen by a sampling thread (every ``interval`` s, and at
start and stop); ``rss_maxrss_mib`` is the kernel's high-water mark for the whole process
(``getrusage``; it includes whatever ran earlier in the same process, e.g. under ``run_all.py``);
``gpu_allocator_peak_mib`` is ``torch.cuda.max_memory_allocated`` since :meth:`PeakMemory.start` or
the benchmark's own last ``reset_peak_memory_stats`` (``None`` without CUDA; benchmarks that reset it
per run record each run's peak themselves), and ``gpu_reserved_peak_mib`` the caching allocator's
reserved memory, sampled over the whole benchmark (an upper bound of what it held).
"""

from __future__ import annotations

import resource
import threading

import torch


def rss_mib() -> float:
    """This process's resident set now (MiB; Linux ``/proc``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class PeakMemory:
    """Peak resident memory (sampled every ``interval`` s) and, on CUDA, the allocator's peak, between
    :meth:`start` and :meth:`stop` (or over a ``with`` block)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start_rss = self.peak_rss = 0.0
        self.peak_gpu: float | None = None
        self.peak_gpu_reserved: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reserved = 0.0

    def _sample(self) -> None:
        cuda = torch.cuda.is_available()
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, rss_mib())
            if cuda:  # sampled too: a benchmark that resets the allocator's peak per run must not hide earlier runs
                self._reserved = max(self._reserved, torch.cuda.memory_reserved() / 2**20)

    def start(self) -> "PeakMemory":
        self.start_rss = self.peak_rss = rss_mib()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "PeakMemory":
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.peak_rss = max(self.peak_rss, rss_mib())
        if torch.cuda.is_available():
            self.peak_gpu = torch.cuda.max_memory_allocated() / 2**20
            self.peak_gpu_reserved = max(self._reserved, torch.cuda.max_memory_reserved() / 2**20)
        return self

    def __enter__(self) -> "PeakMemory":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def as_dict(self) -> dict:
        return {"rss_start_mib": self.start_rss, "rss_peak_mib": self.peak_rss,
                "rss_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "gpu_allocator_peak_mib": self.peak_gpu, "gpu_reserved_peak_mib": self.peak_gpu_reserved}
