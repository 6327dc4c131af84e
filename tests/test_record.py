"""cljax.training.record: what a stream run records and when a run has diverged."""
import numpy as np
import pytest

from cljax.training import Record


def _record(**kw):
    return Record(3, 2, 4, **kw)


def test_losses_fill_the_matrix_and_the_first_loss():
    rec = _record(divergence_factor=100.0)
    first = np.array([[1.0, 0.9], [2.0, 1.5], [0.5, 0.4]], np.float32)
    rec.losses(0, 0, first)
    rec.losses(0, 2, np.full((3, 2), 0.3, np.float32))
    np.testing.assert_array_equal(rec.tree["first_loss"], [1.0, 2.0, 0.5])
    np.testing.assert_array_equal(rec.tree["train_loss"][:, 0, :2], first)
    assert np.isnan(rec.tree["train_loss"][:, 1]).all()
    assert (rec.tree["diverged"] == -1).all()


def test_divergence_raises_naming_task_step_and_run():
    rec = _record(divergence_factor=10.0)
    rec.losses(0, 0, np.ones((3, 2), np.float32))
    with pytest.raises(FloatingPointError, match=r"task 1, step 3 \(run 2\): loss 50 > 10 × the "
                                                 r"first loss 1"):
        rec.losses(1, 2, np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 50.0]], np.float32))
    with pytest.raises(FloatingPointError, match=r"task 0, step 0 \(run 0\): loss nan;"):
        _record().losses(0, 0, np.array([[np.nan, 1.0]] * 3, np.float32))


def test_marked_runs_keep_their_first_divergence_and_lose_their_later_results():
    rec = _record(on_nonfinite="mark", divergence_factor=10.0)
    rec.losses(0, 0, np.array([[1.0, 1.0], [1.0, np.inf], [1.0, 1.0]], np.float32))
    rec.losses(0, 2, np.array([[1.0, 1.0], [np.nan, 1.0], [1.0, 11.0]], np.float32))
    assert rec.tree["diverged"].tolist() == [[-1, -1], [0, 1], [0, 3]]
    rec.evaluation(0, np.full((3, 2), 0.5), np.full((3, 2), 0.7))
    acc = rec.tree["accuracy"][:, 0]
    assert acc[0].tolist() == [0.5, 0.5] and np.isnan(acc[1:]).all()
    assert np.isnan(rec.tree["accuracy"][:, 1]).all()      # task 1 not evaluated yet


def test_kept_parameters_and_the_result():
    params = {"w": np.zeros((3, 2, 2), np.float32)}
    rec = _record(params=params)
    rec.keep(1, {"w": np.arange(12, dtype=np.float32).reshape(3, 2, 2)})
    res = rec.result(final_state="state", timings={"x": 1})
    assert res.task_params["w"].shape == (3, 2, 2, 2)
    np.testing.assert_array_equal(res.task_params["w"][:, 1], np.arange(12).reshape(3, 2, 2))
    np.testing.assert_array_equal(res.task_params["w"][:, 0], 0)
    assert res.final_state == "state" and res.timings == {"x": 1}
    assert _record().result(None, {}).task_params is None
