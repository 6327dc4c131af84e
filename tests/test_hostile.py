"""The standing hostile suite (issue 24): what a hostile new user tried, kept as tests.

Every case is one probe that misbehaved once. CLI cases run ``cljax run`` in real processes
(``subprocess``), with real signals and real locks; library cases call the function directly.
The fast cases fail before any data is loaded: they run concurrently, one process each, in
:func:`fast_cli`. The ``slow`` cases train (``-m slow``): a checkpoint of another run, a damaged
checkpoint, ``--overwrite`` beside a user's files, two runs into one directory, Ctrl-C / SIGTERM
at the edges of a scenario, a state larger than the machine.

    python -m pytest -q tests/test_hostile.py            # the fast cases
    python -m pytest -q -m slow tests/test_hostile.py    # the slow ones
"""
from __future__ import annotations

import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_split_stream

from cljax import cli, memory
from cljax import workdir as wd
from cljax.checkpoint import Checkpointer, CheckpointMismatchError
from cljax.curvature import hutchinson_trace, hutchpp_trace, lanczos
from cljax.experiment import (
    RunInterrupted,
    StateSizeError,
    check_state_sizes,
    deferred_interrupts,
    run_experiment,
    run_identity,
    validate_config,
)
from cljax.transforms import gem_dual, gpm_consolidate, init_gpm, ncl
from cljax.transforms.ogd import ground_truth_gradients, init_ogd

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "split_mnist"
DATA = os.environ.get("TFDS_DATA_DIR") or str(ROOT.parent / "shared" / "tfds")
HAS_MNIST = pathlib.Path(DATA, "mnist").is_dir()
ENV = {**os.environ, "TFDS_DATA_DIR": DATA, "PYTHONUNBUFFERED": "1"}
R = ["--steps", "20", "--seeds", "1", "--scenarios", "task", "--no-progress"]       # the issue's
K = ["--method", "er", "--steps", "100", "--checkpoint-every", "40", "--scenarios", "task",
     "--seeds", "2", "--no-progress"]
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"mnist is not prepared under {DATA}")


def _cljax(*args: str) -> list[str]:
    return [sys.executable, "-m", "cljax.cli", "run", CONFIG, *args]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, **kwargs)


def _one_line(err: str) -> str:
    """The one-line error of a CLI run (and nothing else on stderr but library warnings)."""
    lines = [l for l in err.strip().splitlines() if l.startswith("cljax:")]
    assert len(lines) == 1 and lines[0].startswith("cljax: error: "), err
    assert "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Fast CLI cases: each fails before any data is loaded, one real process each, all at once
# ---------------------------------------------------------------------------------------------

HOLDER = ("import sys, time\n"
          "from cljax.workdir import lock_workdir\n"
          "lock = lock_workdir(sys.argv[1])\n"
          "print('locked', flush=True)\n"
          "time.sleep(600)\n")

FAST = {   # name: (the options after the config, what the one-line error must say)
    "rgo_alpha_0": (["--method", "rgo", "--set", "hparams.alpha=0"],
                    "--set hparams.alpha=0: config['hparams']['alpha'] of method 'rgo' must be "
                    "> 0; got 0"),
    "rgo_sweep_alpha_0": (["--method", "rgo", "--sweep", "alpha=1,0"],
                          "--sweep alpha=1,0: config['sweep']['alpha'] value of method 'rgo' "
                          "must be > 0; got 0.0"),
    "lwf_temperature_0": (["--method", "lwf", "--set", "hparams.temperature=0"],
                          "config['hparams']['temperature'] of method 'lwf' must be > 0"),
    "lwf_sweep_temperature_0": (["--method", "lwf", "--sweep", "temperature=2,0"],
                                "--sweep temperature=2,0: config['sweep']['temperature'] value "
                                "of method 'lwf' must be > 0"),
    "icarl_task_il": (["--method", "icarl", "--scenarios", "task"],
                      "method 'icarl' does not support the 'task' scenario (it supports class)"),
    "memory_below_classes": (["--method", "er", "--set",
                              "method_options={'memory': 'class_balanced', 'capacity': 5}"],
                             "a class-balanced memory of capacity 5 cannot hold one example of "
                             "each of the stream's 10 classes"),
    "ogd_deferred_adam": (["--method", "ogd", "--set", "method_options={'deferred': True}"],
                          "ogd(deferred=True) is OGD only under plain SGD"),
    "ogd_deferred_momentum": (["--method", "ogd", "--set", "method_options={'deferred': True}",
                               "--set", "optimizer={'name': 'sgd', 'learning_rate': 0.1, "
                                        "'momentum': 0.9}"],
                              "ogd(deferred=True) is OGD only under plain SGD"),
    "gpm_float_thresholds": (["--method", "gpm", "--set", "method_options={'thresholds': 0.9}"],
                             "thresholds must be a list of energy thresholds in (0, 1]"),
    "empty_workdir": (["--workdir", ""], "--workdir '' is empty; give a directory path"),
}
if HAS_MNIST:   # the stream's size comes from the dataset's metadata
    FAST["per_class_20000"] = (["--method", "er", "--set", "method_options={'per_class': 20000}"],
                               "is larger than the stream (60000 training examples)")


