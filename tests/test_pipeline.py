"""cljax.data.pipeline: streams larger than the device, fed from the host in chunks.

The host path must give the same results as the on-device path (the same keys pick the same
examples), bit for bit, while never holding more than the device-memory cap on the device.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset, tiny_split_stream

from cljax.data import make_scenario, split_tasks
from cljax.data import pipeline as pl
from cljax.methods import Method, get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream


def _stream(n=2000, size=8, tasks=5):
    train = tiny_dataset(n=n, size=size, num_classes=2 * tasks, seed=0)
    test = tiny_dataset(n=n // 4, size=size, num_classes=2 * tasks, seed=1)
    return split_tasks(train, test, tasks=[[2 * t, 2 * t + 1] for t in range(tasks)])


def _trainer(stream, method, scenario="class", batch_size=8):
    sc = make_scenario(stream, scenario)
    model = as_model(MLP((16,), sc.num_outputs, num_heads=sc.num_heads))
    return sc, make_trainer(model, method, optimizer=optax.adam(1e-2), batch_size=batch_size,
                            eval_chunk=50)


def _fields(res):
    return [res.accuracy, res.loss, res.train_loss, res.init_accuracy, res.init_loss,
            res.diverged, *jax.tree.leaves(res.final_state.params),
            *jax.tree.leaves(res.final_state.opt_state),
            *(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
              for x in jax.tree.leaves(res.final_state.mstate))]


def _assert_identical(a, b):
    for x, y in zip(_fields(a), _fields(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _live_example_bytes():
    """Bytes of the uint8 arrays alive on the device: the stream's examples (pixels), whatever
    holds them (the model and optimizer states are float32 / int32 / keys)."""
    return sum(x.nbytes for x in jax.live_arrays() if x.dtype == jnp.uint8)


def test_placement_is_chosen_by_size_against_the_cap():
    s = tiny_split_stream()
    size = pl.stream_bytes(s)
    assert size == sum(a.nbytes for a in (*s.train, *s.test))
    assert pl.choose_placement(s, memory_cap=size) == "device"
    assert pl.choose_placement(s, memory_cap=size - 1) == "host"
    assert pl.choose_placement(s, placement="device", memory_cap=1) == "device"
    assert pl.choose_placement(s, placement="host") == "host"
    assert pl.choose_placement(s) == "device"                    # the default cap: it fits
    cap = pl.default_memory_cap()
    assert cap is None or cap > size
    with pytest.raises(ValueError, match="placement must be one of"):
        pl.choose_placement(s, placement="disk")
    with pytest.raises(ValueError, match="memory_cap"):
        pl.choose_placement(s, memory_cap=0)
    with pytest.raises(ValueError, match="one task .* more than the device-memory cap"):
        pl.choose_placement(s, memory_cap=pl.task_bytes(s) - 1)
    sc = make_scenario(s, "task")
    data = prepare_data(s, sc, eval_chunk=16, memory_cap=size // 2)
    assert data.host is not None and data.train.x.shape == (2, 0, 6, 6, 1)
    assert np.asarray(data.train.n).tolist() == s.train.n.tolist()
    assert data.host.test.x.shape[1] % 16 == 0                    # padded to the eval chunk
    assert prepare_data(s, sc, eval_chunk=16).host is None


def test_steps_per_call_fit_the_budget():
    assert pl.steps_per_call_for(12, 12, step_bytes=10, budget=None) == 12
    assert pl.steps_per_call_for(12, 12, step_bytes=10, budget=45) == 4
    assert pl.steps_per_call_for(12, 3, step_bytes=10, budget=1000) == 3
    assert pl.steps_per_call_for(7, 7, step_bytes=10, budget=5) == 1
    s = tiny_split_stream()
    host = pl.HostArrays(s.train, s.test)
    tasks = np.array([[0, 1], [1, 1]])
    idx = np.array([[3, 0], [2, 5]])
    (rows,) = host.gather([(tasks, idx)])
    np.testing.assert_array_equal(rows["x"], s.train.x[tasks, idx])
    np.testing.assert_array_equal(rows["label"], s.train.y[tasks, idx])
    assert host.row_bytes == 36 + 12


@pytest.mark.slow   # CI time; the contract suite's host-pipeline rows run by default
def test_a_stream_four_times_the_cap_trains_like_the_device_path():
    s = _stream()
    cap = pl.stream_bytes(s) // 4
    assert pl.task_bytes(s) < cap
    sc, tr = _trainer(s, get_method("ewc"), scenario="task")
    keys = jax.random.split(jax.random.key(0), 2)
    kw = dict(num_steps=16, keys=keys, hparams={"strength": np.array([1.0, 100.0])})

    host_data = prepare_data(s, sc, eval_chunk=50, memory_cap=cap)        # auto: too large
    assert host_data.host is not None
    base = _live_example_bytes()
    peak = [0]

    def watch(task, done, total):
        peak[0] = max(peak[0], _live_example_bytes() - base)

    host = run_stream(tr, host_data, progress=watch, **kw)
    info = host.timings["data"]
    assert info["placement"] == "host" and info["memory_cap"] == cap
    assert info["steps_per_call"] == 8 and 2 * info["call_bytes"] <= cap // 2
    assert 0 < peak[0] <= cap, (peak[0], cap)        # the examples on the device: under the cap
    del host_data

    dev_data = prepare_data(s, sc, eval_chunk=50, placement="device")
    assert _live_example_bytes() - base >= s.train.x.nbytes + s.test.x.nbytes   # all of them
    dev = run_stream(tr, dev_data, **kw)
    _assert_identical(host, dev)
    assert np.diagonal(host.accuracy, axis1=1, axis2=2).mean() > 0.7      # it learns each task


@pytest.mark.slow
@pytest.mark.parametrize("name,options", [("none", {}), ("joint", {}), ("si", {}),
                                          ("er", {"per_class": 5}), ("agem", {"per_class": 5}),
                                          ("derpp", {"per_class": 5}),
                                          ("icarl", {"per_class": 5}), ("lwf", {})])
def test_every_kind_of_method_gives_the_same_results_from_the_host(name, options):
    s = _stream(n=600, tasks=3)
    m = get_method(name, **options)
    sc, tr = _trainer(s, m)
    kw = dict(num_steps=12, keys=jax.random.split(jax.random.key(1), 2),
              hparams=dict(m.default_hparams), steps_per_call=4)
    host = run_stream(tr, prepare_data(s, sc, eval_chunk=50, placement="host"), **kw)
    dev = run_stream(tr, prepare_data(s, sc, eval_chunk=50), **kw)
    _assert_identical(host, dev)


def _state_dependent_method():
    """Draws from task (count mod 2) — a draw that depends on the method state, which changes
    every step: a plan made from the state at the start of a call goes wrong after one step."""
    def init(params, key, hparams, spec):
        return jnp.zeros((), jnp.int32)

    def batch(ctx, count):
        tasks = jnp.full((ctx.batch_size,), count % 2, jnp.int32)
        return ctx.draw(ctx.data_key, tasks)

    def after_step(info):
        return info.keep_params(info.mstate + 1)

    return Method("state_dependent", init=init, batch=batch, after_step=after_step)


@pytest.mark.slow
def test_a_plan_that_the_step_does_not_follow_is_reported():
    s = tiny_split_stream()
    sc, tr = _trainer(s, _state_dependent_method(), scenario="task")
    kw = dict(num_steps=4, keys=jax.random.split(jax.random.key(0), 1))
    with pytest.raises(RuntimeError, match="drew other examples than planned"):
        run_stream(tr, prepare_data(s, sc, eval_chunk=20, placement="host"), **kw)
    one = run_stream(tr, prepare_data(s, sc, eval_chunk=20, placement="host"),
                     steps_per_call=1, **kw)                    # a plan per step: exact
    _assert_identical(one, run_stream(tr, prepare_data(s, sc, eval_chunk=20), **kw))


def test_what_the_host_path_cannot_feed_is_an_error():
    s = tiny_split_stream()
    whole = Method("whole_task", batch=lambda ctx, m: ctx.task_rows(ctx.task))
    other = Method("other_task", end_task=lambda ctx: (
        ctx.params, ctx.opt_state, ctx.task_rows(jnp.zeros((), jnp.int32))))
    for method, match in ((whole, "reads a whole task"), (other, "reads another task")):
        sc, tr = _trainer(s, method, scenario="task")
        with pytest.raises(NotImplementedError, match=match):
            run_stream(tr, prepare_data(s, sc, eval_chunk=20, placement="host"), num_steps=2,
                       keys=jax.random.split(jax.random.key(0), 1))


def test_shuffled_epochs_give_the_same_results_from_the_host():
    s = _stream(n=400, tasks=2)
    m = get_method("er", per_class=5)
    sc = make_scenario(s, "class")
    tr = make_trainer(as_model(MLP((16,), sc.num_outputs)), m, optimizer=optax.adam(1e-2),
                      batch_size=8, eval_chunk=50, sampling="shuffled")
    kw = dict(num_steps=12, keys=jax.random.split(jax.random.key(1), 2),
              hparams=dict(m.default_hparams), steps_per_call=4)
    host = run_stream(tr, prepare_data(s, sc, eval_chunk=50, placement="host"), **kw)
    dev = run_stream(tr, prepare_data(s, sc, eval_chunk=50), **kw)
    _assert_identical(host, dev)
