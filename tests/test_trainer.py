"""The method protocol's hooks as the trainer calls them (cljax.training.trainer): the clock in
every context, ``after_step`` writing parameters and optimizer state, a method-built model and the
prediction context's key and task ids."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, tiny_dataset

from cljax.checkpoint import Checkpointer
from cljax.data import make_scenario, split_tasks
from cljax.methods import Method
from cljax.nn import MLP, as_model, rebuild
from cljax.training import make_trainer, prepare_data, run_stream

STEPS = 6
TASKS = 3


def _setup(method, scenario="task", placement="device", optimizer=None):
    s = split_tasks(tiny_dataset(num_classes=6, n=90), tiny_dataset(num_classes=6, n=45, seed=1),
                    tasks=[[0, 1], [2, 3], [4, 5]])
    sc = make_scenario(s, scenario)
    model = as_model(MLP((8,), sc.num_outputs, num_heads=sc.num_heads))
    tr = make_trainer(model, method, optimizer=optimizer or optax.adam(1e-2), batch_size=4,
                      eval_chunk=16)
    return tr, prepare_data(s, sc, eval_chunk=16, placement=placement)


def _clock_logger():
    """A method whose state logs, at index ``step``, the clock every hook saw: the batch hook,
    the loss, after_step, and the boundary (row ``T·S + task``)."""
    def init(params, key, hparams, spec):
        return jnp.full((TASKS * STEPS + TASKS, 4, 3), -1, jnp.int32)

    def clock_row(clock):
        return jnp.stack([clock.step, clock.task_step, clock.task_steps])

    def batch(ctx, log):
        from cljax.methods import current_task_batch
        rows = dict(current_task_batch(ctx, log))
        rows["clock"] = jnp.broadcast_to(clock_row(ctx.clock), (ctx.batch_size, 3))
        return rows

    def loss(params, batch, log, ctx):
        from cljax.methods import task_loss
        value, _ = task_loss(params, batch, log, ctx)
        return value, {"loss_clock": clock_row(ctx.clock), "batch_clock": batch["clock"][0]}

    def after_step(info):
        row = jnp.stack([info.aux["batch_clock"], info.aux["loss_clock"],
                         clock_row(info.clock), jnp.zeros(3, jnp.int32)])
        return info.keep_params(info.mstate.at[info.clock.step].set(row))

    def end_task(ctx):
        row = jnp.stack([clock_row(ctx.clock)] * 4)
        return ctx.keep_params(ctx.mstate.at[TASKS * STEPS + ctx.task].set(row))

    return Method("clock_logger", init=init, batch=batch, loss=loss, after_step=after_step,
                  end_task=end_task)


def _expected_log():
    want = np.zeros((TASKS * STEPS + TASKS, 4, 3), np.int32)
    for t in range(TASKS):
        for s in range(STEPS):
            row = [t * STEPS + s, s, STEPS]
            want[t * STEPS + s] = [row, row, row, [0, 0, 0]]
        want[TASKS * STEPS + t] = [[(t + 1) * STEPS, STEPS, STEPS]] * 4
    return want


def test_the_clock_every_hook_sees():
    tr, data = _setup(_clock_logger())
    keys = jax.random.split(jax.random.key(0), 2)
    res = run_stream(tr, data, num_steps=STEPS, keys=keys)
    for r in range(2):
        np.testing.assert_array_equal(res.final_state.mstate[r], _expected_log())
    np.testing.assert_array_equal(res.final_state.task_step, 0)
    # the same clock when the steps are split into calls, on the host path, and vmapped
    split = run_stream(tr, data, num_steps=STEPS, keys=keys, steps_per_call=2, runs="vmap")
    np.testing.assert_array_equal(split.final_state.mstate, res.final_state.mstate)
    tr_h, data_h = _setup(_clock_logger(), placement="host")
    host = run_stream(tr_h, data_h, num_steps=STEPS, keys=keys, steps_per_call=3)
    np.testing.assert_array_equal(host.final_state.mstate, res.final_state.mstate)


def test_the_clock_survives_an_interruption(tmp_path):
    tr, data = _setup(_clock_logger())
    keys = jax.random.split(jax.random.key(1), 1)
    calls = []

    def stop(task, done, total):
        calls.append((task, done))
        if (task, done) == (1, 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stream(tr, data, num_steps=STEPS, keys=keys, progress=stop, checkpoint_every=2,
                   checkpoint=Checkpointer(tmp_path))
    res = run_stream(tr, data, num_steps=STEPS, keys=keys, checkpoint_every=2, resume=True,
                     checkpoint=Checkpointer(tmp_path))
    np.testing.assert_array_equal(res.final_state.mstate[0], _expected_log())


def test_after_step_writes_the_parameters_and_the_optimizer_state():
    """A weight projection after every step (half of every kernel held at zero, the optimizer
    state reset when a task is half done): the trainer takes what ``after_step`` returns."""
    def after_step(info):
        params = jax.tree.map(lambda p: p.at[..., ::2].set(0.0) if p.ndim == 2 else p,
                              info.params)
        halfway = info.clock.task_step == info.clock.task_steps // 2
        opt_state = jax.tree.map(lambda o: jnp.where(halfway, jnp.zeros_like(o), o),
                                 info.opt_state)
        return params, opt_state, info.mstate + halfway.astype(jnp.int32)

    method = Method("projected", init=lambda p, k, h, s: jnp.zeros((), jnp.int32),
                    after_step=after_step)
    tr, data = _setup(method)
    state = tr.init(jax.random.key(0), {}, data)
    state, _ = tr.fit(state, data, jnp.asarray(0), STEPS)
    kernels = [p for p in jax.tree.leaves(state.params) if p.ndim == 2]
    assert kernels and all(float(jnp.abs(k[..., ::2]).max()) == 0.0 for k in kernels)
    assert all(float(jnp.abs(k[..., 1::2]).max()) > 0.0 for k in kernels)
    assert int(state.mstate) == 1            # the halfway step happened once
    # the reset moments at the halfway step: Adam's count restarts, so after it it has counted
    # the steps since, not all of them
    counts = [int(c) for c in jax.tree.leaves(state.opt_state) if jnp.ndim(c) == 0]
    assert counts and all(c == STEPS - STEPS // 2 - 1 for c in counts)


def test_a_method_builds_its_model_from_the_configured_one():
    seen = []

    def wider(base, spec):
        seen.append((spec.num_tasks, spec.num_outputs))
        return rebuild(base, widths=(5, 3))

    method = Method("wider", model=wider)
    tr, data = _setup(method)
    state = tr.init(jax.random.key(0), {}, data)
    assert [p.shape for p in jax.tree.leaves(state.params) if p.ndim == 2] == [
        (36, 5), (5, 3), (3, 6)]                       # 6×6 pixels → 5 → 3 → 3 heads × 2
    assert seen[0] == (TASKS, 2)
    assert tr.model(data).module.widths == (5, 3)
    res = run_stream(tr, data, num_steps=3, keys=jax.random.split(jax.random.key(0), 1))
    assert np.all(np.isfinite(res.loss))
    needs = Method("needs_features", model=lambda base, spec: base._replace(features_fn=None),
                   requires=("features_fn",))
    tr, data = _setup(needs)
    with pytest.raises(ValueError, match="needs_features.*features_fn"):
        tr.init(jax.random.key(0), {}, data)
    with pytest.raises(ValueError, match="has no field \\['depth'\\]"):
        rebuild(as_model(MLP((4,), 2)), depth=3)


def test_prediction_gets_a_key_per_chunk_and_each_examples_task():
    seen = []

    def predict(params, mstate, batch, ctx):
        jax.debug.callback(lambda k, t, bt: seen.append((np.asarray(k), np.asarray(t),
                                                         np.asarray(bt))),
                           jax.random.key_data(ctx.key), ctx.tasks, batch["task"])
        return ctx.model.logits_fn(params, batch)

    tr, data = _setup(Method("probe", predict=predict))
    state = tr.init(jax.random.key(0), {}, data)
    acc = jax.jit(tr.evaluate)(state, data)[0]
    plain = jax.jit(make_trainer(tr.base_model, Method("plain"), optimizer=optax.adam(1e-2),
                                 batch_size=4, eval_chunk=16).evaluate)(state, data)[0]
    np.testing.assert_array_equal(acc, plain)
    chunks = data.test.y.shape[1] // 16
    assert len(seen) == TASKS * chunks
    keys = {k.tobytes() for k, _, _ in seen}
    assert len(keys) == TASKS * chunks                     # one key per task and chunk
    per_task = [0] * TASKS
    for _, tasks, batch_tasks in seen:
        np.testing.assert_array_equal(tasks, batch_tasks)
        assert len(set(tasks.tolist())) == 1                # the trainer's chunks: one task
        per_task[int(tasks[0])] += 1
    assert per_task == [chunks] * TASKS
    seen.clear()
    jax.jit(tr.evaluate)(state, data)
    assert {k.tobytes() for k, _, _ in seen} == keys       # the same state, the same keys


def test_the_scenario_a_spec_describes_and_its_refusal():
    from cljax.methods import StreamSpec
    spec = lambda heads, outputs, tasks=3: StreamSpec((4,), jnp.uint8, tasks, 2, outputs, heads,
                                                      None)
    assert [spec(3, 2).scenario, spec(1, 2).scenario, spec(1, 6).scenario] == [
        "task", "domain", "class"]
    assert spec(1, 2, tasks=1).scenario is None and spec(1, 5).scenario is None
    tr, data = _setup(Method("task_only", scenarios=("task",)), scenario="class")
    with pytest.raises(ValueError, match="task_only.*does not support the 'class' scenario"):
        tr.init(jax.random.key(0), {}, data)


@pytest.mark.parametrize("sampling", ["shuffled", "shuffled_drop_last", "iid"])
def test_each_task_trains_its_own_epochs(sampling):
    """``task_epochs=1``: on tasks of unequal size given the largest task's steps, each task's
    state after them equals training exactly its own ⌈n_t / batch⌉ steps (⌊n_t / batch⌋ whole
    batches when dropping the last); the steps past them change nothing."""
    from cljax.methods import get_method

    train = tiny_dataset(n=46, num_classes=4, seed=0)
    s = split_tasks(train, tiny_dataset(n=20, seed=1), tasks=[[0, 1], [2, 3]])
    sc = make_scenario(s, "task")
    data = prepare_data(s, sc, eval_chunk=10)
    build = functools.partial(make_trainer, as_model(MLP((4,), 2, num_heads=2)),
                              get_method("none"), optimizer=optax.adam(0.05), batch_size=2,
                              sampling=sampling)
    each, plain = build(task_epochs=1), build()
    sizes = [int(n) for n in data.train.n]
    assert sizes[0] != sizes[1]
    own = [n // 2 if sampling == "shuffled_drop_last" else -(-n // 2) for n in sizes]
    total = max(-(-n // 2) for n in sizes)
    assert min(own) < total
    a = b = each.init(jax.random.key(0), {}, data)
    for task in (0, 1):
        t = jnp.int32(task)
        np.testing.assert_array_equal(each.own_steps(data, t), own[task])
        a, _ = jax.jit(lambda st, t: each.fit(st, data, t, total))(a, t)
        b, _ = jax.jit(lambda st, t, n=own[task]: plain.fit(st, data, t, n))(b, t)
        assert int(a.step) == int(b.step) and int(a.task_step) == own[task]
        assert_trees_close(a.params, b.params, rtol=1e-6, atol=1e-7)
        assert_trees_close(a.opt_state, b.opt_state, rtol=1e-6, atol=1e-7)
        a, b = each.end_task(a, data, t), plain.end_task(b, data, t)
    with pytest.raises(ValueError, match="task_epochs"):
        build(task_epochs=0)
    if sampling == "shuffled":   # vmapped runs whose tasks stop at their own steps = separate runs
        keys = jax.random.split(jax.random.key(1), 2)
        both = run_stream(each, data, num_steps=total, keys=keys)
        for r in range(2):
            one = run_stream(each, data, num_steps=total, keys=keys[r:r + 1])
            np.testing.assert_allclose(both.accuracy[r], one.accuracy[0], rtol=1e-6)
            assert_trees_close(jax.tree.map(lambda p, r=r: p[r], both.final_state.params),
                               jax.tree.map(lambda p: p[0], one.final_state.params),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampling", ["shuffled", "shuffled_drop_last"])
def test_shuffled_sampling_draws_each_example_once_per_epoch(sampling):
    from cljax.methods import get_method
    from cljax.methods.base import Clock
    from cljax.training import device_feed

    train = tiny_dataset(n=46, num_classes=4, seed=0)
    s = split_tasks(train, tiny_dataset(n=20, seed=1), tasks=[[0, 1], [2, 3]])
    sc = make_scenario(s, "task")
    data = prepare_data(s, sc, eval_chunk=10)
    tr = make_trainer(as_model(MLP((4,), 2, num_heads=2)), get_method("none"),
                      optimizer=optax.sgd(0.1), batch_size=4, sampling=sampling)
    state = tr.init(jax.random.key(0), {}, data)
    draw = jax.jit(lambda st, task, ts: tr.draw(st, data, task, Clock(ts, ts, 50),
                                                  device_feed(data)))
    for task in (0, 1):
        n = int(data.train.n[task])
        per_epoch = n // 4 if sampling == "shuffled_drop_last" else None
        rows = [draw(state, jnp.int32(task), jnp.int32(ts)) for ts in range(3 * n)]
        xs = np.concatenate([np.asarray(r["x"]).reshape(4, -1) for r in rows])
        stored = np.asarray(data.train.x[task, :n]).reshape(n, -1)
        ids = [int(np.flatnonzero((stored == x).all(1))[0]) for x in xs]
        if per_epoch is None:
            for e in range(3):
                assert sorted(ids[e * n:(e + 1) * n]) == list(range(n))
        else:
            for e in range(3):
                epoch = ids[e * 4 * per_epoch:(e + 1) * 4 * per_epoch]
                assert len(set(epoch)) == 4 * per_epoch
    with pytest.raises(ValueError, match="sampling must be one of"):
        make_trainer(as_model(MLP((4,), 2)), get_method("none"), optimizer=optax.sgd(0.1),
                     batch_size=4, sampling="random")
    big = make_trainer(as_model(MLP((4,), 2, num_heads=2)), get_method("none"),
                       optimizer=optax.sgd(0.1), batch_size=64, sampling="shuffled_drop_last")
    with pytest.raises(ValueError, match="at least batch_size=64 examples"):
        big.draw(big.init(jax.random.key(0), {}, data), data, jnp.int32(0),
                 Clock(0, 0, 5), device_feed(data))