SUBPROCESS_FAST = ("rgo_sweep_alpha_0", "per_class_20000")   # the rest of FAST: -m slow


def _workdir_cases(base: pathlib.Path) -> dict:
    """The work-directory and path cases: ``{name: (argv, directory)}``."""
    long_name = base / ("x" * 300)
    deep = base.joinpath(*(["y" * 200] * 25))
    cases = {"long_component": (_cljax(*R, "--workdir", str(long_name)), long_name),
             "long_path": (_cljax(*R, "--workdir", str(deep)), deep),
             "long_config": ([sys.executable, "-m", "cljax.cli", "run", "c" * 300 + ".py"], None),
             "empty_workdir": (_cljax(*R, "--workdir", ""), None)}
    for name, files, flags in (("resume_other_files", {"notes.txt": "x\n"}, ["--resume"]),
                               ("overwrite_user_files", {"config.json": "{}\n",
                                                         "notes.txt": "x\n"}, ["--overwrite"]),
                               ("lone_config_json", {"config.json": "{}\n"}, [])):
        d = base / name
        d.mkdir()
        for f, text in files.items():
            (d / f).write_text(text)
        cases[name] = (_cljax(*R, "--workdir", str(d), *flags), d)
    return cases


def _run_all(cases: dict, holder_dir: pathlib.Path | None = None) -> dict:
    """Every case in its own process, all started at once; with ``holder_dir``, another real
    process holds its lock and the case ``"locked"`` runs into it (the holder is then killed
    with SIGKILL). ``{name: (process, stdout, stderr, directory)}``."""
    procs = {name: (subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True), d)
             for name, (argv, d) in cases.items()}
    out = {}
    holder = None
    try:
        if holder_dir is not None:
            holder_dir.mkdir()
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(holder_dir)], cwd=ROOT,
                                      env=ENV, stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "locked"
            procs["locked"] = (subprocess.Popen(_cljax(*R, "--workdir", str(holder_dir)),
                                                cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True), holder_dir)
        for name, (proc, d) in procs.items():
            stdout, stderr = proc.communicate(timeout=600)
            out[name] = (proc, stdout, stderr, d)
    finally:
        if holder is not None:
            holder.send_signal(signal.SIGKILL)   # a dead holder: the kernel releases its lock
            holder.wait()
            out["holder_pid"] = holder.pid
    return out


@pytest.fixture(scope="module")
def fast_cli(tmp_path_factory):
    """The work-directory cases, a lock held by another process, and two validation cases, each
    in its own ``cljax run`` process."""
    base = tmp_path_factory.mktemp("fast")
    cases = _workdir_cases(base)
    for name in SUBPROCESS_FAST:
        if name in FAST:
            cases[name] = (_cljax(*R, "--workdir", str(base / name), *FAST[name][0]),
                           base / name)
    return _run_all(cases, holder_dir=base / "locked")


def _check_refused_before_loading(code: int, stdout: str, stderr: str, name: str) -> None:
    assert code == 2, stderr
    assert FAST[name][1] in _one_line(stderr)
    assert "(--debug shows the traceback)" not in stderr
    assert "loaded" not in stdout           # refused before the data was read


@pytest.mark.parametrize("name", sorted(FAST))
def test_validation_happens_before_any_data_is_loaded(name, tmp_path, capsys, monkeypatch):
    import cljax.experiment as experiment

    def no_loading(*args, **kwargs):
        raise AssertionError("the data was loaded")
    monkeypatch.setattr(experiment, "load_experiment_stream", no_loading)
    code = cli.main(["run", CONFIG, *R, "--workdir", str(tmp_path / "w"), *FAST[name][0]])
    out = capsys.readouterr()
    _check_refused_before_loading(code, out.out, out.err, name)


