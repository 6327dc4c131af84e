#!/usr/bin/env bash
# The supported lower bounds, tested: a fresh virtual environment with the oldest JAX, flax, optax,
# chex and NumPy that pyproject.toml allows (.ci/lower-bounds.txt), then the default test suite.
# Not part of .ci/run (it doubles CI's time); run it after changing a dependency:
#   .ci/lower_bounds.sh            (pytest arguments may follow, e.g. tests/test_cli.py)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LOWER_BOUNDS_VENV:-.ci/venv-lower}"
rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c .ci/lower-bounds.txt -e ".[test]"
python -m pip list 2>/dev/null | grep -E "^(jax|jaxlib|flax|optax|chex|numpy) "
if [ -d ../shared/tfds ]; then export TFDS_DATA_DIR="$(cd ../shared/tfds && pwd)"; fi
python -m pytest -q "$@"
