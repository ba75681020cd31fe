"""The on-disk layout of a zoo run, written atomically.

::

    <out>/
      tokenizer/            the shared tokenizer (also copied into every step folder)
      step{N}/              one per checkpoint: config.json, model.safetensors, tokenizer files
      resume/               state.json + optimizer-step{N}.safetensors of the latest checkpoint (removed when done)
      zoo.json              the manifest, written last

``models.load(<out>)`` reads the ``step{N}/`` folders as a Pythia-style checkpoint series.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from universality.errors import ArtifactError
from universality.io import atomic_dir, read_json, write_json
from universality.zoo.optim_state import load_optimizer, save_optimizer

__all__ = [
    "step_dir",
    "write_checkpoint",
    "write_resume",
    "read_resume",
    "load_checkpoint_model",
    "clear_run",
    "finish_resume",
    "git_commit",
    "MANIFEST",
]

MANIFEST = "zoo.json"
_RESUME = "resume"


def step_dir(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / f"step{step}"


def write_checkpoint(out_dir: str | os.PathLike, step: int, model: torch.nn.Module, tokenizer) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` to ``<out>/step{step}/`` in one atomic rename."""
    target = step_dir(out_dir, step)
    with atomic_dir(target) as tmp, _quiet_hf_progress():
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return target


@contextlib.contextmanager
def _quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' per-save "Writing model shards" bar (restoring the previous setting)."""
    from transformers.utils import logging as hf_logging

    was_disabled = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


def write_resume(
    out_dir: str | os.PathLike, step: int, optimizer: torch.optim.Optimizer, model: torch.nn.Module, state: dict[str, Any]
) -> Path:
    """Save the optimizer moments and the run state after checkpoint ``step`` to ``<out>/resume/``.

    Crash-safe at every point: the moments go to a new file ``optimizer-step{step}.safetensors``
    (atomic), then ``state.json`` (atomic file replace) is switched to point at it, and only then
    are older moment files removed. A kill anywhere leaves a ``state.json`` whose files all exist.
    (A folder replaced whole would briefly not exist between its two renames.)
    """
    folder = Path(out_dir) / _RESUME
    folder.mkdir(parents=True, exist_ok=True)
    name = f"optimizer-step{step}.safetensors"
    save_optimizer(optimizer, model, folder / name)
    write_json(folder / "state.json", {**state, "step": step, "optimizer": name})
    for old in folder.glob("optimizer-step*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder


def read_resume(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The saved run state, or ``None`` when there is nothing to resume from."""
    path = Path(out_dir) / _RESUME / "state.json"
    if not path.is_file():
        return None
    state = read_json(path)
    if not step_dir(out_dir, int(state["step"])).is_dir() or not (path.parent / state["optimizer"]).is_file():
        raise ArtifactError(f"{path} points at step{state['step']}, whose files are missing", "delete the out_dir (or pass overwrite=True) and retrain")
    return state


def load_checkpoint_model(
    out_dir: str | os.PathLike, state: dict[str, Any], optimizer_factory
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Reload the model of the checkpoint ``state`` (from :func:`read_resume`) names, and its optimizer state."""
    step = int(state["step"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(step_dir(out_dir, step)), local_files_only=True, dtype=torch.float32)
    model.train()
    optimizer = optimizer_factory(model)
    load_optimizer(optimizer, model, Path(out_dir) / _RESUME / state["optimizer"])
    return model, optimizer


def finish_resume(out_dir: str | os.PathLike) -> None:
    """Remove the resume state once the manifest is written (the run is complete)."""
    shutil.rmtree(Path(out_dir) / _RESUME, ignore_errors=True)


def clear_run(out_dir: str | os.PathLike) -> None:
    """Remove a previous run's step folders, resume state, tokenizer and manifest from ``out_dir``."""
    out = Path(out_dir)
    if not out.is_dir():
        return
    for child in out.iterdir():
        if child.name in (MANIFEST, _RESUME, "tokenizer") or (child.name.startswith("step") and child.name[4:].isdigit()):
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def git_commit() -> str | None:
    """The commit of the repository this package is imported from, or ``None`` outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None
