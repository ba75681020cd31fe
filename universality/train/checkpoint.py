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

**One run per folder.** A checkpoint folder belongs to the run whose configs wrote it:
:func:`check_owner` refuses to replace (and the trainer to resume) another run's checkpoint, and
:func:`checkpoint_lock` holds an exclusive ``flock`` on ``<root>/.checkpoint.tmp-lock`` while a run
trains, so a second run (thread or process) on the same folder is refused at once with an
:class:`~universality.errors.ArtifactError` naming the holder. The lock file exists only while a run
trains (it is removed on release); the kernel drops the lock when its holder exits, however it
exits, and a file a killed run left is taken over. It is never part of the checkpoint (a temporary
name, see :func:`universality.io.is_temp_name`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from universality.errors import ArtifactError, ConfigError
from universality.io import atomic_dir, load_tensors, read_json, remove_stale_temps, save_tensors_digest, verify_sha256, write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking, the owner check still applies
    fcntl = None  # type: ignore[assignment]

__all__ = ["CHECKPOINT_FORMAT", "LOCK_NAME", "write_checkpoint", "read_checkpoint", "has_checkpoint", "split_prefix",
           "checkpoint_lock", "check_owner"]

CHECKPOINT_FORMAT = "universality.train.checkpoint/1"
LOCK_NAME = ".checkpoint.tmp-lock"
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


def _holder(fd: int) -> str:
    """What the lock file says about the process holding it (``pid N on HOST``), or ``"unknown holder"``."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = os.pread(fd, 200, 0).decode("utf-8").strip()
        if text:
            return text
    return "unknown holder"


def _open_lock(root: Path, tries: int = 3) -> int:
    error: OSError | None = None
    for _ in range(tries):  # a releasing run may remove the (empty) folder it created between mkdir and open
        try:
            root.mkdir(parents=True, exist_ok=True)
            return os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError as exc:
            error = exc
        except OSError as exc:
            error = exc
            break
    raise ArtifactError(f"cannot use checkpoint_dir {root} ({getattr(error, 'strerror', None) or type(error).__name__})",
                        "point checkpoint_dir at a folder this user can create and write")


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a releasing holder unlinks it)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _acquire(root: Path, tries: int = 8) -> tuple[int, bool]:
    """``(fd, held)``: the open lock file of ``root``, locked (``held``) unless the filesystem cannot lock."""
    for _ in range(tries):
        fd = _open_lock(root)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ArtifactError(f"checkpoint_dir {root} is in use by another training run ({holder})",
                                "wait until that run ends, or give this run its own checkpoint_dir") from None
        except OSError:  # the filesystem does not lock (some network mounts): check_owner still guards the checkpoint
            return fd, False
        if _is_current(fd, root / LOCK_NAME):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            return fd, True
        os.close(fd)  # locked a file its holder had just removed: take the new one
    raise ArtifactError(f"cannot lock checkpoint_dir {root} (its lock file keeps changing)",
                        "check that no other program churns the folder, then run again")


@contextlib.contextmanager
def checkpoint_lock(root: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of checkpoint folder ``root`` (created if missing) for the ``with`` block.

    Raises :class:`ArtifactError` at once when another run (another process, or another trainer in
    this one) holds it. The lock file is removed on release (and ``root`` too when this call created
    it and it stayed empty); a lock file left by a killed run is taken over. Without ``fcntl`` (not
    POSIX) this is a no-op.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    root = Path(root)
    created = not root.exists()
    fd, held = _acquire(root)
    try:
        yield
    finally:
        if held:
            with contextlib.suppress(OSError):
                (root / LOCK_NAME).unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()


def check_owner(root: str | Path, config_hash: str, keys: list[str], doc: dict[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` when ``root`` holds a checkpoint written by other configs than
    ``config_hash`` (another run's resumable state, which must not be replaced or resumed).
    ``doc``: its ``state.json`` when already read."""
    if doc is None:
        if not has_checkpoint(root):
            return
        doc = read_json(_folder(root) / "state.json")
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{_folder(root)} is not a {CHECKPOINT_FORMAT} checkpoint",
                            "point checkpoint_dir at a training checkpoint folder")
    if doc.get("config_hash") == config_hash and doc.get("keys") == keys:
        return
    raise ConfigError(
        f"the checkpoint in {root} was written by other configs (another run, dictionaries {doc.get('keys')}; "
        f"this run trains {keys})",
        "give each run its own checkpoint_dir, resume with the same configs, "
        f"or delete {_folder(root)} to start this folder over",
    )


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
