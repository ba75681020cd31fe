#!/usr/bin/env bash
# The GPU acceptance run (one H100/H200, 10 minutes): pytest tests/gpu, the gpu-real benchmark profile
# (capture, harvest, training, 65,536^2 matching) and the Mamba path with mamba-ssm kernels, each step
# with its own timeout; writes benchmarks/results/gpu-acceptance-<gpu>.json and .md.
#
#   bash benchmarks/gpu_acceptance.sh             # run it (refuses with exit 2 without CUDA)
#   bash benchmarks/gpu_acceptance.sh --dry-run   # print and write the plan; runs nothing, needs no GPU
#
# PYTHON picks the interpreter (default: .venv/bin/python when present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 WANDB_MODE=disabled
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" benchmarks/gpu_acceptance.py "$@"
