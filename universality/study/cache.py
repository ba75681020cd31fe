"""Stage cache: each study stage is stored under a folder named by a hash of the config that made it.

A rerun with the same stage config finds ``<root>/cache/<stage>-<hash>/stage.json`` and reuses the
folder; a crash while building leaves no partial stage (the folder is built under a temporary name
and renamed whole, see :func:`universality.io.atomic_dir`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from universality.errors import ArtifactError
from universality.io import atomic_dir, read_json, stable_hash, write_json

__all__ = ["StageCache", "StageRecord"]

log = logging.getLogger("universality.study")


@dataclass(frozen=True)
class StageRecord:
    """Where a stage lives and whether this call reused it."""

    name: str
    key_hash: str
    path: Path
    hit: bool


class StageCache:
    """Maps ``(stage name, JSON-able key)`` to a folder under ``root/cache``.

    ``misses`` lists the stages built by this object, ``hits`` the distinct stages it found already
    built on disk (a stage built here and asked for again counts once, as a miss).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits: list[str] = []
        self.misses: list[str] = []

    def path_for(self, name: str, key: Any) -> Path:
        return self.root / "cache" / f"{name}-{stable_hash(key)}"

    def run(self, name: str, key: Any, build: Callable[[Path], None]) -> StageRecord:
        """Return the cached stage folder, building it with ``build(tmp_folder)`` on a miss."""
        path = self.path_for(name, key)
        marker = path / "stage.json"
        key_hash = path.name.rsplit("-", 1)[1]
        if marker.is_file():
            meta = read_json(marker)
            if meta.get("key_hash") != key_hash:
                raise ArtifactError(
                    f"cached stage {path} does not match its key", "delete that folder and rerun the study"
                )
            if path.name not in self.misses and path.name not in self.hits:
                self.hits.append(path.name)
            return StageRecord(name, key_hash, path, hit=True)
        start = time.perf_counter()
        log.info("building stage %s", path.name)
        with atomic_dir(path) as tmp:
            build(tmp)
            seconds = round(time.perf_counter() - start, 3)
            write_json(tmp / "stage.json", {"stage": name, "key_hash": key_hash, "key": key, "seconds": seconds})
        log.info("built stage %s in %.1f s", path.name, seconds)
        self.misses.append(path.name)
        return StageRecord(name, key_hash, path, hit=False)
