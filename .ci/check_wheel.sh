#!/usr/bin/env bash
# Packaging check: build the wheel and sdist, check their metadata, install the wheel into a
# fresh virtual environment outside the repository and run a shipped config's main job from
# there, so nothing depends on the source tree's layout. Needs TFDS_DATA_DIR (the data).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist
python -m build --outdir dist . > /dev/null
twine check --strict dist/*
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet dist/cljax-*.whl
cd "$tmp"
"$tmp/venv/bin/cljax" --version
"$tmp/venv/bin/cljax" configs > configs.txt
"$tmp/venv/bin/cljax" methods > methods.txt
"$tmp/venv/bin/cljax" bench --list > protocols.txt
"$tmp/venv/bin/cljax" run split_mnist --method ewc --steps 3 --seeds 2 --scenarios task,class \
    --workdir "$tmp/run" --no-progress > run.log
"$tmp/venv/bin/python" - "$tmp" <<'PY'
import json, pathlib, sys
import cljax
tmp = pathlib.Path(sys.argv[1])
package = pathlib.Path(cljax.__file__).parent
assert "site-packages" in str(package), package            # the wheel, not the source tree
assert (package / "py.typed").is_file() and (package / "configs" / "split_mnist.py").is_file()
assert "split_cifar100" in (tmp / "configs.txt").read_text()
assert "dgr_distill" in (tmp / "methods.txt").read_text()
assert "hsu2018_split_mnist" in (tmp / "protocols.txt").read_text()   # cljax.bench is shipped
results = json.loads((tmp / "run" / "results.json").read_text())
assert set(results["scenarios"]) == {"task", "class"}, results["scenarios"].keys()
print(f"wheel check: cljax {cljax.__version__} from {package} ran split_mnist "
      f"({', '.join(results['scenarios'])})")
PY
