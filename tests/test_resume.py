"""`cljax run ... --resume`: an interrupted run continues and writes the same results."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import tensorflow_datasets as tfds

from cljax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--steps", "6", "--seeds", "2", "--scenarios", "task,class", "--no-progress",
        "--set", "model.widths=[16]", "--set", "eval_chunk=64", "--checkpoint-every", "3"]


def _matrices(results):
    """What must be bit-identical: every scenario's matrices and metrics (not the timings)."""
    return {name: {k: sc[k] for k in ("accuracy", "loss", "init_accuracy", "final_train_loss",
                                      "metrics", "loss_metrics", "diverged")}
            for name, sc in results["scenarios"].items()}


def test_interrupted_cli_run_resumes_to_the_same_results(tmp_path, monkeypatch, capsys):
    import cljax.experiment as experiment

    with tfds.testing.mock_data(num_examples=200):
        assert cli.main(["run", "split_mnist", "--workdir",
                         str(tmp_path / "full"), *TINY]) == 0
        real = experiment.summarise_scenario
        calls = []

        def interrupt_second(cfg, setup, *args, **kwargs):   # Ctrl-C as scenario 2 finishes
            calls.append(setup.name)
            if setup.name == "class":
                raise KeyboardInterrupt
            return real(cfg, setup, *args, **kwargs)

        monkeypatch.setattr(experiment, "summarise_scenario", interrupt_second)
        run = tmp_path / "run"
        assert cli.main(["run", "split_mnist", "--workdir", str(run),
                         *TINY]) == cli.EXIT_INTERRUPTED
        assert "--resume" in capsys.readouterr().err
        partial = json.loads((run / "results.json").read_text())
        assert list(partial["scenarios"]) == ["task"]           # the finished scenario is kept
        monkeypatch.setattr(experiment, "summarise_scenario", real)
        assert cli.main(["run", "split_mnist", "--workdir", str(run),
                         *TINY, "--resume"]) == 0
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    resumed = json.loads((run / "results.json").read_text())
    assert _matrices(resumed) == _matrices(full)


@pytest.mark.slow
def test_sigkill_mid_task_then_resume_equals_uninterrupted(tmp_path):
    """Kill -9 a real run (mnist from TFDS_DATA_DIR) mid-task in a subprocess, resume, compare."""
    data = os.environ.get("TFDS_DATA_DIR") or str(ROOT.parent / "shared" / "tfds")
    if not pathlib.Path(data, "mnist").is_dir():
        pytest.skip(f"mnist is not prepared under {data}")
    args = [sys.executable, "-m", "cljax.cli", "run", "split_mnist",
            "--steps", "400", "--seeds", "2", "--scenarios", "task", "--no-progress",
            "--set", "model.widths=[64]", "--checkpoint-every", "50"]
    env = {**os.environ, "TFDS_DATA_DIR": data}
    subprocess.run(args + ["--workdir", str(tmp_path / "full")], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    run = tmp_path / "run"
    proc = subprocess.Popen(args + ["--workdir", str(run)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run / "checkpoints" / "task" / "state"
    deadline = time.time() + 300
    while time.time() < deadline:   # wait until task 3 has a mid-task checkpoint, then kill
        steps = ([int(p.name) for p in ckpts.glob("*") if p.name.isdigit()]
                 if ckpts.is_dir() else [])
        if any(s > 2 * 400 and s % 400 for s in steps):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "results.json").exists() or "task" not in json.loads(
        (run / "results.json").read_text())["scenarios"]
    subprocess.run(args + ["--workdir", str(run), "--resume"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    resumed = json.loads((run / "results.json").read_text())
    assert _matrices(resumed) == _matrices(full)
