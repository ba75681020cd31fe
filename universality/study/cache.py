"""Stage cache: each study stage is stored under a folder named by a hash of the config that made it.

A rerun with the same stage config finds ``<root>/cache/<stage>-<hash>/stage.json`` and reuses the
folder; a crash while building leaves no partial stage (the folder is built under a temporary name
and renamed whole, see :func:`universality.io.atomic_dir`); the next build of that stage removes
the temporary folder a killed build left behind.

``stage.json`` lists every file of the stage with its size and SHA-256
(:func:`universality.io.file_digests`). On a hit the cache checks them once per
:class:`StageCache` object: ``verify="auto"`` (default) hashes every file up to
``hash_limit`` bytes and checks the size of larger ones (those are activation shards and
dictionary weights, which carry their own checksums and are checked when read); ``"full"``
hashes every file; ``"size"`` checks sizes only. A stage written before checksums existed is
reused unchecked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from universality.errors import ArtifactError, ConfigError
from universality.io import atomic_dir, file_digests, read_json, remove_stale_temps, stable_hash, verify_digests, write_json

__all__ = ["StageCache", "StageRecord", "VERIFY_MODES"]

VERIFY_MODES = ("auto", "full", "size")

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

    def __init__(self, root: str | Path, verify: str = "auto", hash_limit: int = 64 << 20) -> None:
        if verify not in VERIFY_MODES:
            raise ConfigError(f"unknown stage verify mode {verify!r}", f"use one of {list(VERIFY_MODES)}")
        if not isinstance(hash_limit, int) or hash_limit < 0:
            raise ConfigError(f"hash_limit must be an integer >= 0, got {hash_limit!r}", "pass a byte count, e.g. 64 << 20")
        self.root = Path(root)
        self.verify = verify
        self.hash_limit = hash_limit
        self.hits: list[str] = []
        self.misses: list[str] = []
        self._checked: set[str] = set()

    def check(self, path: Path, meta: dict[str, Any], mode: str | None = None) -> None:
        """Check the files of the stage folder ``path`` against ``meta["files"]`` (see module doc)."""
        files = meta.get("files")
        if files is None:
            return
        mode = mode or self.verify
        if mode not in VERIFY_MODES:
            raise ConfigError(f"unknown stage verify mode {mode!r}", f"use one of {list(VERIFY_MODES)}")
        fix = f"delete {path} and rerun the study (the stage is rebuilt)"
        if mode == "full":
            verify_digests(path, files, full=True, fix=fix)
            return
        small = {k: v for k, v in files.items() if int(v["bytes"]) <= self.hash_limit}
        verify_digests(path, files, full=False, fix=fix)
        if mode == "auto":
            verify_digests(path, small, full=True, fix=fix)

    def path_for(self, name: str, key: Any) -> Path:
        return self.root / "cache" / f"{name}-{stable_hash(key)}"

    def run(self, name: str, key: Any, build: Callable[[Path], None], label: str | None = None) -> StageRecord:
        """Return the cached stage folder, building it with ``build(tmp_folder)`` on a miss.

        Logs one line when the stage is first found on disk (``reusing stage ...``) and a line before and
        after a build; ``label`` (e.g. ``pythia-like@step128``, :func:`universality.progress.model_label`)
        follows the folder name in those lines."""
        path = self.path_for(name, key)
        named = f"{path.name} ({label})" if label else path.name
        marker = path / "stage.json"
        key_hash = path.name.rsplit("-", 1)[1]
        if marker.is_file():
            meta = read_json(marker)
            if meta.get("key_hash") != key_hash:
                raise ArtifactError(
                    f"cached stage {path} does not match its key", "delete that folder and rerun the study"
                )
            if path.name not in self._checked:
                self.check(path, meta)
                self._checked.add(path.name)
            if path.name not in self.misses and path.name not in self.hits:
                self.hits.append(path.name)
                log.info("reusing stage %s", named)
            return StageRecord(name, key_hash, path, hit=True)
        start = time.perf_counter()
        for stale in remove_stale_temps(path.parent, path.name):  # a build that was killed
            log.info("removed %s, left by a killed build", stale.name)
        log.info("building stage %s", named)
        with atomic_dir(path) as tmp:
            build(tmp)
            seconds = round(time.perf_counter() - start, 3)
            files = file_digests(tmp, exclude=("stage.json",))
            write_json(tmp / "stage.json", {"stage": name, "key_hash": key_hash, "key": key, "seconds": seconds,
                                            "files": files})
        log.info("built stage %s in %.1f s", named, seconds)
        self.misses.append(path.name)
        self._checked.add(path.name)
        return StageRecord(name, key_hash, path, hit=False)
