#!/usr/bin/env bash
# Build the documentation into docs/_build/html, executing every tutorial; any warning fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$(cd .. && pwd)/shared/tfds}"
python -m sphinx -W --keep-going -n -b html docs docs/_build/html "$@"