@pytest.mark.parametrize("name", [n for n in SUBPROCESS_FAST if n in FAST])
def test_validation_in_a_real_process(fast_cli, name):
    proc, stdout, stderr, _ = fast_cli[name]
    _check_refused_before_loading(proc.returncode, stdout, stderr, name)


@pytest.mark.slow
def test_every_validation_case_in_real_processes(tmp_path):
    cases = {name: (_cljax(*R, "--workdir", str(tmp_path / name), *args), tmp_path / name)
             for name, (args, _) in FAST.items() if name not in SUBPROCESS_FAST}
    for name, (proc, stdout, stderr, _) in _run_all(cases).items():
        _check_refused_before_loading(proc.returncode, stdout, stderr, name)


@pytest.mark.parametrize("name, expected", [
    ("long_component", "the path is too long (File name too long"),
    ("long_path", "the path is too long (File name too long"),
    ("long_config", "config '" + "c" * 300 + ".py': File name too long")])
def test_overlong_paths_are_one_line_errors(fast_cli, name, expected):
    proc, _, stderr, _ = fast_cli[name]
    assert proc.returncode == 2
    assert expected in _one_line(stderr)


def test_resume_on_a_folder_of_other_files_suggests_only_what_works(fast_cli):
    proc, _, stderr, d = fast_cli["resume_other_files"]
    message = _one_line(stderr)
    assert proc.returncode == 2 and "holds no cljax run to resume" in message
    assert "--overwrite" not in message      # it would refuse this folder too
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("name", ["overwrite_user_files", "lone_config_json"])
def test_a_users_files_are_never_overwritten_nor_deleted(fast_cli, name):
    proc, _, stderr, d = fast_cli[name]
    assert proc.returncode == 2
    assert "is not empty and not a cljax run's directory" in _one_line(stderr)
    assert (d / "config.json").read_text() == "{}\n"
    assert name == "lone_config_json" or (d / "notes.txt").read_text() == "x\n"


