"""Tests for cljax.methods.packnet (Mallya & Lazebnik 2018), each against an oracle: a numpy
brute-force selection of the pruned weights, networks masked by hand, the parameters kept after
every task (frozen entries bit for bit), lone runs for vmapped ones and the device path for the
host pipeline."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.layers import path_name
from cljax.methods import BoundaryContext, Clock, PredictContext, StepInfo, get_method
from cljax.methods.packnet import FREE, PackNetState, owner_masked, release_counts, release_smallest
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream, to_batch

STEPS = 9                       # per task: prune after step 5, retrain steps 6..8 (1/3)
T = 3
RATIO = 0.5
KEYS = jax.random.split(jax.random.key(3), 2)
OPTIMIZERS = {"adam": lambda: optax.adam(1e-2),
              "adamw": lambda: optax.adamw(1e-2, weight_decay=0.5),
              "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9)}
VMAP_TOL = dict(rtol=2e-5, atol=1e-6)   # batched vs unbatched float32 matmuls round apart


@functools.cache
def _stream():
    return split_tasks(tiny_dataset(num_classes=6, n=90), tiny_dataset(num_classes=6, n=45, seed=1),
                       tasks=[[0, 1], [2, 3], [4, 5]])


def build(scenario="task", optimizer="adam", placement="device", **options):
    s = _stream()
    sc = make_scenario(s, scenario)
    method = get_method("packnet", **{"prune_ratio": RATIO, **options})
    model = as_model(MLP((12, 10), sc.num_outputs, num_heads=sc.num_heads))
    trainer = make_trainer(model, method, optimizer=OPTIMIZERS[optimizer](), batch_size=8,
                           eval_chunk=15)
    return method, trainer, prepare_data(s, sc, eval_chunk=15, placement=placement)


@functools.cache
def reference(optimizer="adam", runs="map"):
    """Two seeds, Task-IL, θ*_t kept after every task (``runs="map"``: each run computed as
    a lone run)."""
    _, trainer, data = build(optimizer=optimizer)
    return run_stream(trainer, data, num_steps=STEPS, keys=KEYS, keep_params=True, runs=runs)


@functools.cache
def _init_params():
    _, trainer, data = build()
    model, _ = trainer.model_and_spec(data)
    return jax.jit(model.init)(jax.random.key(1), {"x": jnp.zeros((1, 6, 6, 1)),
                                                   "task": jnp.zeros((1,), jnp.int32)})


def _np(tree, r=None):
    return jax.tree.map(lambda x: np.asarray(x if r is None else x[r]), tree)


def _bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def _top_level(closed_jaxpr):
    return [e.primitive.name for e in closed_jaxpr.jaxpr.eqns]


def _flat(tree):
    return {path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


# ----------------------------------------------------------------------------------------------
# Ownership and freezing over a stream
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", [
    "adam", pytest.param("adamw", marks=pytest.mark.slow),
    pytest.param("sgd_momentum", marks=pytest.mark.slow)])
def test_owners_are_disjoint_and_frozen_weights_never_move(optimizer):
    res = reference(optimizer)
    for r in range(2):
        owner = _np(res.final_state.mstate.owner, r)
        kept = _flat(_np(res.task_params, r))
        theta = [{k: v[j] for k, v in kept.items()} for j in range(T)]   # θ*_j, after task j
        assert set(owner) == {"Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel",
                              "Dense_2/bias"}
        for name in ("Dense_0/kernel", "Dense_1/kernel"):
            o = owner[name]
            size = o.size
            # each weight has one owner; each task holds the share the ratio leaves it
            releases = release_counts(size, [RATIO] * T)
            free = np.concatenate([[size], releases[:-1]])
            for j in range(T):
                assert np.sum(o == j) == free[j] - releases[j], (name, j)
            assert np.sum(o == FREE) == releases[-1]
            assert set(np.unique(o).tolist()) <= set(range(T)) | {FREE}
            for j in range(T):
                # task j claimed only weights released (zero) by task j - 1
                if j > 0:
                    assert np.all(_bits(theta[j - 1][name][o == j]) == 0)
                # weights of later tasks and released ones are +0.0 after task j: the released
                # weights stayed zero through the retraining
                np.testing.assert_array_equal(_bits(theta[j][name][o > j]), 0)
                # frozen: every later θ*_i equals θ*_j on the weights of tasks ≤ j, bit for bit
                for i in range(j + 1, T):
                    np.testing.assert_array_equal(_bits(theta[i][name][o <= j]),
                                                  _bits(theta[j][name][o <= j]))
        # heads: column block h belongs to task h, frozen after it; hidden biases after task 0
        for name in ("Dense_2/kernel", "Dense_2/bias"):
            cols = np.arange(owner[name].shape[-1]) // 2
            np.testing.assert_array_equal(owner[name], np.broadcast_to(cols, owner[name].shape))
            for j in range(T):
                for i in range(j + 1, T):
                    np.testing.assert_array_equal(_bits(theta[i][name][..., cols <= j]),
                                                  _bits(theta[j][name][..., cols <= j]))
                if j > 0:   # a later head does not move before its task, and moves in it
                    np.testing.assert_array_equal(_bits(theta[j - 1][name][..., cols >= j]),
                                                  _bits(theta[0][name][..., cols >= j]))
                    assert not np.array_equal(theta[j][name][..., cols == j],
                                              theta[j - 1][name][..., cols == j])
        for name in ("Dense_0/bias", "Dense_1/bias"):
            for i in range(1, T):
                np.testing.assert_array_equal(_bits(theta[i][name]), _bits(theta[0][name]))
        assert not np.array_equal(theta[0]["Dense_0/kernel"], theta[1]["Dense_0/kernel"])


def test_zero_forgetting_in_task_il():
    """R[i, j] == R[j, j] for i ≥ j, bit for bit: task j's network never changes."""
    res = reference()
    R = res.accuracy
    for j in range(T):
        for i in range(j, T):
            np.testing.assert_array_equal(R[:, i, j], R[:, j, j])
    assert np.any(R[:, 0, 0] != res.init_accuracy[:, 0])


