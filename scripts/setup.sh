#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the CPU build of torch pinned first,
# so that no CUDA wheels are pulled on a CPU machine. Extra arguments are pip extras, e.g. dev,bench.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
py=.venv/bin/python
"$py" -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
"$py" -c "import torch" || { echo "setup: torch did not install; install torch first (see README: Install)" >&2; exit 1; }
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"$py" -m pip install -q --disable-pip-version-check -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
"$py" -c "import universality, models" || { echo "setup: the package did not install" >&2; exit 1; }
