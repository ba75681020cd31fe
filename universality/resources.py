"""Where the shipped Hydra configs live: :func:`config_dir`, the one place that locates them.

``configs/`` sits at the top of the repository (``config.yaml``, ``study/``, ``zoo/``, ``sweep/``,
``hydra/``). The wheel ships the same folder inside the package as ``universality/configs``
(``setup.py`` maps the package ``universality.configs`` to ``configs/``; ``pyproject.toml`` lists
its YAML as package data), so :func:`config_dir` finds it in this order:

1. ``$UNIVERSALITY_CONFIGS``, when set (a folder laid out like ``configs/``);
2. ``universality/configs`` inside the installed package (a wheel install);
3. ``configs/`` next to the ``universality`` package (a repository checkout or an editable install).

Nothing here imports Hydra or torch, so ``python -m universality --help`` stays cheap.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

__all__ = ["CONFIGS_ENV", "config_dir", "preset_names", "preset_description"]

#: Environment variable naming another configs folder (same layout as ``configs/``).
CONFIGS_ENV = "UNIVERSALITY_CONFIGS"


def config_dir() -> Path:
    """The Hydra config folder (absolute): ``config.yaml``, ``study/``, ``zoo/``, ``sweep/``, ``hydra/``."""
    env = os.environ.get(CONFIGS_ENV)
    if env:
        return Path(env).expanduser().resolve()
    packaged = Path(str(resources.files("universality").joinpath("configs")))
    if packaged.is_dir():
        return packaged.resolve()
    return Path(__file__).resolve().parent.parent / "configs"


def preset_names(group: str) -> tuple[str, ...]:
    """Names of the YAML presets in one config group (``study``, ``zoo``, ``sweep``), sorted."""
    folder = config_dir() / group
    return tuple(sorted(p.stem for p in folder.glob("*.yaml"))) if folder.is_dir() else ()


def preset_description(group: str, name: str) -> str:
    """The first sentence of a preset's leading ``#`` comment (Hydra ``# @package`` lines skipped)."""
    path = config_dir() / group / f"{name}.yaml"
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text:  # a blank comment line ends the description paragraph
            if lines:
                break
            continue
        lines.append(text)
    text = " ".join(lines)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text, maxsplit=1)[0]
