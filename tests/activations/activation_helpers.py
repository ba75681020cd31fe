"""Helpers shared by the activation tests (imported by name; tests/ has no packages)."""

from __future__ import annotations


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
