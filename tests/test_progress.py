"""Tests for cljax.progress (``cljax progress``): a run looked at from outside, nothing
touched."""
import json
import os
import pathlib

import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from helpers import tiny_split_stream

from cljax import cli
from cljax.checkpoint import Checkpointer
from cljax.data import make_scenario
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.progress import Scenario, find_scenarios, format_progress, scenario_progress
from cljax.training import make_trainer, prepare_data, run_stream
from cljax.workdir import lock_workdir


def _listing(root: pathlib.Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                  for p in root.rglob("*"))


def _interrupted_run(workdir: pathlib.Path, checkpoints: pathlib.Path | None = None):
    """A 2-task run of 12 steps a task (2 seeds) interrupted at task 2, step 8, checkpointed
    where ``cljax run`` puts its checkpoints (or in ``checkpoints``); and the same run
    uninterrupted."""
    s = tiny_split_stream()
    sc = make_scenario(s, "task")
    m = get_method("none")
    tr = make_trainer(as_model(MLP((16,), sc.num_outputs, num_heads=sc.num_heads)), m,
                      optimizer=optax.adam(1e-2), batch_size=8, eval_chunk=16)
    data = prepare_data(s, sc, eval_chunk=16)
    kw = dict(num_steps=12, keys=jax.random.split(jax.random.key(2), 2),
              hparams=m.default_hparams, checkpoint_every=4)
    full = run_stream(tr, data, **{k: v for k, v in kw.items() if k != "checkpoint_every"})

    def stop(task, done, total):
        if (task, done) == (1, 8):
            raise KeyboardInterrupt

    ckpt = Checkpointer(checkpoints or workdir / "checkpoints" / "task" / "state",
                        log=lambda m: None)
    with pytest.raises(KeyboardInterrupt):
        run_stream(tr, data, checkpoint=ckpt, progress=stop, **kw)
    return full


def test_progress_of_an_interrupted_run_matches_the_uninterrupted_one(tmp_path):
    workdir = tmp_path / "bench" / "none_seed0"
    full = _interrupted_run(workdir)
    [scenario] = find_scenarios(tmp_path)
    assert scenario == Scenario(workdir, "task", workdir / "checkpoints" / "task" / "state",
                                workdir / "checkpoints" / "task" / "result.json")
    before = _listing(tmp_path)
    p = scenario_progress(scenario)
    assert _listing(tmp_path) == before
    assert (p["status"], p["scenario"], p["runs"], p["tasks"]) == ("checkpointed", "task", 2, 2)
    assert (p["tasks_done"], p["step"], p["steps"], p["holder"]) == (1, 8, 12, None)
    acc = np.asarray(full.accuracy, dtype=float)
    np.testing.assert_allclose(p["average_seen"], [acc[:, 0, 0].mean()], rtol=1e-6)
    np.testing.assert_allclose(p["just_trained"], [acc[:, 0, 0].mean()], rtol=1e-6)
    assert len(p["task_seconds"]) == 1 and p["seconds_left"] == pytest.approx(
        p["task_seconds"][0] * (1 - 8 / 12))
    text = format_progress([p])
    assert "task 2 of 2, step 8 of 12 (2 runs)" in text and "stopped: rerun" in text
    assert "to the end" not in text                     # no pace promised for a stopped run
    with lock_workdir(workdir):
        p = scenario_progress(scenario)
        assert p["holder"]["pid"] == os.getpid()
        assert f"running (pid {os.getpid()}" in format_progress([p])
    assert format_progress([]) == "no cljax runs found"


def test_progress_reports_a_damaged_checkpoint_as_unreadable(tmp_path):
    workdir = tmp_path / "run"
    _interrupted_run(workdir)
    for p in (workdir / "checkpoints" / "task" / "state").rglob("*"):
        if p.is_file():
            p.write_bytes(b"")
    [scenario] = find_scenarios(workdir)
    p = scenario_progress(scenario)
    assert p["status"] == "unreadable" and "could be read" in p["error"]
    assert "unreadable (stopped): CheckpointError" in format_progress([p])
    empty = tmp_path / "fresh"
    (empty / "checkpoints" / "task" / "state").mkdir(parents=True)
    [fresh] = find_scenarios(empty)
    p = scenario_progress(fresh)
    assert p["status"] == "not started" and "not started" in format_progress([p])
    with lock_workdir(empty):
        text = format_progress([scenario_progress(fresh)])
        assert f"running (pid {os.getpid()}" in text and "no checkpoint yet" in text


