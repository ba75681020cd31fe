"""Training-checkpoint series: Pythia's published revision names and local ``step{N}/`` folders.

Pythia (Biderman et al. 2023, "Pythia: A Suite for Analyzing Large Language Models Across Training
and Scaling") publishes 154 checkpoints per model as hub revisions: ``step0``, the log-spaced
``step1, step2, step4, ..., step512`` and then every 1000 steps ``step1000 ... step143000``.
A local folder holding ``step{N}/`` sub-folders (each a saved HF model) is read as the same kind of
series, ordered by ``N``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PYTHIA_REVISIONS", "is_pythia", "step_of", "local_revisions", "is_series_dir"]

PYTHIA_REVISIONS: tuple[str, ...] = (
    ("step0",)
    + tuple(f"step{2**i}" for i in range(10))  # 1, 2, 4, ..., 512
    + tuple(f"step{s}" for s in range(1000, 143001, 1000))
)


def is_pythia(name: str) -> bool:
    """True for hub names of the Pythia suite (``EleutherAI/pythia-70m``, ``...-deduped``, ...)."""
    return name.lower().startswith("eleutherai/pythia-")


def step_of(revision: str) -> int | None:
    """``"step1000"`` -> 1000; ``None`` for names that are not ``step{N}``."""
    if revision.startswith("step") and revision[4:].isdigit() and revision[4:].isascii():
        return int(revision[4:])
    return None


def local_revisions(root: str | Path) -> tuple[str, ...]:
    """Names of the ``step{N}/`` sub-folders of ``root`` that hold a ``config.json``, by step."""
    root = Path(root)
    found = []
    for child in root.iterdir():
        step = step_of(child.name)
        if step is not None and child.is_dir() and (child / "config.json").is_file():
            found.append((step, child.name))
    return tuple(name for _, name in sorted(found))


def is_series_dir(path: str | Path) -> bool:
    """A folder with no ``config.json`` of its own and at least one ``step{N}/`` model folder."""
    path = Path(path)
    return path.is_dir() and not (path / "config.json").is_file() and bool(local_revisions(path))
