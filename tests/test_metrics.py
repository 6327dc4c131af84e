import numpy as np
import pytest

from cljax import metrics

# R[i, j]: accuracy on task j after training task i (3 tasks), hand-made.
R = np.array([[0.9, 0.1, 0.2],
              [0.7, 0.8, 0.3],
              [0.6, 0.75, 0.95]])
b = np.array([0.1, 0.15, 0.25])


def test_metrics_match_hand_computation():
    assert metrics.average_accuracy(R) == pytest.approx((0.6 + 0.75 + 0.95) / 3)
    assert metrics.backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.75 - 0.8)) / 2)
    assert metrics.forward_transfer(R, b) == pytest.approx(((0.1 - 0.15) + (0.3 - 0.25)) / 2)
    np.testing.assert_allclose(metrics.forgetting_per_task(R), [0.9 - 0.6, 0.8 - 0.75])
    assert metrics.forgetting(R) == pytest.approx((0.3 + 0.05) / 2)
    assert metrics.forgetting_from_first(R) == pytest.approx(-metrics.backward_transfer(R))
    assert metrics.plasticity(R) == pytest.approx((0.9 + 0.8 + 0.95) / 3)


def test_max_forgetting_differs_from_first_when_accuracy_rose_after_learning():
    R2 = np.array([[0.5, 0.0], [0.9, 0.9]])  # task 0 improved after task 1: no forgetting
    R3 = np.array([[0.5, 0.0, 0.0], [0.9, 0.9, 0.0], [0.6, 0.9, 0.9]])
    assert metrics.forgetting(R2) == pytest.approx(-0.4)
    assert metrics.forgetting(R3) == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert metrics.forgetting_from_first(R3) == pytest.approx(((0.5 - 0.6) + 0.0) / 2)


def test_batched_runs_and_summary():
    stack = np.stack([R, R * 0.5])
    np.testing.assert_allclose(metrics.average_accuracy(stack),
                               [metrics.average_accuracy(R), metrics.average_accuracy(R) / 2])
    mean, sem = metrics.mean_and_sem([1.0, 2.0, 3.0])
    assert mean == 2.0 and sem == pytest.approx(1 / np.sqrt(3))
    assert metrics.mean_and_sem([4.0]) == (4.0, 0.0)
    out = metrics.all_metrics(stack, np.stack([b, b]))
    assert set(out) == {"acc", "plasticity", "bwt", "fwt", "forgetting", "forgetting_from_first"}


def test_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.average_accuracy(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="b must have shape"):
        metrics.forward_transfer(R, b[:2])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        metrics.backward_transfer(np.ones((1, 1)))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 0)), "at least one task"),          # was an IndexError
    (np.zeros((3, 0, 0)), "at least one task"),
    (np.zeros((2, 3)), "square"),
    (np.zeros(3), "square"),
    (np.array([[0.5, 1.2], [0.3, 0.9]]), r"outside \[0, 1\]"),
    (np.array([[0.5, -0.1], [0.3, 0.9]]), r"outside \[0, 1\]"),
    (100 * R, "not %"),                                 # percentages are caught
    (np.array([[np.inf, 0.0], [0.0, 0.0]]), "NaN or inf"),
    ([["a", "b"], ["c", "d"]], "array of numbers"),
])
def test_bad_matrices_name_the_argument(bad, match):
    for fn in (metrics.average_accuracy, metrics.plasticity, metrics.all_metrics):
        kwargs = {} if fn is not metrics.all_metrics else {"kind": "accuracy"}
        with pytest.raises(ValueError, match=match) as info:
            fn(bad, **kwargs)
        assert str(info.value).startswith("R ")


def test_bad_baselines():
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        metrics.forward_transfer(R, np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"b holds accuracies outside \[0, 1\]"):
        metrics.forward_transfer(R, b * 100)
    with pytest.raises(ValueError, match="b contains NaN"):
        metrics.forward_transfer(R, np.array([0.1, np.nan, 0.2]))
    with pytest.raises(ValueError, match=r"b must have shape \(2, 3\)"):
        metrics.all_metrics(np.stack([R, R]), b, kind="accuracy")


def test_loss_matrices_and_kinds():
    L = 3 * R  # per-task test losses: > 1 is fine, forgetting is an increase
    assert metrics.average_accuracy(L, kind="loss") == pytest.approx(
        3 * metrics.average_accuracy(R))
    assert set(metrics.all_metrics(L, 3 * b, kind="loss")) >= {"acc", "bwt", "fwt"}
    with pytest.raises(ValueError, match="negative losses"):
        metrics.all_metrics(-L, kind="loss")
    with pytest.raises(ValueError, match="kind must be one of"):
        metrics.average_accuracy(R, kind="percent")
    # kind=None (what a caller passing both kinds through one function uses): shapes and
    # finiteness only
    assert metrics.all_metrics(L)["acc"] == pytest.approx(metrics.average_accuracy(L, kind="loss"))
    with pytest.raises(ValueError, match="NaN"):
        metrics.all_metrics(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="values contains NaN"):
        metrics.mean_and_sem([1.0, np.nan])
