"""Assemble README.md from docs/readme/*.md and the per-package API pages docs/api_*.md.

Each API page's headings are shifted to nest under "API" (its top heading becomes ###); the other
pages' top headings become ##. Run after editing any
of those pages: ``python scripts/build_readme.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API_ORDER = ["api_models.md", "api_data.md", "api_sae.md", "api_match.md", "api_cards.md", "api_zoo.md", "api_scale.md", "api_perf.md"]


def _headings(text: str):
    fence = False
    for i, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fence = not fence
        elif line.startswith("#") and not fence:
            yield i, len(line) - len(line.lstrip("#"))


def nest(text: str, top: int) -> str:
    """Shift every heading (outside code fences) so the page's highest heading has level ``top``."""
    lines = text.splitlines()
    levels = dict(_headings(text))
    shift = top - min(levels.values()) if levels else 0
    for i, level in levels.items():
        lines[i] = "#" * (level + shift) + lines[i][level:]
    return "\n".join(lines).strip() + "\n"


def build() -> str:
    parts = []
    pages = sorted((ROOT / "docs" / "readme").glob("*.md"))
    for page in pages:
        if page.name.startswith("60_"):
            parts.append("## API\n")
            parts += [nest((ROOT / "docs" / name).read_text(), 3) for name in API_ORDER]
        parts.append(page.read_text().strip() + "\n" if page.name.startswith("00_") else nest(page.read_text(), 2))
    return "\n".join(parts)


if __name__ == "__main__":
    tmp = ROOT / ".README.md.tmp"  # written whole, then renamed: never a half-written README
    tmp.write_text(build())
    os.replace(tmp, ROOT / "README.md")
    print("README.md written")
