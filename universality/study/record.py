"""The study record ``study.json``: which study a folder holds, its config hash and its status.

A study records itself before its first stage runs (status ``running``), and again when it ends:
``complete``, ``failed`` (with the one-line error) or ``interrupted`` (Ctrl-C, SIGTERM). A rerun
of the same config in the same folder resumes: every finished stage in ``cache/`` is reused and
only the rest is built. A folder that holds another study, or the same study with another config
(its hash differs), is refused before anything is written. ``out_dir`` is not part of the hash, so
a folder can be named relatively or absolutely. A folder without a record may already hold
``cache/`` (stages are content-addressed and checksummed, so they can be copied between studies).

Two processes on one folder: the running study holds an exclusive ``flock`` on ``.study.lock`` for
its whole run (released by the kernel when the process dies, so a killed run never leaves a stale
lock); a second process on the same folder is refused with the first one's pid.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from universality.errors import ArtifactError
from universality.io import read_json, stable_hash, write_json
from universality.study.config import StudyConfig

__all__ = ["RECORD", "LOCK", "STATUSES", "OUTPUT_ONLY", "config_hash", "check_out_folder", "read_record", "claim", "write_record"]

RECORD = "study.json"
LOCK = ".study.lock"
STATUSES = ("running", "complete", "failed", "interrupted")
#: What a folder without a record may hold and still be used: Hydra's run logs, the lock, and stage
#: caches (content-addressed and checksummed, so a study may adopt stages it did not build).
_IGNORED = frozenset({"hydra", LOCK, "cache"})


#: study fields that choose what is written, not what is computed (left out of :func:`config_hash`)
OUTPUT_ONLY = ("out_dir", "cards")


def config_hash(cfg: StudyConfig) -> str:
    """Hash of everything in ``cfg`` that changes results (all fields but ``out_dir`` and ``cards``, which
    only adds the card page: a folder made before it existed, or with it off, takes the same config;
    ``sae.expansions`` counts only when it is not empty)."""
    doc = cfg.to_dict()
    for key in OUTPUT_ONLY:
        doc.pop(key, None)
    if not doc["sae"].get("expansions"):  # added later: a study without extra widths keeps its old hash
        doc["sae"].pop("expansions", None)
    return stable_hash(doc)


def read_record(root: Path) -> dict[str, Any] | None:
    """The study record in ``root``, or ``None`` when there is none."""
    path = Path(root) / RECORD
    if not path.is_file():
        return None
    doc = read_json(path)
    if not isinstance(doc, dict) or "study" not in doc:
        raise ArtifactError(f"{path} is not a study record", "choose another folder (study.out_dir=...) or delete that file")
    return doc


def check_out_folder(root: Path, cfg: StudyConfig) -> None:
    """Refuse a folder that holds another study or this study with another config; nothing is touched."""
    root = Path(root)
    doc = read_record(root)
    if doc is None:
        if root.is_dir() and any(p.name not in _IGNORED for p in root.iterdir()):
            raise ArtifactError(f"output folder {root} is not empty and holds no study",
                                "choose an empty or new folder for study.out_dir")
        return
    held = doc.get("study")
    if held != cfg.name:
        raise ArtifactError(f"output folder {root} already holds study {held!r}, not {cfg.name!r}",
                            "choose another folder (study.out_dir=...) or delete that one")
    recorded = doc.get("config_hash")
    if recorded is None and "config" in doc:  # written before records carried a hash
        recorded = stable_hash({k: v for k, v in doc["config"].items() if k != "out_dir"})
    if recorded != config_hash(cfg):
        raise ArtifactError(f"output folder {root} holds study {held!r} run with another config (hash {recorded}, "
                            f"this one {config_hash(cfg)})",
                            "rerun with the config it was made with, or choose another folder (study.out_dir=...)")


def write_record(root: Path, cfg: StudyConfig, status: str, **extra: Any) -> Path:
    """Write ``study.json`` atomically with ``status`` (keeping the first ``started`` time)."""
    if status not in STATUSES:
        raise ValueError(f"unknown study status {status!r}")
    root = Path(root)
    old = read_record(root) or {}
    doc = {"study": cfg.name, "config_hash": config_hash(cfg), "status": status,
           "started": old.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
           "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": int(old.get("runs", 0)) + (status == "running"),
           "config": cfg.to_dict(), **extra}
    return write_json(root / RECORD, doc)


@contextmanager
def claim(root: Path, cfg: StudyConfig) -> Iterator[None]:
    """Hold ``root`` for one run of ``cfg``: check it, lock it, record ``running``; on the way out
    record ``complete``, ``failed`` or ``interrupted`` (the exception propagates)."""
    root = Path(root)
    check_out_folder(root, cfg)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ArtifactError(f"another process (pid {pid}) is running a study in {root}",
                                "wait for it to finish, or choose another folder (study.out_dir=...)") from None
        check_out_folder(root, cfg)  # again under the lock: the other process may have just written it
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        write_record(root, cfg, "running")
        try:
            yield
        except KeyboardInterrupt:
            write_record(root, cfg, "interrupted")
            raise
        except BaseException as exc:
            write_record(root, cfg, "failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            raise
    finally:
        os.close(fd)  # releases the flock