@pytest.mark.slow   # the contract suite (tests/test_contract.py) checks this by default
def test_vmapped_runs_equal_runs_alone():
    both = reference(runs="vmap")
    alone = reference()
    np.testing.assert_allclose(both.train_loss, alone.train_loss, **VMAP_TOL)
    np.testing.assert_allclose(both.accuracy, alone.accuracy, atol=1e-6)
    for a, b in zip(jax.tree.leaves(both.final_state.mstate.owner),
                    jax.tree.leaves(alone.final_state.mstate.owner)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(alone.train_loss[0], alone.train_loss[1])


def test_host_pipeline_equals_device_bit_for_bit():
    _, trainer, host = build(placement="host")
    res = run_stream(trainer, host, num_steps=STEPS, keys=KEYS, keep_params=True, steps_per_call=3)
    want = reference()
    for field in ("accuracy", "loss", "train_loss"):
        np.testing.assert_array_equal(getattr(res, field), getattr(want, field), err_msg=field)
    for a, b in zip(jax.tree.leaves((res.task_params, res.final_state.mstate)),
                    jax.tree.leaves((want.task_params, want.final_state.mstate))):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# Pruning: the step it happens at and what it keeps
# ----------------------------------------------------------------------------------------------

def _step_info(method, trainer, data, params, mstate, task, task_step, task_steps=STEPS):
    _, spec = trainer.model_and_spec(data)
    clock = Clock(jnp.asarray(task * task_steps + task_step, jnp.int32),
                  jnp.asarray(task_step, jnp.int32), jnp.asarray(task_steps, jnp.int32))
    return StepInfo(None, None, None, None, None, params, jnp.asarray(task, jnp.int32),
                    jax.random.key(0), {}, spec, (), mstate, clock)


def _boundary(trainer, data, params, mstate, task):
    model, spec = trainer.model_and_spec(data)
    clock = Clock(jnp.asarray((task + 1) * STEPS, jnp.int32), jnp.asarray(STEPS, jnp.int32),
                  jnp.asarray(STEPS, jnp.int32))
    return BoundaryContext(params, (), mstate, {}, jnp.asarray(task, jnp.int32),
                           jax.random.key(0), model, spec, None, None, None, None, clock)


def _brute_force_prune(w, owner, task, ratio):
    """The free weights of ``task`` sorted by magnitude (stable: ties by position); the first
    round(ratio · F) released."""
    w, owner = w.copy(), owner.copy()
    flat_w, flat_o = w.reshape(-1), owner.reshape(-1)
    mine = np.flatnonzero(flat_o == task)
    k = int(np.floor(ratio * mine.size + 0.5))
    order = mine[np.argsort(np.abs(flat_w[mine]), kind="stable")]
    flat_w[order[:k]] = 0.0
    flat_o[order[:k]] = FREE
    return w, owner


@pytest.mark.parametrize("task", [0, 1])
def test_prune_releases_the_smallest_free_weights_at_its_step(task):
    method, trainer, data = build()
    model, spec = trainer.model_and_spec(data)
    params = _init_params()
    mstate = method.init(params, jax.random.key(2), {}, spec)
    rng = np.random.default_rng(task)
    owner = dict(mstate.owner)
    for name in ("Dense_0/kernel", "Dense_1/kernel"):
        o = np.asarray(owner[name]).copy()
        if task == 1:   # task 0 released a random half (as many as it does), task 1 claimed it
            released = release_counts(o.size, [RATIO])[0]
            o.reshape(-1)[rng.permutation(o.size)[:released]] = 1
        owner[name] = jnp.asarray(o)
    # ties: a block of equal magnitudes (and both signs) among the candidates
    k0 = np.asarray(params["Dense_0"]["kernel"]).copy()
    k0[:3, :4] = np.array([0.01, -0.01, 0.01, 0.0])
    params = {**params, "Dense_0": {**params["Dense_0"], "kernel": jnp.asarray(k0)}}
    mstate = PackNetState(owner)

    after_step = jax.jit(lambda p, m, step: method.after_step(
        _step_info(method, trainer, data, p, m, task, step)))      # one compilation
    prune_step = STEPS - 3 - 1       # the prune follows it: 3 = round(STEPS / 3) retrain steps
    for step in (0, prune_step - 1, prune_step + 1, STEPS - 1):   # other steps change nothing
        p, _, m = after_step(params, mstate, step)
        for a, b in zip(jax.tree.leaves((p, m)), jax.tree.leaves((params, mstate))):
            np.testing.assert_array_equal(a, b)
    p, _, m = after_step(params, mstate, prune_step)
    for layer in ("Dense_0", "Dense_1"):
        name = f"{layer}/kernel"
        want_w, want_o = _brute_force_prune(np.asarray(params[layer]["kernel"]),
                                            np.asarray(owner[name]), task, RATIO)
        np.testing.assert_array_equal(np.asarray(m.owner[name]), want_o)
        np.testing.assert_array_equal(_bits(p[layer]["kernel"]), _bits(want_w))
        n_mine = np.sum(np.asarray(owner[name]) == task)
        assert np.sum(want_o == task) == n_mine - int(np.floor(RATIO * n_mine + 0.5))
    for name in ("Dense_2/kernel", "Dense_2/bias"):     # the heads are never pruned
        np.testing.assert_array_equal(m.owner[name], owner[name])
    np.testing.assert_array_equal(p["Dense_2"]["kernel"], params["Dense_2"]["kernel"])
    # the task's end leaves the weights and claims the free ones for the next task
    p_end, _, m_end = method.end_task(_boundary(trainer, data, p, m, task))
    for a, b in zip(jax.tree.leaves(p_end), jax.tree.leaves(p)):
        np.testing.assert_array_equal(a, b)
    for name, o in m.owner.items():
        want = np.asarray(o) if name.startswith("Dense_2") else \
            np.where(np.asarray(o) == FREE, task + 1, np.asarray(o))
        np.testing.assert_array_equal(m_end.owner[name], want)


def test_release_smallest_oracle_and_vmapped_prune_acts_per_run():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(7, 5)).astype(np.float32)
    w[0, :3] = 0.0                                    # ties at zero
    owner = rng.integers(0, 3, (7, 5)).astype(np.int32)
    release = jax.jit(release_smallest)
    for count in (0, 1, 4, int(np.sum(owner == 2))):
        got_w, got_o = release(jnp.asarray(w), jnp.asarray(owner), 2, count)
        order = np.flatnonzero(owner.ravel() == 2)
        order = order[np.argsort(np.abs(w.ravel()[order]), kind="stable")][:count]
        want_o = owner.ravel().copy()
        want_o[order] = FREE
        np.testing.assert_array_equal(np.asarray(got_o).ravel(), want_o)
        np.testing.assert_array_equal(np.asarray(got_w).ravel(),
                                      np.where(want_o == FREE, 0.0, w.ravel()))
    with pytest.raises(ValueError, match="same shape"):
        release_smallest(jnp.zeros((2, 3)), jnp.zeros((3, 2), jnp.int32), 0, 1)

    # vmapped after_step: run 0 at its prune step, run 1 not; the cond stays a cond
    method, trainer, data = build()
    model, spec = trainer.model_and_spec(data)
    params = _init_params()
    mstate = method.init(params, jax.random.key(2), {}, spec)

    def one(task_step, p, m):
        info = _step_info(method, trainer, data, p, m, 0, 0)
        info = info._replace(clock=info.clock._replace(task_step=task_step))
        return method.after_step(info)

    two = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)
    steps = jnp.asarray([STEPS - 4, STEPS - 3], jnp.int32)
    out = jax.vmap(one)(steps, two(params), two(mstate))
    for r in range(2):
        alone = one(steps[r], params, mstate)
        for a, b in zip(jax.tree.leaves(_np(out, r)), jax.tree.leaves(alone)):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(out[0]["Dense_0"]["kernel"][0], out[0]["Dense_0"]["kernel"][1])
    jaxpr = jax.make_jaxpr(jax.vmap(one))(steps, two(params), two(mstate))
    top = _top_level(jaxpr)
    assert "cond" in top and "scan" not in top      # the selection's passes only in the cond
    (cond,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "cond"]
    assert any("scan" in _top_level(b) for b in cond.params["branches"])


