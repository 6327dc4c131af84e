import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cljax import cli
from cljax import events as cljax_events
from cljax import workdir as wd
from cljax.config import apply_assignment, config_file
from cljax.experiment import validate_config


def test_end_to_end_on_mock_mnist(tmp_path, capsys):
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=200):
        code = cli.main(["run", "split_mnist", "--steps", "6", "--seeds",
                         "2", "--scenarios", "task,class", "--workdir", str(workdir),
                         "--no-progress", "--set", "model.widths=[16]", "--set", "eval_chunk=64"])
    assert code == 0
    for name in ("results.json", "report.md", "accuracy_matrix.png", "task_curves.png",
                 "config.json"):
        assert (workdir / name).stat().st_size > 0
    results = json.loads((workdir / "results.json").read_text(),
                         parse_constant=lambda token: pytest.fail(f"non-strict JSON: {token}"))
    assert set(results["scenarios"]) == {"task", "class"}
    acc = results["scenarios"]["class"]["accuracy"]
    assert len(acc) == 2 and len(acc[0]) == 5 and len(acc[0][0]) == 5
    assert results["config"]["model"]["widths"] == [16]
    assert {"acc", "bwt", "fwt", "forgetting", "forgetting_from_first"} <= set(
        results["scenarios"]["task"]["metrics"])
    assert "jax" in results["versions"]
    assert "| task-IL |" in (workdir / "report.md").read_text()
    if cljax_events.available():                                  # the training curves too
        for scenario in ("task", "class"):
            for seed in (0, 1):
                run_dir = workdir / "tensorboard" / scenario / f"seed{seed}"
                assert any(run_dir.glob("events.out.tfevents.*")), run_dir


def test_the_flatness_analysis_reports_the_paths_between_solutions(tmp_path):
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=64):
        code = cli.main(["run", "split_mnist", "--steps", "3", "--scenarios", "task",
                         "--analysis", "flatness", "--workdir", str(workdir), "--no-progress",
                         "--no-tensorboard", "--set", "model.widths=[8]", "--set", "eval_chunk=64",
                         "--set", "analysis_options={'num_iters': 5, 'path_sharpness': 3}"])
    assert code == 0
    run = json.loads((workdir / "results.json").read_text())["scenarios"]["task"]["analysis"][
        "runs"][0]
    paths = run["connectivity"]
    assert len(paths["t"]) == 11 and len(paths["loss"]) == 4 and len(paths["barrier"]) == 4
    assert all(b >= 0 for b in paths["barrier"])
    sharp = run["path_sharpness"]
    assert sharp["t"] == [0.0, 0.5, 1.0] and np.asarray(sharp["lambda_max"]).shape == (4, 3)
    assert len(sharp["delta_sq_norm"]) == 4
    for name in ("connectivity.png", "sharpness_paths.png"):
        assert (workdir / name).stat().st_size > 0
    report = (workdir / "report.md").read_text()
    assert "Task t's loss on the linear path from θ*_t to θ*_T" in report
    assert "λ_max of task t's loss on the same path" in report


def _small_run(workdir, *args):
    """``cljax run split_mnist`` of 3 steps a task on mock MNIST (100 examples, an 8-unit MLP)
    with ``args`` added; returns results.json."""
    with tfds.testing.mock_data(num_examples=100):
        code = cli.main(["run", "split_mnist", "--steps", "3", "--workdir", str(workdir),
                         "--no-progress", "--no-tensorboard", "--set", "model.widths=[8]",
                         "--set", "eval_chunk=64", *args])
    assert code == 0
    return json.loads((workdir / "results.json").read_text())


def test_task_il_by_masking_a_single_head(tmp_path):
    results = _small_run(tmp_path / "run", "--method", "lwf", "--scenarios", "task",
                         "--set", "task_heads=masked")
    task = results["scenarios"]["task"]
    assert (task["num_heads"], task["num_outputs"]) == (1, 10)
    assert results["config"]["task_heads"] == "masked"
    assert all(v is not None for row in task["accuracy"][0] for v in row)
    with pytest.raises(ValueError, match="task_heads"):
        validate_config({**cli.load_config("split_mnist"), "task_heads": "shared"})


