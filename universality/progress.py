"""Progress bars: one rule for every long loop of the platform.

Every bar is a :func:`tqdm.auto.tqdm` (a terminal bar in a shell or a script, a widget in a
notebook) made by :func:`progress_bar`, which decides whether it shows:

- off when the caller passes ``progress=False``;
- off for short work: when the caller knows the size of the work up front (``work``: matrix entries,
  activation values, bytes, ...) and it is below ``min_work`` (default :data:`MIN_WORK`; a loop
  whose size is not known up front, such as a stream of batches, always gets a bar);
- otherwise the environment decides: no ``disable=`` is passed, so tqdm's own defaults hold
  (``TQDM_DISABLE=1`` in the environment when tqdm is imported turns every bar off; an explicit
  ``disable=`` would override it).

:func:`model_label` writes the ``model@revision`` names the bars and the study's log lines use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["MIN_WORK", "MIN_BYTES", "progress_bar", "bar_disabled", "model_label"]

MIN_WORK = 1 << 22
"""Work (matrix entries or activation values) below which a loop shows no bar: a few milliseconds."""

MIN_BYTES = 256 << 20
"""Bytes hashed below which a file check shows no bar."""


def bar_disabled(progress: bool = True, work: float | None = None, min_work: float = MIN_WORK) -> bool:
    """``True`` when the rule above turns the bar off (the environment aside)."""
    return not progress or (work is not None and work < min_work)


def progress_bar(iterable: Iterable | None = None, desc: str | None = None, *, total: float | None = None,
                 progress: bool = True, work: float | None = None, min_work: float = MIN_WORK,
                 **kwargs: Any) -> tqdm:
    """A :class:`tqdm.auto.tqdm` over ``iterable`` (or a manual one with ``total``), shown by the module's rule.

    ``kwargs`` go to tqdm (``unit``, ``leave``, ``initial``, ...); ``disable`` is not one of them.
    """
    if "disable" in kwargs:
        raise TypeError("progress_bar decides disable itself: pass progress= or work=")
    if bar_disabled(progress, work, min_work):
        kwargs["disable"] = True
    return tqdm(iterable, desc=desc, total=total, **kwargs)


def model_label(name: Any, revision: Any = None) -> str:
    """``name@revision`` for bars and log lines: a local folder is named by its last part, a hub id
    is kept whole; no ``@`` part without a revision (``pythia-like@step128``, ``EleutherAI/pythia-70m``)."""
    text = str(name) if name not in (None, "") else "model"
    if os.path.isabs(text) or text.startswith(".") or os.sep in text and Path(text).exists():
        text = Path(text).name or text
    return f"{text}@{revision}" if revision not in (None, "") else text
