import json

import pytest
import tensorflow_datasets as tfds

from cljax import cli
from cljax.config import apply_assignment
from cljax.experiment import validate_config


def test_end_to_end_on_mock_mnist(tmp_path, capsys):
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=200):
        code = cli.main(["run", "experiments/configs/split_mnist.py", "--steps", "6", "--seeds",
                         "2", "--scenarios", "task,class", "--workdir", str(workdir),
                         "--no-progress", "--set", "model.widths=[16]", "--set", "eval_chunk=64"])
    assert code == 0
    for name in ("results.json", "report.md", "accuracy_matrix.png", "task_curves.png"):
        assert (workdir / name).stat().st_size > 0
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["scenarios"]) == {"task", "class"}
    acc = results["scenarios"]["class"]["accuracy"]
    assert len(acc) == 2 and len(acc[0]) == 5 and len(acc[0][0]) == 5
    assert results["config"]["model"]["widths"] == [16]
    assert {"acc", "bwt", "fwt", "forgetting", "forgetting_from_first"} <= set(
        results["scenarios"]["task"]["metrics"])
    assert "jax" in results["versions"]
    assert "| task-IL |" in (workdir / "report.md").read_text()


def test_overrides_and_config_validation():
    cfg = cli.load_config("experiments/configs/split_mnist.py")
    apply_assignment(cfg, "optimizer.learning_rate=3e-4")
    assert cfg["optimizer"]["learning_rate"] == 3e-4
    with pytest.raises(KeyError, match="no key"):
        apply_assignment(cfg, "lerning_rate=1")
    with pytest.raises(ValueError, match="key=value"):
        apply_assignment(cfg, "steps")
    with pytest.raises(ValueError, match="scenarios"):
        validate_config({**cfg, "scenarios": ["task", "instance"]})
    with pytest.raises(ValueError, match="unknown method"):
        validate_config({**cfg, "method": "magic"})
    with pytest.raises(ValueError, match="steps"):
        validate_config({**cfg, "steps": 0})
    with pytest.raises(ValueError, match="learning_rate"):
        validate_config({**cfg, "optimizer": {"name": "adam", "learning_rate": -1}})
    with pytest.raises(FileNotFoundError):
        cli.load_config("experiments/configs/nope.py")


def _tiny_sweep(workdir, method, sweep):
    """`cljax run` of a 2-seed, 4-step Task-IL sweep on mock MNIST; returns results.json."""
    with tfds.testing.mock_data(num_examples=200):
        code = cli.main(["run", "experiments/configs/split_mnist.py", "--method", method,
                         "--steps", "4", "--seeds", "2", "--scenarios", "task", "--workdir",
                         str(workdir), "--no-progress", "--sweep", sweep,
                         "--set", "model.widths=[8]", "--set", "eval_chunk=64",
                         "--set", "method_options={'num_examples': 16, 'chunk_size': 8}"])
    assert code == 0
    return json.loads((workdir / "results.json").read_text())


def test_sweep_runs_every_value_and_plots(tmp_path):
    workdir = tmp_path / "sweep"
    results = _tiny_sweep(workdir, "ewc", "strength=0,1e3")
    sweep = results["scenarios"]["task"]["sweep"]
    assert [p["hparams"]["strength"] for p in sweep] == [0.0, 1e3]
    assert all(len(p["accuracy"]) == 2 for p in sweep)
    assert (workdir / "stability_plasticity.png").stat().st_size > 0
    assert "sweep" in (workdir / "report.md").read_text()


def test_sweep_and_hparam_validation():
    cfg = cli.load_config("experiments/configs/split_mnist.py")
    assert cli.parse_sweep("strength=1e2,1e3") == ("strength", [100.0, 1000.0])
    with pytest.raises(ValueError, match="numbers"):
        cli.parse_sweep("strength=big")
    with pytest.raises(ValueError, match="does not take"):
        validate_config({**cfg, "method": "ewc", "sweep": {"lambda": [1.0]}})
    with pytest.raises(ValueError, match=">= 0"):
        validate_config({**cfg, "method": "ewc", "hparams": {"strength": -1.0}})
    with pytest.raises(ValueError, match="non-empty list"):
        validate_config({**cfg, "method": "ewc", "sweep": {"strength": []}})


def test_a_diverging_sweep_point_is_reported_and_never_chosen(tmp_path):
    workdir = tmp_path / "unstable"
    results = _tiny_sweep(workdir, "ncl", "learning_rate=1e-3,1e30")
    sc = results["scenarios"]["task"]
    stable, unstable = sc["sweep"]
    assert stable["diverged"] == [] and len(unstable["diverged"]) == 2
    assert unstable["diverged"][0]["task"] == 0
    assert sc["best_hparams"]["learning_rate"] == 1e-3
    assert "2/2 (seed 0: task 1, step" in (workdir / "report.md").read_text()