def test_the_metrics_count_the_tasks_from_metric_from_task(tmp_path):
    """metric_from_task = 2: ACC, BWT and forgetting are those of the block R[2:, 2:] of the
    whole accuracy matrix (kept in full), computed here by hand."""
    results = _small_run(tmp_path / "run", "--seeds", "2", "--scenarios", "class",
                         "--set", "metric_from_task=2")
    assert results["stream"]["metric_tasks"] == [2, 3, 4]
    entry = results["scenarios"]["class"]
    R = np.asarray(entry["accuracy"])
    assert R.shape == (2, 5, 5)
    block = R[:, 2:, 2:]
    np.testing.assert_allclose(entry["metrics"]["acc"]["per_run"], block[:, -1].mean(-1),
                               rtol=1e-6)
    bwt = (block[:, -1, :-1] - np.diagonal(block, axis1=1, axis2=2)[:, :-1]).mean(-1)
    np.testing.assert_allclose(entry["metrics"]["bwt"]["per_run"], bwt, rtol=1e-6, atol=1e-7)
    forgetting = (block[:, :-1, :-1].max(1) - block[:, -1, :-1]).mean(-1)
    np.testing.assert_allclose(entry["metrics"]["forgetting"]["per_run"], forgetting,
                               rtol=1e-6, atol=1e-7)
    cfg = cli.load_config("split_mnist")
    for bad in (-1, True, 1.5, 5):
        with pytest.raises(ValueError, match="metric_from_task"):
            validate_config({**cfg, "metric_from_task": bad})


def test_epochs_over_each_task_is_checked_and_reaches_the_trainer():
    from helpers import tiny_dataset

    from cljax.data import split_tasks
    from cljax.experiment import build_scenario

    cfg = cli.load_config("split_mnist")
    with pytest.raises(ValueError, match="epochs_over"):
        validate_config({**cfg, "epochs_over": "smallest_task"})
    with pytest.raises(ValueError, match="set epochs"):
        validate_config({**cfg, "epochs_over": "each_task", "epochs": None})
    stream = split_tasks(tiny_dataset(n=40), tiny_dataset(n=20, seed=1), tasks=[[0, 1], [2, 3]])
    each = validate_config({**cfg, "epochs": 2, "epochs_over": "each_task",
                            "model": {"kind": "mlp", "widths": [4]}})
    assert build_scenario(each, stream, "task").trainer.task_epochs == 2.0
    assert build_scenario({**each, "epochs_over": "largest_task"}, stream,
                          "task").trainer.task_epochs is None


def test_a_generative_method_shows_its_samples_after_each_task(tmp_path):
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=100):
        code = cli.main(["run", "split_mnist", "--method", "dgr",
                         "--steps", "3", "--scenarios", "class", "--workdir", str(workdir),
                         "--no-progress", "--no-tensorboard", "--set", "model.widths=[16]",
                         "--set", "eval_chunk=64", "--set",
                         "method_options={'widths': [8], 'latent': 2, 'sample_count': 3}"])
    assert code == 0
    saved = json.loads((workdir / "results.json").read_text())["scenarios"]["class"]["samples"]
    assert saved == {"run": 0, "file": "samples_class.npy", "shape": [5, 3, 28, 28, 1]}
    pixels = np.load(workdir / "samples_class.npy")
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 3, 28, 28, 1)
    assert len(np.unique(pixels)) > 10          # a decoder's grey levels, not a blank grid
    assert (workdir / "samples_class.png").stat().st_size > 0


def test_overrides_and_config_validation():
    cfg = cli.load_config("split_mnist")
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
        cli.load_config("cljax/configs/nope.py")