# ----------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------

def _hand_masked(params, owner, t):
    out = {k: dict(v) for k, v in _np(params).items()}
    for name, o in owner.items():
        layer, leaf = name.split("/")
        out[layer][leaf] = np.where(np.asarray(o) <= t, out[layer][leaf], 0.0).astype(np.float32)
    return out


def _test_batch(data, tasks, n=15):
    idx = np.tile(np.arange(n), len(tasks))
    task_ids = np.repeat(np.asarray(tasks), n)
    return to_batch(data, {"x": data.test.x[task_ids, idx], "label": data.test.y[task_ids, idx],
                           "task": jnp.asarray(task_ids, jnp.int32)})


def test_predict_is_the_network_masked_to_earlier_tasks():
    """``predict`` for task t: the model's logits with every kernel masked to owner ≤ t by hand;
    after task t that is the dense network the step trained (its released weights are zero)."""
    res = reference()
    method, trainer, data = build()
    model, spec = trainer.model_and_spec(data)
    state = jax.tree.map(lambda x: x[0], res.final_state)
    predict = jax.jit(lambda p, m, b: method.predict(
        p, m, b, PredictContext(model, spec, jax.random.key(0), b["task"])))
    for t in range(T):
        batch = _test_batch(data, [t])
        got = predict(state.params, state.mstate, batch)
        want = model.logits_fn(_hand_masked(state.params, state.mstate.owner, t), batch)
        np.testing.assert_array_equal(got, want)
        theta_t = jax.tree.map(lambda x: x[0, t], res.task_params)
        np.testing.assert_allclose(got, model.logits_fn(theta_t, batch), rtol=1e-6, atol=1e-6)
    # masking matters: task 0 with every task's weights predicts differently
    batch = _test_batch(data, [0])
    assert not np.allclose(model.logits_fn(state.params, batch),
                           model.logits_fn(_hand_masked(state.params, state.mstate.owner, 0),
                                           batch))


