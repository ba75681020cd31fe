"""Lineage ids of zoo runs: which checkpoint series descend from one initialisation.

A run trained from scratch (:func:`~universality.zoo.train_lm`) starts a lineage: its id is its
own ``run_hash``. A fine-tune (:func:`~universality.zoo.finetune_lm`) inherits the lineage of the
run it starts from, so a base model and every fine-tune of it (and fine-tunes of those) share one
id, while another seed or other data trained from scratch has its own. Dictionaries trained on
models of one lineage read activations in related bases, so transferring one to another is a
like-for-like test (:func:`universality.eval.transfer.check_same_run` accepts them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from universality.io import read_json

__all__ = ["manifest_lineage", "lineage_of"]

_MANIFEST = "zoo.json"  # universality.zoo.checkpoints.MANIFEST, without importing torch here


def manifest_lineage(manifest: Mapping[str, Any]) -> str | None:
    """The lineage id a ``zoo.json`` manifest records (``lineage``, else its ``run_hash``, for
    manifests written before lineage was recorded)."""
    value = manifest.get("lineage") or manifest.get("run_hash")
    return str(value) if value else None


def lineage_of(path: str | os.PathLike | None) -> str | None:
    """The lineage id of the zoo run at ``path`` (the run folder or one of its ``step{N}`` folders);
    ``None`` when ``path`` is not a finished zoo run (a hub name, another folder)."""
    if path is None:
        return None
    try:
        folder = Path(path).expanduser()
        for candidate in (folder / _MANIFEST, folder.parent / _MANIFEST):
            if candidate.is_file():
                manifest = read_json(candidate)
                return manifest_lineage(manifest) if isinstance(manifest, Mapping) else None
    except (OSError, ValueError):
        return None
    return None
