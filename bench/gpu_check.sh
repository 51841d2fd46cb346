#!/usr/bin/env bash
# The first run on an NVIDIA GPU with TensorRT (under 8 minutes): see bench/gpu_check.py for the steps.
#   bash bench/gpu_check.sh            # on the GPU machine: writes bench/results/gpu_check.json
#   bash bench/gpu_check.sh --dry-run  # anywhere (CI): the non-GPU parts for real, the GPU commands up to exit 4
# Exit 0 when every step passed, 3 when one failed (the JSON says which and why).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-$PWD}"
exec timeout 480 "${PYTHON:-python}" bench/gpu_check.py "$@"