def test_mixed_batch_predicts_each_row_with_its_task_network():
    res = reference()
    method, trainer, data = build()
    model, spec = trainer.model_and_spec(data)
    batch = _test_batch(data, [0, 1, 2])
    order = np.random.default_rng(0).permutation(batch["y"].shape[0])
    mixed_batch = {k: v[order] for k, v in batch.items()}

    def predict(params, mstate, b):
        return method.predict(params, mstate, b,
                              PredictContext(model, spec, jax.random.key(0), b["task"]))

    states = res.final_state
    mixed = jax.jit(jax.vmap(predict, (0, 0, None)))(states.params, states.mstate, mixed_batch)
    for r in range(2):
        state = jax.tree.map(lambda x: x[r], states)
        for t in range(T):
            alone = jax.jit(predict)(state.params, state.mstate, _test_batch(data, [t]))
            rows = np.flatnonzero(np.asarray(mixed_batch["task"]) == t)
            want = np.asarray(alone)[order[rows] - 15 * t]
            np.testing.assert_allclose(mixed[r][rows], want, rtol=1e-5, atol=1e-6)
    # under vmap over runs the one-task test stays a cond: a one-task batch costs the one
    # forward pass of its branch (3 matmuls), not the mixed branch's loop over the tasks
    jaxpr = jax.make_jaxpr(jax.vmap(predict, (0, 0, None)))(states.params, states.mstate, batch)
    top = _top_level(jaxpr)
    assert top.count("cond") == 1 and "dot_general" not in top and "while" not in top
    (cond,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "cond"]
    branches = [_top_level(b) for b in cond.params["branches"]]
    assert sorted(b.count("dot_general") for b in branches) == [0, 3]


