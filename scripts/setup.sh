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
# The card-export tests read exports with SAEDashboard's own reader. sae-dashboard cannot be installed
# beside this project's transformers/transformer_lens pins, so its wheel is only downloaded (no deps).
if [[ ",$extras," == *",dev,"* ]] && ! ls .whl/sae_dashboard-*.whl >/dev/null 2>&1; then
    if ! "$py" -m pip download -q --disable-pip-version-check --no-deps "sae-dashboard==0.8.0" -d .whl >/dev/null 2>&1; then
        echo "setup: could not download the sae-dashboard wheel; the export reader tests will skip" >&2
    fi
fi
