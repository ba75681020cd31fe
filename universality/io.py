"""Atomic, self-describing artifact I/O: JSON + safetensors, written to a temporary name and renamed.

Nothing here unpickles anything. A reader never sees a half-written file: every writer writes
``<name>.tmp-<pid>-<rand>`` in the same folder, flushes and fsyncs it, then ``os.replace``s it.
Folders (a dictionary, a shard set) are written as ``<name>.tmp-...`` and renamed whole.

**Checksums.** Artifacts record the SHA-256 (FIPS 180-4) of the files they point at:
:func:`save_tensors_digest` returns the digest of exactly the bytes it renamed into place,
:func:`file_digests` lists a folder's files, and :func:`verify_sha256` / :func:`verify_digests`
raise an :class:`~universality.errors.ArtifactError` that names the file and the fix on a mismatch.
Temporary names (:func:`is_temp_name`) are never part of an artifact.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from universality.errors import ArtifactError
from universality.progress import MIN_BYTES, progress_bar

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "replace_marked_block",
    "write_json",
    "read_json",
    "save_tensors",
    "load_tensors",
    "atomic_dir",
    "sha256_file",
    "save_tensors_digest",
    "verify_sha256",
    "file_digests",
    "verify_digests",
    "is_temp_name",
    "remove_stale_temps",
    "stable_hash",
]


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary name, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_marked_block(path: str | os.PathLike, name: str, text: str) -> Path:
    """Put ``text`` between the ``<!-- {name}:start -->`` and ``<!-- {name}:end -->`` lines of the text file
    ``path`` (appended with both markers when they are missing; a missing file starts empty), atomically."""
    path = Path(path)
    doc = path.read_text() if path.is_file() else ""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start in doc and end in doc:
        doc = doc[: doc.index(start) + len(start)] + "\n" + text + "\n" + doc[doc.index(end):]
    else:
        doc = doc + f"\n{start}\n{text}\n{end}\n"
    return atomic_write_text(path, doc)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=True)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist", "check the path, or create the artifact first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path} is not valid JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})",
            "the file is corrupt or truncated; delete it and re-create the artifact",
        ) from None


# safetensors dtype codes (https://github.com/huggingface/safetensors, format description)
_ST_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _write_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, hasher: Any = None
) -> None:
    """Write the safetensors format byte-for-byte deterministically.

    Layout (safetensors format description): an 8-byte little-endian header length ``N``, ``N``
    bytes of JSON header (``{"__metadata__": {...}, name: {"dtype", "shape", "data_offsets"}}``,
    padded with spaces to a multiple of 8), then the raw little-endian tensor bytes. Tensors are
    laid out by decreasing element size, then name, so every tensor is aligned to its element
    size; metadata and header keys are sorted. The same tensors and metadata therefore always give
    the same bytes (the reference writer orders metadata by a randomly seeded hash map).
    ``hasher`` (a :mod:`hashlib` object), when given, is fed every byte as it is written.
    """
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(metadata[k]) for k in sorted(metadata)}
    offset = 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as fh:

        def emit(chunk: bytes | memoryview) -> None:
            fh.write(chunk)
            if hasher is not None:
                hasher.update(chunk)

        emit(len(head).to_bytes(8, "little"))
        emit(head)
        for name in order:
            if tensors[name].numel():
                emit(memoryview(tensors[name].reshape(-1).view(torch.uint8).numpy()))


def _save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, digest: bool
) -> str | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        hasher = hashlib.sha256() if digest else None
        if sys.byteorder == "little" and all(v.dtype in _ST_CODES for v in clean.values()):
            _write_safetensors(tmp, clean, metadata, hasher)
            sha = hasher.hexdigest() if hasher is not None else None
        else:  # rarer dtypes (float8, unsigned 16/32/64) or a big-endian host: the reference writer
            save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)
            sha = sha256_file(tmp) if digest else None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return sha


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Atomically save tensors as safetensors (made contiguous and moved to the CPU)."""
    _save_tensors(Path(path), tensors, metadata, digest=False)
    return Path(path)


