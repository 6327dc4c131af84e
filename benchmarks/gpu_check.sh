#!/usr/bin/env bash
# One-script device check (a few minutes on a GPU): prints JSON lines, see benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh            # full sizes (a GPU machine)
#   bash benchmarks/gpu_check.sh --small    # small sizes: runs on the CPU too (CI keeps it working)
#
# Needs a Python with cljax installed (pip install -e .) and, on a GPU, a CUDA build of jax
# (pip install "jax[cuda12]==<the jax version in pyproject.toml>"); $PYTHON overrides `python`.
# The CLI checks read MNIST from $TFDS_DATA_DIR (default: ../shared/tfds beside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${TFDS_DATA_DIR:-}" && -d ../shared/tfds ]]; then
  export TFDS_DATA_DIR="$(cd ../shared/tfds && pwd)"
fi
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
