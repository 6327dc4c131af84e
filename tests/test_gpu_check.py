"""benchmarks/gpu_check.sh in --small mode runs on the CPU and prints one JSON line per check."""
import json
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_small_runs_on_cpu(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--small",
                           "--workdir", str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    checks = {r["check"] for r in records}
    assert {"setup", "cli_split_mnist", "cli_permuted_mnist_task", "cifar_cnn_step",
            "estimators", "lanczos"} <= checks
    assert not [r for r in records if "error" in r]
    cnn = next(r for r in records if r["check"] == "cifar_cnn_step" and "jit_ms" in r)
    assert cnn["noncanonical_convs"] == []