def save_tensors_digest(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> str:
    """Like :func:`save_tensors`; returns the SHA-256 hex digest of the file as written.

    The digest is computed from the bytes as they are written to the temporary file (no second
    read), so it describes exactly what a reader of ``path`` will find once it is renamed.
    """
    sha = _save_tensors(Path(path), tensors, metadata, digest=True)
    assert sha is not None
    return sha


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file gives an :class:`ArtifactError`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist", "check the path, or re-create the artifact")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            "the file is truncated or corrupt; delete it and re-create the artifact",
        ) from None


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    On an exception the temporary folder is removed and whatever was at ``path`` is untouched. An
    existing folder is swapped with the new one in one atomic ``renameat2(RENAME_EXCHANGE)`` on
    Linux, so a reader (or a crash) sees either the old folder or the new one, never neither; where
    that call is missing, the old folder is renamed away first (a brief window without ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} already exists", "choose another output folder or pass overwrite=True")
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if path.exists():
            if _exchange(tmp, path):  # tmp now holds the old folder
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                old = _tmp_name(path.with_name(path.name + ".old"))
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (FIPS 180-4) hex digest of a file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str, fix: str = "delete the artifact and re-create it") -> None:
    """Raise :class:`ArtifactError` unless the file at ``path`` exists and has SHA-256 ``expected``.

    ``fix`` is the second half of the one-line message (how to get a good copy back).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (its manifest lists it)", fix)
    got = sha256_file(path)
    if got != expected:
        raise ArtifactError(
            f"checksum mismatch for {path}: sha256 {got[:16]}... but the manifest records {expected[:16]}..."
            " (the file is corrupt or was changed after it was written)",
            fix,
        )


def is_temp_name(name: str) -> bool:
    """True for the temporary names this module writes (``.<name>.tmp-<pid>-<hex>``)."""
    return name.startswith(".") and ".tmp-" in name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporary files/folders of ``folder/name`` left by processes that no longer run.

    A kill between writing ``.<name>.tmp-<pid>-<hex>`` and renaming it leaves that temporary
    behind (invisible to readers, but it holds disk space). Temporaries of a live process (this
    one included) are kept. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    prefix = f".{name}.tmp-"
    for p in folder.iterdir():
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def file_digests(folder: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative posix path: {"sha256", "bytes"}}`` of every regular file under ``folder``.

    Files under temporary names and the top-level names in ``exclude`` are left out; the order is
    sorted, so the result is stable.
    """
    folder = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.parts[0] in exclude or any(is_temp_name(part) for part in rel.parts) or not p.is_file() or p.is_symlink():
            continue
        out[rel.as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def verify_digests(
    folder: str | os.PathLike,
    digests: Mapping[str, Mapping[str, Any]],
    full: bool = True,
    fix: str = "delete the folder and re-create it",
) -> None:
    """Check that every file listed by :func:`file_digests` is still there, the same size, and
    (when ``full``) has the same SHA-256; raise :class:`ArtifactError` naming the first bad file. Hashing
    shows a bar from :data:`~universality.progress.MIN_BYTES` on."""
    folder = Path(folder)
    size = sum(int(e["bytes"]) for e in digests.values()) if full else 0
    bar = progress_bar(digests.items(), f"verify {folder.name}", total=len(digests), unit="file", leave=False,
                       work=size, min_work=MIN_BYTES)
    for rel, entry in bar:
        p = folder / rel
        if not p.is_file():
            raise ArtifactError(f"{p} is missing (listed in the checksums of {folder})", fix)
        size = p.stat().st_size
        if size != int(entry["bytes"]):
            raise ArtifactError(f"{p} has {size} bytes but its checksum entry records {entry['bytes']} (truncated or changed)", fix)
        if full:
            verify_sha256(p, str(entry["sha256"]), fix)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object that is stable across processes and runs."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
