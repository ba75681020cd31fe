"""Print the project's import-graph counts: cycles, cross-module private imports, function-local imports.

Usage: python scripts/import_graph.py [--details]

The analysis (and its rules) lives in ``tests/test_import_graph.py``; this script only loads it and
prints :func:`summary`. It imports nothing from the project, so it runs with any Python 3.10+.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("_import_graph_check", ROOT / "tests" / "test_import_graph.py")
    assert spec is not None and spec.loader is not None
    check = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = check  # dataclasses look their module up by name
    spec.loader.exec_module(check)
    print(check.summary(check.analyse(ROOT), details="--details" in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
