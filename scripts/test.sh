#!/usr/bin/env bash
# Set up .venv and run both test tiers: the default suite, then the tests marked slow.
# Usage: bash scripts/test.sh [--fast] [pytest args...]   (--fast skips the slow tier)
set -uo pipefail
cd "$(dirname "$0")/.."
fast=0
args=()
for a in "$@"; do
    if [ "$a" = "--fast" ]; then fast=1; else args+=("$a"); fi
done
bash scripts/setup.sh dev,bench,sweeps || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=.venv/bin/python
"$py" -m pytest -m "not slow" ${args[@]+"${args[@]}"}
rc=$?
[ $rc -eq 0 ] || exit $rc
[ $fast -eq 1 ] && exit 0
"$py" -m pytest -m slow --durations=20 ${args[@]+"${args[@]}"}
rc=$?
[ $rc -eq 5 ] && rc=0   # no slow tests collected
exit $rc
