"""Named training regimes (cljax.regimes): stable SGD's per-task learning rates against the
formula of Mirzadeh et al.'s code, the settings a regime writes, its record in the config, and
every bad name, option and record refused with the argument named."""
import copy

import pytest

from cljax.config import load_config
from cljax.experiment import make_optimizer, validate_config
from cljax.regimes import (
    REGIMES,
    apply_regime,
    check_regime_record,
    regime_overrides,
    regime_settings,
)
from cljax.transforms import task_decay_scale


@pytest.mark.parametrize("lr,gamma", [(0.1, 0.8), (0.1, 0.5), (0.2, 0.3)])
def test_stable_sgd_learns_task_t_at_their_rate(lr, gamma):
    """Their ``lr_t = max(lr · γ^t, 5e-5)`` for task t = 1, 2, … (stable_sgd/main.py) is the
    regime's learning rate times the factor of cljax's task t − 1 (0-based), floor included."""
    opt = regime_settings("stable_sgd", learning_rate=lr, decay=gamma)["optimizer"]
    for t in range(1, 40):
        theirs = max(lr * gamma ** t, 5e-5)
        floor = opt["min_learning_rate"] / opt["learning_rate"]
        ours = opt["learning_rate"] * float(task_decay_scale(t - 1, opt["task_decay"], floor))
        assert ours == pytest.approx(theirs, rel=1e-5), t
    make_optimizer(opt)   # a valid optimizer entry


def test_the_settings_each_regime_writes():
    s = regime_settings("stable_sgd")
    assert s == {"optimizer": {"name": "sgd", "learning_rate": pytest.approx(0.08),
                               "momentum": 0.8, "task_decay": 0.8, "min_learning_rate": 5e-5},
                 "batch_size": 10, "model.dropout": 0.25, "reset_optimizer": True,
                 "regime": {"name": "stable_sgd"}}
    n = regime_settings("naive_sgd")
    assert n["optimizer"] == {"name": "sgd", "learning_rate": 0.01, "momentum": 0.8}
    assert n["model.dropout"] == 0.0 and n["batch_size"] == 10 and n["reset_optimizer"]
    assert set(REGIMES) == {"stable_sgd", "naive_sgd"}


def test_apply_regime_records_it_and_leaves_the_input_alone():
    base = load_config("permuted_mnist_rgo")
    before = copy.deepcopy(base)
    cfg = apply_regime(base, "stable_sgd", decay=0.5)
    assert base == before
    assert cfg["regime"] == {"name": "stable_sgd", "decay": 0.5}
    assert cfg["optimizer"]["learning_rate"] == pytest.approx(0.05)
    assert cfg["model"]["dropout"] == 0.25 and cfg["model"]["widths"] == [256, 256]
    assert cfg["steps"] == base["steps"]            # the steps per task stay the config's
    assert validate_config(cfg)["regime"] == cfg["regime"]
    assert "regime" not in validate_config(base)    # absent: not filled in (run identity)


def test_regimes_by_name_side_by_side():
    cfg = load_config("permuted_mnist_rgo")
    cfg["regimes"] = {"naive": "naive_sgd", "stable": {"name": "stable_sgd", "decay": 0.5},
                      "own": {"batch_size": 32}}
    valid = validate_config(cfg)["regimes"]
    assert valid["naive"] == regime_settings("naive_sgd")
    assert valid["stable"] == regime_settings("stable_sgd", decay=0.5)
    assert valid["own"] == {"batch_size": 32}
    assert regime_overrides({"batch_size": 32}) == {"batch_size": 32}


def test_bad_regimes_are_named():
    with pytest.raises(ValueError, match="unknown regime 'fast'.*stable_sgd"):
        regime_settings("fast")
    with pytest.raises(ValueError, match="no option among \\['gamma'\\].*decay"):
        regime_settings("stable_sgd", gamma=0.5)
    with pytest.raises(ValueError, match="decay must lie in \\(0.0, 1.0\\]"):
        regime_settings("stable_sgd", decay=1.5)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        regime_settings("naive_sgd", batch_size=0)
    with pytest.raises(TypeError, match="learning_rate must be a number"):
        regime_settings("stable_sgd", learning_rate="big")
    with pytest.raises(ValueError, match="config\\['regime'\\] must be a record"):
        check_regime_record("stable_sgd")
    cfg = load_config("permuted_mnist_rgo")
    cfg["regime"] = {"name": "stable_sgd", "decay": -1.0}
    with pytest.raises(ValueError, match="decay"):
        validate_config(cfg)
    cfg = load_config("permuted_mnist_rgo")
    cfg["regimes"] = {"x": 3}
    with pytest.raises(ValueError, match="a regime must be"):
        validate_config(cfg)
