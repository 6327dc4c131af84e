"""cljax.events: the TensorBoard curves read back from the event files hold every value."""
import pathlib
import struct

import numpy as np
import pytest

from cljax import events

pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2


def read_scalars(run_dir: pathlib.Path) -> dict[str, dict[int, float]]:
    """Every scalar of a run's event files (TFRecord framing: length, crc, data, crc)."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            record = data[i + 12:i + 12 + n]
            i += 12 + n + 4
            ev = event_pb2.Event.FromString(record)
            for v in ev.summary.value:
                out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def test_curves_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    R, T, S = 3, 2, 5
    loss = rng.uniform(0, 3, (R, T, S)).astype(np.float32)
    loss[2, 1, 3] = np.nan                                    # a diverged run keeps its NaN
    acc = rng.uniform(0, 1, (R, T, T)).astype(np.float32)
    names = events.run_names([{"strength": 1.0}], 3)
    root = events.write_scenario_events(tmp_path, "task", loss, acc, names)
    assert sorted(p.name for p in root.iterdir()) == ["seed0", "seed1", "seed2"]
    for r, name in enumerate(names):
        got = read_scalars(root / name)
        steps = got["train/loss"]
        assert sorted(steps) == list(range(T * S))
        want = loss[r].reshape(-1)
        np.testing.assert_array_equal(np.array([steps[k] for k in range(T * S)]), want)
        for t in range(T):
            for j in range(T):
                assert got[f"test/accuracy_task{j + 1}"][(t + 1) * S] == acc[r, t, j]
            np.testing.assert_allclose(got["test/acc_seen"][(t + 1) * S],
                                       acc[r, t, :t + 1].mean(), rtol=1e-6)


def test_run_names():
    assert events.run_names([{"strength": 1.0}], 2) == ["seed0", "seed1"]
    grid = [{"strength": 1.0, "decay": 0.9}, {"strength": 100.0, "decay": 0.9}]
    assert events.run_names(grid, 2) == ["strength=1_seed0", "strength=1_seed1",
                                         "strength=100_seed0", "strength=100_seed1"]
    with pytest.raises(ValueError, match="seeds"):
        events.run_names(grid, 0)
    with pytest.raises(ValueError, match="grid"):
        events.run_names([], 1)


@pytest.mark.parametrize("loss_shape, acc_shape, names, match", [
    ((2, 3), (2, 3, 3), ["a", "b"], "train_loss"),
    ((2, 3, 4), (2, 3, 2), ["a", "b"], "accuracy"),
    ((2, 3, 4), (2, 3, 3), ["a"], "names"),
    ((2, 3, 4), (2, 3, 3), ["a", "a"], "names"),
])
def test_bad_input_names_the_argument(tmp_path, loss_shape, acc_shape, names, match):
    with pytest.raises(ValueError, match=match):
        events.write_scenario_events(tmp_path, "task", np.zeros(loss_shape),
                                     np.zeros(acc_shape), names)


def test_accuracy_in_percent_and_bad_scenario_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        events.write_scenario_events(tmp_path, "task", np.zeros((1, 1, 2)),
                                     np.full((1, 1, 1), 97.0), ["a"])
    with pytest.raises(ValueError, match="scenario"):
        events.write_scenario_events(tmp_path, "a/b", np.zeros((1, 1, 2)),
                                     np.zeros((1, 1, 1)), ["a"])