# ----------------------------------------------------------------------------------------------
# Options, capacity and the update rule
# ----------------------------------------------------------------------------------------------

def test_capacity_error_before_training_and_option_checks():
    seen = []
    _, trainer, data = build(prune_ratio=0.0)
    with pytest.raises(ValueError,
                       match=r"layer 'Dense_0'.* 0 free weight.*task 1 \(of 3\).*prune_ratio"):
        run_stream(trainer, data, num_steps=STEPS, keys=KEYS[:1],
                   progress=lambda *a: seen.append(a))
    assert not seen
    _, trainer, data = build(layer_prune_ratio={"Dense_1": (0.5, 0.0, 0.5)})
    with pytest.raises(ValueError, match=r"layer 'Dense_1'.*task 2 \(of 3\).*layer_prune_ratio"):
        run_stream(trainer, data, num_steps=STEPS, keys=KEYS[:1])
    _, trainer, data = build(prune_ratio=(0.5, 0.5))
    with pytest.raises(ValueError, match="2 fractions .* 3 tasks"):
        run_stream(trainer, data, num_steps=STEPS, keys=KEYS[:1])
    _, trainer, data = build(layer_prune_ratio={"Dense_2": 0.5})
    with pytest.raises(ValueError, match="never pruned"):
        run_stream(trainer, data, num_steps=STEPS, keys=KEYS[:1])
    # retrain_steps >= the task's steps: capped, the prune follows the first step
    method, trainer, data = build(retrain_steps=STEPS)
    _, spec = trainer.model_and_spec(data)
    params = _init_params()
    after_step = jax.jit(lambda p, m, step: method.after_step(
        _step_info(method, trainer, data, p, m, 0, step)))
    mstate = method.init(params, None, {}, spec)
    for step, prunes in ((0, True), (1, False), (STEPS - 1, False)):
        _, _, m = after_step(params, mstate, step)
        assert bool(np.any(np.asarray(m.owner["Dense_0/kernel"]) == FREE)) == prunes, step
    for bad in ({"prune_ratio": 1.0}, {"prune_ratio": -0.1}, {"prune_ratio": ()},
                {"retrain_steps": -1}, {"retrain_fraction": 1.0},
                {"layer_prune_ratio": {"Dense_0": 2}}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            get_method("packnet", **bad)
    assert release_counts(10, [0.75, 0.75, 0.5]).tolist() == [8, 6, 3]
    with pytest.raises(ValueError, match="size"):
        release_counts(0, [0.5])


def test_owner_masked_freezes_bit_for_bit_under_adam_momentum():
    """Adam's moments move a weight whose gradient is zero; the masked update does not, and a
    frozen −0.0 stays −0.0."""
    params = {"d": {"kernel": jnp.asarray([[1.0, 2.0], [3.0, -0.0]]), "bias": jnp.ones(2)}}
    owner = {"d/kernel": jnp.asarray([[0, 1], [1, FREE]], jnp.int32)}
    tx = owner_masked(optax.adam(0.1))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    # task 0: weight (0, 0) and the bias train; then task 1 trains (0, 1) and (1, 0), with a
    # zero gradient first (Adam's task-0 moments would move the frozen ones)
    p = params
    for task, g in ((0, grads), (0, grads), (1, jax.tree.map(jnp.zeros_like, grads)), (1, grads)):
        u, state = tx.update(g, state, p, packnet_owner=owner, packnet_task=jnp.asarray(task))
        new = optax.apply_updates(p, u)
        mask = {"d": {"kernel": np.asarray(owner["d/kernel"]) == task,
                      "bias": np.full(2, task == 0)}}
        for a, b, m in zip(jax.tree.leaves(new), jax.tree.leaves(p), jax.tree.leaves(mask)):
            np.testing.assert_array_equal(_bits(np.asarray(a)[~m]), _bits(np.asarray(b)[~m]))
        p = new
    assert _bits(p["d"]["kernel"][1, 1]) == _bits(-0.0)          # released, never trained
    assert float(p["d"]["kernel"][0, 0]) != 1.0 and float(p["d"]["kernel"][0, 1]) != 2.0
    with pytest.raises(ValueError, match="packnet_owner"):
        tx.update(grads, state, params)
