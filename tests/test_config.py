"""cljax.config: the shipped configs by name, loading, overrides."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

from cljax import config

SHIPPED = {"split_mnist", "permuted_mnist", "split_cifar100", "permuted_mnist_gpm",
           "split_cifar100_rgo", "permuted_mnist_vcl"}


def test_names_are_the_shipped_files():
    names = config.config_names()
    on_disk = {p.stem for p in (pathlib.Path(config.__file__).parent / "configs").glob("*.py")
               if p.stem != "__init__"}
    assert set(names) == on_disk and SHIPPED <= set(names)
    assert names == sorted(names)


def test_a_name_and_a_path_load_the_same_config(tmp_path):
    by_name = config.load_config("split_mnist")
    by_path = config.load_config(str(config.CONFIG_DIR / "split_mnist.py"))
    assert by_name == by_path and by_name["dataset"] == "mnist"
    own = tmp_path / "split_mnist"            # an existing file wins over a shipped name
    own.write_text("def get_config():\n    return {'mine': True}\n")
    assert config.load_config(str(own)) == {"mine": True}


def test_every_shipped_config_loads_and_has_a_protocol_line():
    for name in config.config_names():
        cfg = config.load_config(name)
        assert isinstance(cfg, dict) and {"dataset", "stream", "model", "steps"} <= set(cfg)
        summary = config.config_summary(name)
        assert len(summary) > 20 and "\n" not in summary


def test_summary_is_read_without_running_the_file(tmp_path):
    f = tmp_path / "c.py"
    f.write_text('"""Line one\nstill one.\n\nSecond paragraph."""\nraise SystemExit(9)\n')
    assert config.config_summary(str(f)) == "Line one still one."


def test_unknown_names_and_bad_arguments():
    with pytest.raises(FileNotFoundError, match="split_mnist"):   # the message lists the names
        config.config_file("split_mnits")
    with pytest.raises(TypeError, match="path_or_name"):
        config.config_file("")
    with pytest.raises(AttributeError, match="get_config"):
        config.load_config(__file__)


def test_names_work_from_any_directory(tmp_path):
    code = "from cljax import config; print(config.load_config('permuted_mnist')['stream'])"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "permuted"


def test_overrides():
    cfg = config.load_config("split_mnist")
    config.apply_assignment(cfg, "optimizer.learning_rate=3e-4")
    assert cfg["optimizer"]["learning_rate"] == 3e-4
    assert config.parse_value("[1, 2]") == [1, 2] and config.parse_value("adam") == "adam"
    assert ast.literal_eval(repr(config.parse_sweep("c=1,2")[1])) == [1.0, 2.0]


def test_an_explicit_step_count_wins_over_epochs():
    from cljax.config import steps_win_over_epochs

    cfg = {"steps": 7, "epochs": 4, "epochs_over": "each_task", "batch_size": 8}
    steps_win_over_epochs(cfg)
    assert cfg == {"steps": 7, "epochs": None, "batch_size": 8}