def _tiny_sweep(workdir, method, sweep):
    """`cljax run` of a 2-seed, 4-step Task-IL sweep on mock MNIST; returns results.json."""
    with tfds.testing.mock_data(num_examples=200):
        code = cli.main(["run", "split_mnist", "--method", method,
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
    cfg = cli.load_config("split_mnist")
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


# ---------------------------------------------------------------------------------------------
# Errors: one line, exit status 2, nothing run
# ---------------------------------------------------------------------------------------------

CONFIG = "split_mnist"


@pytest.fixture
def fake_run(monkeypatch):
    """Replace run_experiment by a recorder returning synthetic results (no data, no JAX
    training): the CLI's own logic is what is tested."""
    from test_report import synthetic_results

    import cljax.experiment

    calls = []

    def run_experiment(config, **kwargs):
        calls.append({"config": config, **kwargs})
        results = fake_run.results or synthetic_results(("task",))
        kwargs["on_scenario"](results)
        return results
    fake_run.results = None
    monkeypatch.setattr(cljax.experiment, "run_experiment", run_experiment)
    fake_run.calls = calls
    return fake_run


def _one_line_error(capsys, argv) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cljax: error: "), err
    return lines[0].removeprefix("cljax: error: ")


@pytest.mark.parametrize("args, expected", [
    (["--set", "lerning_rate=1"], "--set lerning_rate=1: the config has no key 'lerning_rate'"),
    (["--set", "steps"], "--set steps: --set expects key=value"),
    (["--set", "model.sizes.x=1"], "--set model.sizes.x=1: 'sizes' is not a section"),
    (["--method", "ewc", "--set", "hparams={'strength': float('nan')}"],
     "--set hparams={'strength': float('nan')}: \"{'strength': float('nan')}\" is not a "
     "Python literal"),
    (["--method", "ewc", "--set", "hparams={'strength': 'abc'}"],
     "--set hparams={'strength': 'abc'}: config['hparams']['strength'] must be a finite number"),
    (["--method", "ewc", "--sweep", "strength=1,nan"], "--sweep strength=1,nan: "
                                                       "config['sweep']['strength'] values must "
                                                       "be finite numbers; got nan"),
    (["--method", "ewc", "--sweep", "strength=1,-1"], "--sweep strength=1,-1: "
                                                      "config['sweep']['strength'] value of "
                                                      "method 'ewc' must be >= 0; got -1.0"),
    (["--method", "magic"], "--method magic: unknown method 'magic'; available: ["),
    (["--scenarios", "task,instance"], "--scenarios task,instance: scenarios must be"),
    (["--set", "model.dropout=1.5"], "--set model.dropout=1.5: MLP dropout must be a rate in "
                                     "[0, 1); got 1.5"),
    (["--set", "model.widths=[0]"], "--set model.widths=[0]: MLP widths must be positive ints"),
    (["--set", "model.kind=transformer"], "--set model.kind=transformer: config['model']"
                                          "['kind'] must be one of ('alexnet', 'cnn'"),
    (["--set", "optimizer.name=adamx"], "--set optimizer.name=adamx: optimizer name must be "
                                        "an optax optimizer"),
    (["--set", "optimizer.learning_rate=-1"], "--set optimizer.learning_rate=-1: optimizer "
                                              "learning_rate must be a positive finite number"),
    (["--sweep", "strength=1"], "--sweep strength=1: config['sweep'] names ['strength'], which "
                                "method 'none' does not take"),
    (["--method", "ewc", "--sweep", "lambda=1"], "--sweep lambda=1: config['sweep'] names "
                                                 "['lambda'], which method 'ewc' does not take"),
    (["--sweep", "strength=big"], "--sweep strength=big: values must be numbers; got 'big'"),
    (["--method", "ewc", "--sweep", "strength=1,2", "--sweep", "strength=3"],
     "--sweep strength=3: 'strength' is already swept by --sweep strength=1,2; give each "
     "hyperparameter one --sweep with all its values"),
    (["--workdir", "/proc/x"], "--workdir '/proc/x': cannot create the directory"),
])
def test_user_errors_are_one_line_naming_the_option(tmp_path, capsys, fake_run, args, expected):
    argv = ["run", CONFIG, "--no-progress", "--workdir", str(tmp_path / "w"), *args]
    message = _one_line_error(capsys, argv)
    assert message.startswith(expected), message
    assert fake_run.calls == []  # nothing loaded or trained
    if "--workdir" not in args:
        assert not (tmp_path / "w").exists()  # checked before the work directory is made


def test_config_file_errors(tmp_path, capsys):
    assert _one_line_error(capsys, ["run", "nope.py"]).startswith(
        "config 'nope.py' is neither a file nor a shipped config's name; expected a Python "
        "file defining get_config() or one of")
    for body, expected in [("def get_config(:\n", "failed to load: SyntaxError"),
                           ("X = 1\n", "failed to load: AttributeError: config file"),
                           ("def get_config():\n    return 1 / 0\n",
                            "failed to load: ZeroDivisionError: division by zero"),
                           ("def get_config():\n    return [1]\n",
                            "get_config() must return a dict; got list")]:
        path = tmp_path / "cfg.py"
        path.write_text(body)
        assert expected in _one_line_error(capsys, ["run", str(path)])


def test_a_bad_regime_fails_before_anything_runs(tmp_path, capsys, fake_run):
    path = tmp_path / "regimes.py"
    base = str(config_file(CONFIG).resolve())
    path.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('base', {base!r})\n"
        "base = importlib.util.module_from_spec(spec); spec.loader.exec_module(base)\n"
        "def get_config():\n"
        "    cfg = base.get_config()\n"
        "    cfg['regimes'] = {'naive': {}, 'stable': {'model.dropout': 1.5}}\n"
        "    return cfg\n")
    message = _one_line_error(capsys, ["run", str(path), "--workdir", str(tmp_path / "w")])
    assert message.startswith(f"config {str(path)!r}: regime 'stable' ({{'model.dropout': 1.5}})"
                              ": MLP dropout must be a rate in [0, 1)"), message
    assert fake_run.calls == [] and not (tmp_path / "w").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    code = cli.main(["run", CONFIG, "--set", "model.dropout=1.5", "--debug",
                     "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback (most recent call last)" in err
    assert "ValueError: MLP dropout must be a rate in [0, 1)" in err


def test_argparse_errors_are_argparse_s(capsys):
    for argv in (["run", CONFIG, "--steps", "0"], ["run", CONFIG, "--resume", "--overwrite"],
                 ["run", CONFIG, "--checkpoint-every", "x"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --steps: expected a positive integer; got '0'" in err
    assert "argument --overwrite: not allowed with argument --resume" in err


def test_missing_data_is_one_line(tmp_path, capsys):
    message = _one_line_error(capsys, ["run", CONFIG, "--no-progress", "--data-dir",
                                       str(tmp_path / "nodata"), "--workdir",
                                       str(tmp_path / "w")])
    assert message.startswith(f"tfds dataset 'mnist' (split 'train') is not prepared under "
                              f"{str(tmp_path / 'nodata')!r}"), message
    assert "tfds build mnist --file_format=array_record" in message
    # the same command works again once the data is there: the directory holds only the run's
    # config.json (and cljax's marker and lock)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [".cljax-lock",
                                                                  ".cljax-run.json",
                                                                  "config.json"]


def test_run_stage_errors(tmp_path, capsys, monkeypatch):
    import cljax.experiment
    from cljax.data.sources import CorruptDataError

    def corrupt(config, **kwargs):
        raise CorruptDataError("tfds dataset 'mnist' (split 'train', data dir '/d') is corrupt")
    monkeypatch.setattr(cljax.experiment, "run_experiment", corrupt)
    argv = ["run", CONFIG, "--no-progress", "--overwrite", "--workdir", str(tmp_path / "w")]
    assert "is corrupt" in _one_line_error(capsys, argv)

    def interrupted(config, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cljax.experiment, "run_experiment", interrupted)
    assert cli.main(argv) == cli.EXIT_INTERRUPTED      # SIGINT / SIGTERM: status 130
    err = capsys.readouterr().err    # nothing was checkpointed: it does not say so
    assert "interrupted before anything was finished or checkpointed" in err
    assert "checkpointed in" not in err

    def interrupted_mid_run(config, **kwargs):
        raise cljax.experiment.RunInterrupted(["task"], [("class", "/w/checkpoints/class/state",
                                                          8)])
    monkeypatch.setattr(cljax.experiment, "run_experiment", interrupted_mid_run)
    assert cli.main(argv) == cli.EXIT_INTERRUPTED      # what is finished, what checkpointed
    err = capsys.readouterr().err
    assert "the finished scenarios' results (task) are in" in err
    assert "the unfinished class scenario's state is checkpointed in /w/checkpoints/class/" in err
    assert "--resume" in err

    def bug(config, **kwargs):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(cljax.experiment, "run_experiment", bug)
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli.main(argv)


# ---------------------------------------------------------------------------------------------
# The work directory: checked first; --overwrite, --resume, --checkpoint-every
# ---------------------------------------------------------------------------------------------

def test_workdir_reuse_needs_overwrite_or_resume(tmp_path, capsys, fake_run):
    workdir = tmp_path / "run"
    argv = ["run", CONFIG, "--no-progress", "--method", "ewc", "--workdir", str(workdir)]
    assert cli.main(argv) == 0
    call = fake_run.calls[-1]
    assert call["checkpoint_dir"] == str(workdir / "checkpoints")
    assert call["resume"] is False and call["checkpoint_every"] is None
    assert call["config"]["method"] == "ewc"
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["method"] == "ewc" and saved["eval_chunk"] == 1000  # validated, defaults in
    capsys.readouterr()

    # the same command again: refused before anything runs
    message = _one_line_error(capsys, argv)
    assert "is not empty (it holds an earlier cljax run" in message
    assert "--resume" in message and "--overwrite" in message and len(fake_run.calls) == 1

    # a stale file of an earlier run never survives --overwrite, nor is listed as written; a
    # file the user put beside the run is kept
    (workdir / "stability_plasticity.png").write_bytes(b"stale")
    wd.record_outputs(workdir, ["stability_plasticity.png"])   # as write_outputs' would be
    (workdir / "notes.txt").write_text("mine")
    assert cli.main(argv + ["--overwrite"]) == 0
    out = capsys.readouterr().out
    assert not (workdir / "stability_plasticity.png").exists()
    assert (workdir / "notes.txt").read_text() == "mine"
    assert "stability_plasticity.png" not in out
    assert out.startswith("wrote accuracy_matrix.png, config.json, report.md, results.json, "
                          "task_curves.png in ")

    # --resume with the same config continues; --checkpoint-every is passed on
    assert cli.main(argv + ["--resume", "--checkpoint-every", "5"]) == 0
    assert fake_run.calls[-1]["resume"] is True and fake_run.calls[-1]["checkpoint_every"] == 5

    # --resume with another config is refused, naming the differing keys
    message = _one_line_error(capsys, argv + ["--resume", "--steps", "7",
                                              "--set", "model.widths=[16]"])
    assert "holds a run of a different config (differing keys: model.widths, steps)" in message
    assert len(fake_run.calls) == 3


def test_every_run_diverged_exits_non_zero(tmp_path, capsys, fake_run):
    from test_report import synthetic_results

    fake_run.results = synthetic_results(("task",), diverged={"task": [0, 1]})
    code = cli.main(["run", CONFIG, "--no-progress", "--workdir", str(tmp_path / "w")])
    assert code == cli.EXIT_ALL_DIVERGED != 0
    assert "cljax: error: every run diverged (2/2)" in capsys.readouterr().err
    assert (tmp_path / "w" / "results.json").exists()  # the results are still written
    fake_run.results = synthetic_results(("task",), diverged={"task": [0]})
    assert cli.main(["run", CONFIG, "--no-progress", "--overwrite",
                     "--workdir", str(tmp_path / "w")]) == 0


def test_version_configs_and_methods_listings(capsys):
    import cljax
    from cljax import config
    from cljax.methods import METHODS

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"cljax {cljax.__version__}"
    assert cli.main(["configs"]) == 0
    listed = capsys.readouterr().out
    for name in config.config_names():
        assert f"\n{name}\n" in f"\n{listed}" and config.config_summary(name)[:40] in \
            " ".join(listed.split())
    assert cli.main(["methods"]) == 0
    listed = capsys.readouterr().out
    heads = [line.split(" — ")[0] for line in listed.splitlines() if not line.startswith(" ")]
    assert heads == list(METHODS)
    assert "strength=10000 (nonnegative), decay=1 (unit_interval)" in listed   # online_ewc
    assert "icarl — scenarios class" in listed
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "dgr_distill" in " ".join(help_text.split())


def test_a_config_name_that_is_not_shipped_is_refused_naming_the_names(capsys):
    assert cli.main(["run", "split_mnits", "--steps", "1"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("cljax: error: config 'split_mnits' is neither a file nor")
    assert "split_mnist" in err and "\n" not in err.strip()


def test_a_named_regime_comes_first_and_the_other_options_win(tmp_path, fake_run):
    assert cli.main(["run", CONFIG, "--regime", "stable_sgd", "--regime-option", "decay=0.5",
                     "--batch-size", "16", "--workdir", str(tmp_path / "w")]) == 0
    cfg = fake_run.calls[0]["config"]
    assert cfg["regime"] == {"name": "stable_sgd", "decay": 0.5}
    assert cfg["optimizer"]["task_decay"] == 0.5 and cfg["model"]["dropout"] == 0.25
    assert cfg["batch_size"] == 16                    # --batch-size after the regime


def test_bad_regime_options_fail_with_their_label(tmp_path, capsys, fake_run):
    assert "--regime fast: unknown regime 'fast'" in _one_line_error(
        capsys, ["run", CONFIG, "--regime", "fast", "--workdir", str(tmp_path / "w")])
    assert "give the regime with --regime NAME" in _one_line_error(
        capsys, ["run", CONFIG, "--regime-option", "decay=0.5", "--workdir", str(tmp_path / "w")])
    assert "expected KEY=VALUE" in _one_line_error(
        capsys, ["run", CONFIG, "--regime", "stable_sgd", "--regime-option", "decay",
                 "--workdir", str(tmp_path / "w")])
    assert fake_run.calls == []


def test_augment_is_checked_reaches_the_trainer_and_leaves_old_run_identities():
    from helpers import tiny_dataset

    from cljax.data import split_tasks
    from cljax.experiment import build_scenario, run_identity

    cfg = cli.load_config("split_mnist")
    with pytest.raises(ValueError, match=r"config\['augment'\] must be one of"):
        validate_config({**cfg, "augment": "mixup"})
    stream = split_tasks(tiny_dataset(n=40), tiny_dataset(n=20, seed=1), tasks=[[0, 1], [2, 3]])
    small = {**cfg, "model": {"kind": "mlp", "widths": [4]}}
    assert build_scenario(validate_config(small), stream, "task").trainer.augment == "none"
    crop = validate_config({**small, "augment": "crop_flip"})
    assert build_scenario(crop, stream, "task").trainer.augment == "crop_flip"
    assert "augment" not in validate_config(small)           # unfilled: identities unchanged
    assert run_identity(validate_config(small)) != run_identity(crop)


def test_run_scenario_keeps_each_tasks_parameters_when_asked():
    from helpers import tiny_dataset

    from cljax.data import split_tasks
    from cljax.experiment import build_scenario, plan_runs, run_scenario

    cfg = validate_config({**cli.load_config("split_mnist"), "steps": 3,
                           "model": {"kind": "mlp", "widths": [4]}})
    stream = split_tasks(tiny_dataset(n=40), tiny_dataset(n=20, seed=1), tasks=[[0, 1], [2, 3]])
    setup = build_scenario(cfg, stream, "task")
    plan = plan_runs(cfg, setup.method)
    assert run_scenario(cfg, setup, plan).task_params is None
    kept = run_scenario(cfg, setup, plan, keep_params=True)
    last = jax.tree.map(lambda p: p[:, -1], kept.task_params)
    for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(kept.final_state.params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="keep_params"):
        run_scenario(cfg, setup, plan, keep_params=1)
