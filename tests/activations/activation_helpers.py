"""Helpers shared by the activation tests (imported by name; tests/ has no packages)."""

from __future__ import annotations

import torch

SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out"]


class CountingAdapter:
    """Wraps an adapter; counts ``capture`` calls and raises after ``fail_after`` of them."""

    def __init__(self, adapter, fail_after: int | None = None) -> None:
        self._adapter, self.fail_after, self.calls = adapter, fail_after, 0

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def capture(self, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return self._adapter.capture(*args, **kwargs)


def read_batches(it, n=None) -> list[dict]:
    """Copies of the batches of ``it`` (the first ``n``, or all)."""
    out = []
    for batch in it:
        out.append({k: v.clone() for k, v in batch.items()})
        if n is not None and len(out) == n:
            break
    return out


def assert_same_batches(xs, ys) -> None:
    """``xs`` and ``ys`` are the same non-empty list of batches, bit for bit."""
    assert len(xs) == len(ys) and xs
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