def test_cljax_progress_of_a_finished_cli_run(tmp_path, capsys):
    workdir = tmp_path / "runs" / "tiny"
    with tfds.testing.mock_data(num_examples=200):
        assert cli.main(["run", "split_mnist", "--method", "none", "--steps", "4", "--seeds",
                         "2", "--scenarios", "task", "--workdir", str(workdir),
                         "--no-progress", "--set", "model.widths=[8]",
                         "--set", "eval_chunk=64"]) == 0
    results = json.loads((workdir / "results.json").read_text())["scenarios"]["task"]
    capsys.readouterr()
    assert cli.main(["progress", str(tmp_path / "runs"), "--json"]) == 0
    [p] = json.loads(capsys.readouterr().out)
    acc = np.asarray(results["accuracy"], dtype=float)
    assert (p["status"], p["tasks"], p["tasks_done"], p["holder"]) == ("finished", 5, 5, None)
    assert p["acc"] == pytest.approx(results["metrics"]["acc"]["mean"])
    np.testing.assert_allclose(p["average_seen"],
                               [acc[:, i, :i + 1].mean() for i in range(5)], rtol=1e-6)
    np.testing.assert_allclose(p["first_task"], acc[:, :, 0].mean(0), rtol=1e-6)
    assert cli.main(["progress", str(tmp_path / "runs")]) == 0
    assert "tiny · task-IL: finished: ACC" in capsys.readouterr().out
    assert cli.main(["progress", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_diverged_run_is_left_out_of_the_means(tmp_path):
    scenario = tmp_path / "run" / "checkpoints" / "class"
    scenario.mkdir(parents=True)
    nan = float("nan")
    accuracy = [[[0.8, nan], [0.4, 0.6]], [[0.6, nan], [nan, nan]]]   # run 1 diverged in task 2
    (scenario / "result.json").write_text(json.dumps(
        {"identity": {}, "result": {"accuracy": accuracy,
                                    "metrics": {"acc": {"mean": 0.5, "per_run": [0.5, None]}}}}))
    [found] = find_scenarios(tmp_path)
    p = scenario_progress(found)
    assert (p["status"], p["scenario"], p["runs"], p["tasks_done"]) == ("finished", "class", 2, 2)
    np.testing.assert_allclose(p["average_seen"], [0.7, 0.5])
    np.testing.assert_allclose(p["just_trained"], [0.7, 0.6])
    np.testing.assert_allclose(p["first_task"], [0.7, 0.4])
    assert "class-IL: finished: ACC 50.00 (2 runs)" in format_progress([p])


def test_a_bare_checkpoint_directory_of_a_script_is_found_and_read(tmp_path):
    full = _interrupted_run(tmp_path, checkpoints=tmp_path / "probe" / "ckpt")
    [scenario] = find_scenarios(tmp_path)
    assert scenario == Scenario(tmp_path / "probe", "", tmp_path / "probe" / "ckpt", None)
    p = scenario_progress(scenario)
    assert (p["status"], p["tasks_done"], p["step"], p["holder"]) == ("checkpointed", 1, 8, None)
    np.testing.assert_allclose(p["average_seen"],
                               [np.asarray(full.accuracy, dtype=float)[:, 0, 0].mean()])
    text = format_progress([p])
    assert text.startswith(f"{tmp_path / 'probe' / 'ckpt'} (checkpoints): task 2 of 2")
    assert "--resume" not in text and "stopped" not in text   # no lock: not known
    assert "no lock tells whether a process writes it" in text
    with pytest.raises(TypeError, match="scenario must be a Scenario"):
        scenario_progress((tmp_path, tmp_path))
