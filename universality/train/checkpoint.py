"""Checkpoints: one folder (``state.safetensors`` + ``state.json``) written atomically.

Tensors: every SAE's parameters and buffers (``sae/{key}/{name}``), its optimizer moments
(``opt/{key}/{param}/{name}``), its firing tracker (``tracker/{key}/{name}``) and the RNG states
(``rng/torch``, ``rng/trainer``, ``rng/cuda``). JSON: the step, the token count, the configs
(and their hash, checked on resume), the normalisation scales, the optimizer's scalar state and
param groups, and the activation source's ``state_dict()``. Nothing is pickled.

``state.json`` records the SHA-256 of ``state.safetensors`` (``state_sha256``), taken from the
bytes as written; :func:`read_checkpoint` checks it and raises
:class:`~universality.errors.ArtifactError` on a mismatch (checkpoints written before this field
existed load unchecked). The folder is replaced whole, so a kill leaves the previous checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from universality.errors import ArtifactError
from universality.io import atomic_dir, load_tensors, read_json, remove_stale_temps, save_tensors_digest, verify_sha256, write_json

__all__ = ["CHECKPOINT_FORMAT", "write_checkpoint", "read_checkpoint", "has_checkpoint", "split_prefix"]

CHECKPOINT_FORMAT = "universality.train.checkpoint/1"
_NAME = "checkpoint"


def _folder(root: str | Path) -> Path:
    return Path(root) / _NAME


def has_checkpoint(root: str | Path | None) -> bool:
    return root is not None and (_folder(root) / "state.json").is_file()


def write_checkpoint(root: str | Path, tensors: dict[str, Tensor], doc: dict[str, Any]) -> Path:
    """Replace the checkpoint under ``root`` atomically (the previous one stays until this one is whole).

    Temporary folders that a killed run left beside it are removed first.
    """
    remove_stale_temps(root, _NAME)
    with atomic_dir(_folder(root)) as tmp:
        sha = save_tensors_digest(tmp / "state.safetensors", tensors, metadata={"format": CHECKPOINT_FORMAT})
        write_json(tmp / "state.json", {**doc, "format": CHECKPOINT_FORMAT, "state_sha256": sha})
    return _folder(root)


def read_checkpoint(root: str | Path, verify: bool = True) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, doc)`` of the checkpoint under ``root``; ``verify`` checks ``state_sha256``."""
    folder = _folder(root)
    doc = read_json(folder / "state.json")
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{folder} is not a {CHECKPOINT_FORMAT} checkpoint", "point checkpoint_dir at a training checkpoint folder")
    if verify and doc.get("state_sha256") is not None:
        verify_sha256(folder / "state.safetensors", doc["state_sha256"],
                      f"the checkpoint is corrupt: delete {folder} to restart training from step 0, or restore it from a copy")
    return load_tensors(folder / "state.safetensors"), doc


def split_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors whose names start with ``prefix + "/"``, with that prefix removed."""
    p = prefix + "/"
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def rng_tensors(generator: torch.Generator) -> dict[str, Tensor]:
    out = {"rng/torch": torch.get_rng_state(), "rng/trainer": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["rng/cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(tensors: dict[str, Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    generator.set_state(tensors["rng/trainer"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