def test_a_second_run_into_a_locked_directory_fails_at_once_naming_the_holder(fast_cli, tmp_path):
    proc, stdout, stderr, d = fast_cli["locked"]
    message = _one_line(stderr)
    assert proc.returncode == 2 and "is in use by another cljax run" in message
    assert f"pid {fast_cli['holder_pid']} on host" in message and "loaded" not in stdout
    # the holder was killed with SIGKILL: its lock died with it, the directory is usable again
    info = wd.prepare_workdir(d, {"method": "none"})
    try:
        assert json.loads((d / wd.LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        info["lock"].release()


def test_help_says_checkpoint_every_is_rounded_down(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "rounded down to a divisor of the steps per task" in text
    assert "--max-state-bytes" in text


# ---------------------------------------------------------------------------------------------
# Library: checkpoints that know whose they are, damaged checkpoints moved aside
# ---------------------------------------------------------------------------------------------

IDENTITY = {"method": "er", "seeds": 2, "steps": 100, "version": "0.1.0", "config": "b"}


def _damage(step_dir: pathlib.Path, how: str) -> None:
    files = [p for p in step_dir.rglob("*") if p.is_file() and "payload" in p.parts]
    biggest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    if how == "truncate":
        biggest.write_bytes(bytes(data[:len(data) // 3]))
    else:   # flip bytes, keeping the size: only the digest can tell
        for i in range(len(data) // 2, len(data) // 2 + 8):
            data[i] ^= 0xFF
        biggest.write_bytes(bytes(data))


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(tmp_path):
    other = {"method": "none", "seeds": 1, "steps": 20, "version": "0.1.0", "config": "a"}
    Checkpointer(tmp_path, identity=other).save(20, {"w": jnp.ones(3)}, {"task": 1})
    with pytest.raises(CheckpointMismatchError, match=(
            r"the checkpoint in .* is of method none, 1 seed, 20 steps; this run is method er, "
            r"2 seeds, 100 steps")):
        Checkpointer(tmp_path, identity=IDENTITY).restore_latest({"w": jnp.ones(3)})
    with pytest.raises(CheckpointMismatchError, match="of another model or method: its state's "
                                                      r"array \['w'\] is float32\(3,\)"):
        Checkpointer(tmp_path, identity=other).restore_latest({"w": jnp.ones(4)})
    assert Checkpointer(tmp_path).steps() == [20]      # refused, not moved: it is not damaged
    # only the version differs: named alone
    with pytest.raises(CheckpointMismatchError, match="is of cljax 0.1.0; this run is cljax 9"):
        Checkpointer(tmp_path, identity={**other, "version": "9"}).restore_latest(
            {"w": jnp.ones(3)})


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_moved_aside_and_its_step_saved_again(tmp_path, how):
    seen = []
    c = Checkpointer(tmp_path, identity=IDENTITY, log=seen.append)
    c.save(75, {"w": jnp.arange(5000.0)}, {"i": 75})
    c.save(100, {"w": jnp.arange(5000.0) * 2}, {"i": 100})
    _damage(tmp_path / "100", how)
    payload, meta = c.restore_latest({"w": jnp.zeros(5000)})
    assert meta == {"i": 75} and float(payload["w"][7]) == 7.0
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("100.corrupt-")]
    assert len(aside) == 1 and f"moved aside to {tmp_path / aside[0]}" in seen[0]
    c.save(100, {"w": jnp.arange(5000.0) * 3}, {"i": 100})     # the run goes on past it
    assert c.steps() == [75, 100]
    assert float(c.restore_latest({"w": jnp.zeros(5000)})[0]["w"][1]) == 3.0


def test_run_identity_names_the_run_and_ignores_where_the_data_is():
    cfg = validate_config({**_config(), "method": "er"})
    a = run_identity(cfg, "task")
    assert {k: a[k] for k in ("method", "seeds", "steps", "scenario")} == {
        "method": "er", "seeds": 1, "steps": 20, "scenario": "task"}
    assert a == run_identity({**cfg, "data_dir": "/elsewhere", "max_state_bytes": 10}, "task")
    assert a["config"] != run_identity({**cfg, "seed": 3}, "task")["config"]
    assert a["version"] == __import__("cljax").__version__


def _config(**over) -> dict:
    from cljax.config import load_config

    return {**load_config(CONFIG), "steps": 20, "seeds": 1, "scenarios": ["task"],
            **over}


def test_a_finished_scenario_of_another_run_is_not_reused(tmp_path, monkeypatch):
    """A result.json left by another run (method none, 1 seed, 20 steps) is refused on resume."""
    import cljax.experiment as experiment

    cfg = validate_config(_config(method="none"))
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "result.json").write_text(json.dumps(
        {"identity": run_identity(cfg, "task"), "result": {"accuracy": []}}))
    monkeypatch.setattr(experiment, "load_experiment_stream",
                        lambda cfg, log: (tiny_split_stream(), {}))
    with pytest.raises(CheckpointMismatchError, match=(
            r"the finished task-IL results in .*result.json are of method none, 1 seed, 20 "
            r"steps; this run is method er, 2 seeds, 100 steps")):
        run_experiment(_config(method="er", seeds=2, steps=100), checkpoint_dir=str(tmp_path),
                       resume=True, log=lambda m: None)


# ---------------------------------------------------------------------------------------------
# Library: interrupts, sizes
# ---------------------------------------------------------------------------------------------

def test_a_real_sigint_inside_deferred_interrupts_waits_for_the_block():
    # Python's own SIGINT handler, whatever a library imported earlier in the session installed
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                done.append("finished")       # the block's last line still runs
        assert done == ["finished"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


def test_an_interrupt_before_any_training_claims_nothing_checkpointed(tmp_path, monkeypatch):
    import cljax.experiment as experiment

    def interrupted(cfg, log):
        raise KeyboardInterrupt
    monkeypatch.setattr(experiment, "load_experiment_stream", interrupted)
    with pytest.raises(RunInterrupted) as e:
        run_experiment(_config(), checkpoint_dir=str(tmp_path), log=lambda m: None)
    assert e.value.finished == [] and e.value.checkpoints == []
    message = cli._interrupted(e.value.finished, e.value.checkpoints, tmp_path, False)
    assert "before anything was finished or checkpointed" in message
    assert "checkpointed in" not in message and "--resume" not in message


def test_a_state_too_large_is_refused_before_anything_is_compiled(monkeypatch):
    import cljax.data.pipeline as pipeline

    stream = tiny_split_stream()
    cfg = validate_config(_config(method="ogd", method_options={"per_task": 13000},
                                  model={"kind": "mlp", "widths": [20]}))
    logged = []
    monkeypatch.setattr(pipeline, "device_memory_bytes", lambda devices=None: 2**30)
    t0 = time.perf_counter()
    with pytest.raises(StateSizeError, match=r"the task-IL state needs .* GiB .*per run x 1 "
                                             r"run.*more than 90% of the device's memory"):
        check_state_sizes(cfg, stream, ["task"], 1, log=logged.append)
    assert time.perf_counter() - t0 < 30
    assert logged and "task-IL state:" in logged[0] and "GiB per run" in logged[0]
    with pytest.raises(StateSizeError, match=r"more than config\['max_state_bytes'\] "
                                             r"\(--max-state-bytes\) = 1.0 KiB"):
        check_state_sizes({**cfg, "method_options": {"per_task": 2}, "max_state_bytes": 1024},
                          stream, ["task"], 2, log=logged.append)


# ---------------------------------------------------------------------------------------------
# Library: every public function fails with a clear error naming the argument
# ---------------------------------------------------------------------------------------------

PARAMS = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}


@pytest.mark.parametrize("estimator", [
    lambda mv: lanczos(mv, PARAMS, jax.random.key(0), num_iters=3),
    lambda mv: hutchpp_trace(mv, PARAMS, jax.random.key(0), num_matvecs=6),
    lambda mv: hutchinson_trace(mv, PARAMS, jax.random.key(0), num_samples=2)])
def test_a_matvec_returning_the_wrong_pytree_is_named(estimator):
    with pytest.raises(ValueError, match=r"matvec\(v\) must have the pytree structure of "
                                         "params_like"):
        estimator(lambda v: {"a": v["a"]})
    with pytest.raises(ValueError, match=r"matvec\(v\)\['b'\] has shape \(4,\); params_like "
                                         r"has \(2, 2\)"):
        estimator(lambda v: {"a": v["a"], "b": v["b"].reshape(-1)})


@pytest.mark.parametrize("estimator", [
    lambda mv: lanczos(mv, PARAMS, jax.random.key(0), num_iters=3),
    lambda mv: hutchinson_trace(mv, PARAMS, jax.random.key(0), num_samples=2),
    lambda mv: hutchpp_trace(mv, PARAMS, jax.random.key(0), num_matvecs=6)])
def test_a_nan_matvec_raises_instead_of_returning_nan(estimator):
    with pytest.raises(FloatingPointError, match="the matvec returned non-finite values"):
        estimator(lambda v: jax.tree.map(lambda x: x * jnp.nan, v))


def test_ground_truth_gradients_of_an_empty_batch():
    params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}
    state = init_ogd(params, capacity=4)

    def logits_fn(p, batch):
        d = p["params"]["Dense_0"]
        return batch["x"] @ d["kernel"] + d["bias"]
    with pytest.raises(ValueError, match="batch must hold at least one example"):
        ground_truth_gradients(logits_fn, params, {"x": jnp.zeros((0, 3)),
                                                   "y": jnp.zeros((0,), jnp.int32)}, state)


@pytest.mark.parametrize("lr, expected", [(float("nan"), "learning_rate must be finite"),
                                          (0.0, "learning_rate must be > 0")])
def test_ncl_refuses_a_learning_rate_that_would_give_nan_or_nothing(lr, expected):
    with pytest.raises(ValueError, match=expected):
        ncl(lr)


def test_gem_dual_refuses_a_gram_matrix_that_is_not_psd():
    with pytest.raises(ValueError, match="gram must be positive semi-definite"):
        gem_dual(jnp.array([[1.0, 0.0], [0.0, -1.0]]), jnp.zeros(2), jnp.ones(2, bool))
    with pytest.raises(ValueError, match=r"linear must have shape \(2,\)"):
        gem_dual(jnp.eye(2), jnp.zeros(3), jnp.ones(2, bool))


def _task(n=6, label=None):
    return {"x": jnp.zeros((n, 2), jnp.uint8),
            "label": jnp.asarray(label if label is not None else np.arange(n) % 2, jnp.int32),
            "task": jnp.zeros((n,), jnp.int32)}


@pytest.mark.parametrize("rows, count, task, expected", [
    (_task(label=[0, 1, 2, 0, 1, 0]), 6, 0, r"rows\['label'\] of the 6 real rows must lie in "
                                            r"\[0, 2\)"),
    (_task(), 9, 0, r"count must lie in \[0, 6\]"),
    (_task(), 6, 5, r"task must lie in \[0, 3\) \(the budget's 6 classes in tasks of 2\)")])
def test_store_task_refuses_what_it_would_silently_drop(rows, count, task, expected):
    budget = memory.class_budget(classes_per_task=2, num_classes=6, per_class=2)
    mem = memory.init_memory(budget.memory_capacity(), (2,), jnp.uint8)
    with pytest.raises(ValueError, match=expected):
        memory.store_task(mem, budget, rows, jnp.asarray(count), jnp.asarray(task),
                          jax.random.key(0))


def test_reservoir_and_sampling_name_the_array_at_fault():
    mem = memory.init_memory(4, (2,), jnp.uint8)
    rows = _task(3)
    with pytest.raises(ValueError, match=r"rows\['label'\] must have shape \(3,\)"):
        memory.reservoir_add(mem, {**rows, "label": rows["label"][:2]}, jax.random.key(0))
    with pytest.raises(ValueError, match=r"mask must be a bool array of shape \(3,\)"):
        memory.reservoir_add(mem, rows, jax.random.key(0), mask=jnp.ones(2, bool))
    with pytest.raises(ValueError, match=r"where must be a bool array of shape \(4,\)"):
        memory.sample_memory(mem, jax.random.key(0), 2, where=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="example_shape must be a sequence of ints >= 0"):
        memory.init_memory(4, (2, -1), jnp.uint8)


def test_gpm_consolidate_names_a_layer_missing_from_the_thresholds():
    params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
                         "Dense_1": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}}
    state = init_gpm(params)
    reps = {n: jnp.ones((4, b.shape[0])) for n, b in state.bases.items()}
    first, second = sorted(state.bases)
    with pytest.raises(ValueError, match=rf"thresholds lacks layers \['{second}'\]: give one "
                                         "threshold for every layer"):
        gpm_consolidate(state, reps, {first: 0.9})


# ---------------------------------------------------------------------------------------------
# Slow: the issue's CLI probes that train, with real processes and real signals
# ---------------------------------------------------------------------------------------------

def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the awaited moment"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _steps(state_dir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in state_dir.glob("*") if p.name.isdigit()) \
        if state_dir.is_dir() else []


@pytest.fixture(scope="module")
def base1(tmp_path_factory):
    """A finished ``$R --method none`` run (the issue's base1)."""
    if not HAS_MNIST:
        pytest.skip(f"mnist is not prepared under {DATA}")
    d = tmp_path_factory.mktemp("base") / "base1"
    done = _run(_cljax(*R, "--method", "none", "--workdir", str(d)))
    assert done.returncode == 0, done.stderr
    return d


def _killed_k(workdir: pathlib.Path, checkpoints: int = 1) -> None:
    """``$K`` killed with SIGKILL once it has ``checkpoints`` checkpoints."""
    proc = subprocess.Popen(_cljax(*K, "--workdir", str(workdir)), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = workdir / "checkpoints" / "task" / "state"
    _wait_for(lambda: len(_steps(state)) >= checkpoints, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_cli_refuses_the_checkpoints_of_another_run(base1, tmp_path):
    k = tmp_path / "k"
    _killed_k(k)
    shutil.rmtree(k / "checkpoints")
    shutil.copytree(base1 / "checkpoints", k / "checkpoints")
    resumed = _run(_cljax(*K, "--workdir", str(k), "--resume"))
    assert resumed.returncode == 2
    assert ("results in " + str(k / "checkpoints" / "task" / "result.json") + " are of method "
            "none, 1 seed, 20 steps; this run is method er, 2 seeds, 100 steps"
            ) in _one_line(resumed.stderr)
    (k / "checkpoints" / "task" / "result.json").unlink()    # the checkpoints alone
    resumed = _run(_cljax(*K, "--workdir", str(k), "--resume"))
    assert resumed.returncode == 2, resumed.stderr
    assert ("is of method none, 1 seed, 20 steps; this run is method er, 2 seeds, 100 steps"
            in _one_line(resumed.stderr))
    assert not (k / "results.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MNIST, reason="needs mnist")
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_cli_resumes_past_a_damaged_checkpoint(tmp_path, how):
    k = tmp_path / "k"
    _killed_k(k, checkpoints=2)
    state = k / "checkpoints" / "task" / "state"
    # had the scenario finished before the kill, resume would reuse its results: not here
    (k / "checkpoints" / "task" / "result.json").unlink(missing_ok=True)
    newest = _steps(state)[-1]
    _damage(state / str(newest), how)
    resumed = _run(_cljax(*K, "--workdir", str(k), "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoints every 25 steps (--checkpoint-every 40 rounded down to a divisor of " \
           "the 100 steps per task)" in resumed.stdout
    assert any(p.name.startswith(f"{newest}.corrupt-") for p in state.iterdir())
    assert f"moved aside to {state}/{newest}.corrupt-" in resumed.stdout
    assert "task" in json.loads((k / "results.json").read_text())["scenarios"]


@pytest.mark.slow
def test_cli_overwrite_removes_only_what_cljax_wrote(base1, tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(base1, proj)                # an earlier cljax run...
    (proj / "notes.txt").write_text("x\n")      # ...with the user's notes beside it
    done = _run(_cljax(*R, "--method", "l2", "--workdir", str(proj), "--overwrite"))
    assert done.returncode == 0, done.stderr
    assert (proj / "notes.txt").read_text() == "x\n"
    assert json.loads((proj / "results.json").read_text())["config"]["method"] == "l2"
    wrote = next(line for line in done.stdout.splitlines() if line.startswith("wrote "))
    assert "notes.txt" not in wrote and "notes.txt" not in wd.read_marker(proj)["wrote"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MNIST, reason="needs mnist")
def test_cli_two_runs_into_one_directory(tmp_path):
    conc = tmp_path / "conc"
    first = subprocess.Popen(_cljax(*R, "--method", "none", "--workdir", str(conc)), cwd=ROOT,
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (conc / wd.MARKER_FILE).exists(), first)
    t0 = time.time()
    second = _run(_cljax(*R, "--method", "l2", "--workdir", str(conc)))
    assert time.time() - t0 < 60 and first.poll() is None     # at once, the first still running
    assert second.returncode == 2
    assert f"is in use by another cljax run (pid {first.pid} on host" in _one_line(second.stderr)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert json.loads((conc / "results.json").read_text())["config"]["method"] == "none"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MNIST, reason="needs mnist")
def test_cli_sigint_as_a_scenario_finishes_keeps_its_results(tmp_path):
    k = tmp_path / "k"
    args = [a if a != "task" else "task,domain" for a in K]
    proc = subprocess.Popen(_cljax(*args, "--workdir", str(k)), cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (k / "checkpoints" / "task" / "result.json").exists(), proc)
    proc.send_signal(signal.SIGINT)     # while the finished scenario's files are being written
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == cli.EXIT_INTERRUPTED, err
    assert "the finished scenarios' results (task) are in" in err
    assert (k / "report.md").exists()
    results = json.loads((k / "results.json").read_text())
    assert "task" in results["scenarios"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MNIST, reason="needs mnist")
def test_cli_sigterm_before_any_training_claims_nothing(tmp_path):
    proc = subprocess.Popen(_cljax(*R, "--workdir", str(tmp_path / "w")), cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("loaded ")    # data loaded, nothing compiled yet
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == cli.EXIT_INTERRUPTED
    assert "interrupted before anything was finished or checkpointed" in err
    assert "checkpointed in" not in err


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MNIST, reason="needs mnist")
def test_cli_refuses_the_ogd_state_of_the_issue_in_seconds(tmp_path):
    t0 = time.time()
    done = _run(_cljax(*R, "--method", "ogd", "--set", "method_options={'per_task': 13000}",
                       "--set", "model.widths=[20]", "--workdir", str(tmp_path / "w")))
    assert done.returncode == 2, done.stderr
    message = _one_line(done.stderr)
    assert "the task-IL state needs" in message and "of the device's memory" in message
    assert "task-IL state: " in done.stdout          # the estimate is in the log
    assert time.time() - t0 < 300
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert peak < 6 * 2**30     # never allocated (the run of the issue grew to 17.7 GB)
    limited = _run(_cljax(*R, "--method", "ogd", "--max-state-bytes", "1M",
                          "--workdir", str(tmp_path / "v")))
    assert limited.returncode == 2
    assert "more than config['max_state_bytes'] (--max-state-bytes) = 1.0 MiB" in _one_line(
        limited.stderr)
