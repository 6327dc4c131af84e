"""Tests for cljax.methods.pnn: progressive networks (Rusu et al. 2016) on the method protocol.

Oracles: the network written by hand from the params (explicit matmuls, the paper's eq. 2 with
the earlier columns concatenated and α multiplying them before V), an ownership table written
here (which slice of which parameter each task trains), per-task predictions, a hand count of
the parameters, and separate / device runs for the vmapped / host ones.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.methods import PredictContext, get_method
from cljax.methods.base import check_scenario
from cljax.methods.pnn import (
    owned_updates_only,
    parameter_owners,
    pnn_parameter_counts,
    progressive_model,
)
from cljax.nn import CNN, MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream, to_batch

T = 3
STEPS = 6
KEYS = jax.random.split(jax.random.key(3), 2)


@functools.cache
def _stream():
    return split_tasks(tiny_dataset(num_classes=6, n=90),
                       tiny_dataset(num_classes=6, n=45, seed=1), tasks=[[0, 1], [2, 3], [4, 5]])


def _build(scenario="task", placement="device", optimizer=None, method=None, **options):
    s = _stream()
    sc = make_scenario(s, scenario)
    method = method or get_method("pnn", **options)
    base = as_model(MLP((8, 6), sc.num_outputs, num_heads=sc.num_heads))
    trainer = make_trainer(base, method, optimizer=optimizer or optax.adam(1e-2), batch_size=8,
                           eval_chunk=15)
    return method, trainer, prepare_data(s, sc, eval_chunk=15, placement=placement)


@functools.cache
def _reference():
    """One Adam run over the 3 tasks, θ*_t kept, and the initial parameters of the same key."""
    method, trainer, data = _build()
    res = run_stream(trainer, data, num_steps=STEPS, keys=KEYS[:1], keep_params=True)
    init = trainer.init(KEYS[0], {}, data).params
    return res, init


# ------------------------------------------------------------------------------------------
# The network written by hand
# ------------------------------------------------------------------------------------------

def _pairs_by_hand(num_tasks):
    """(k, j) of the stored V blocks, in storage order: column k's blocks, j = 0 … k-1."""
    return [(k, j) for k in range(1, num_tasks) for j in range(k)]


def _hand_network(params, x, num_layers, use_bias, num_tasks=T):
    """Every column's logits and last hidden layer, ``[T, B, C]`` and ``[T, B, n]``, in float64
    numpy from the params, layer by layer over all columns."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = [np.asarray(x, np.float64).reshape(x.shape[0], -1)] * num_tasks   # layer 0 reads x
    for i in range(num_layers + 1):
        z = [_hand_preactivation(p, h, i, k, use_bias, num_tasks) for k in range(num_tasks)]
        if i == num_layers:
            return np.stack(z), np.stack(h)
        h = [np.maximum(zk, 0) for zk in z]


def _hand_preactivation(p, h, i, k, use_bias, num_tasks):
    """Column k's layer i before its ReLU: h^(k) W + b + U relu(V_cat (α · h^(<k)) + c), the
    earlier columns concatenated (h^(<k)) and V_cat their blocks stacked in the same order."""
    z = h[k] @ p[f"W_{i}"][k] + (p[f"b_{i}"][k] if use_bias else 0)
    if i > 0 and k > 0:
        pairs = _pairs_by_hand(num_tasks)
        earlier = np.concatenate([h[j] for j in range(k)], axis=1)
        V_cat = np.concatenate([p[f"V_{i}"][pairs.index((k, j))] for j in range(k)])
        a = (p[f"alpha_{i}"][k - 1] * earlier) @ V_cat + (p[f"c_{i}"][k - 1] if use_bias else 0)
        z = z + np.maximum(a, 0) @ p[f"U_{i}"][k - 1]
    return z


@pytest.mark.parametrize("use_bias,adapter_dim", [(True, None), (False, 3)])
def test_each_column_equals_the_network_written_by_hand(use_bias, adapter_dim):
    base = as_model(MLP((5, 4), 3, num_heads=T, use_bias=use_bias))
    model = progressive_model(base, T, adapter_dim=adapter_dim)
    x = jax.random.normal(jax.random.key(0), (7, 2, 3))
    params = jax.jit(model.init)(jax.random.key(1), {"x": x, "task": jnp.zeros(7, jnp.int32)})
    # the adapters should not be negligible in the comparison: α of order 1
    params = {k: (v * 10 if k.startswith("alpha") else v) for k, v in params.items()}
    r1, r2 = adapter_dim or 5, adapter_dim or 4              # None: the width read, n_{i-1}
    assert params["V_1"].shape == (3, 5, r1) and params["U_2"].shape == (T - 1, r2, 3)
    assert ("c_1" in params) == use_bias and ("b_0" in params) == use_bias
    want_logits, want_features = _hand_network(params, x, 2, use_bias)
    logits_fn, features_fn = jax.jit(model.logits_fn), jax.jit(model.features_fn)
    all_heads = np.asarray(jax.jit(model.all_heads_fn)(params, {"x": x,
                                                                "task": jnp.zeros(7, jnp.int32)}))
    np.testing.assert_allclose(np.swapaxes(all_heads, 0, 1), want_logits, rtol=1e-5, atol=1e-5)
    for k in range(T):
        batch = {"x": x, "task": jnp.full(7, k, jnp.int32)}
        np.testing.assert_allclose(logits_fn(params, batch), want_logits[k], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(features_fn(params, batch), want_features[k],
                                   rtol=1e-5, atol=1e-5)
    # the laterals matter: column 2 without its adapters is another function
    no_lateral = {k: (v * 0 if k.startswith("U") else v) for k, v in params.items()}
    assert not np.allclose(_hand_network(no_lateral, x, 2, use_bias)[0][2], want_logits[2],
                           atol=1e-3)


def test_dropout_acts_in_training_only():
    """The base's dropout is in every column: training outputs vary with the key; evaluation is
    the same network without dropout."""
    x = jax.random.normal(jax.random.key(0), (4, 5))
    batch = {"x": x, "task": jnp.arange(4) % T}
    model = progressive_model(as_model(MLP((16,), 2, num_heads=T, dropout=0.5)), T)
    plain = progressive_model(as_model(MLP((16,), 2, num_heads=T)), T)
    params = jax.jit(model.init)(jax.random.key(0), batch)
    train = jax.jit(model.train_logits_fn)
    a, b = train(params, batch, jax.random.key(1)), train(params, batch, jax.random.key(2))
    evaluation = jax.jit(model.logits_fn)(params, batch)
    assert not np.allclose(a, b) and not np.allclose(a, evaluation)
    np.testing.assert_array_equal(evaluation, jax.jit(plain.logits_fn)(params, batch))


# ------------------------------------------------------------------------------------------
# Training moves only what the task owns
# ------------------------------------------------------------------------------------------

def _owned_by_hand(name, shape, task):
    """Boolean mask of the entries of parameter ``name`` that ``task`` trains (written here)."""
    kind, _ = name.rsplit("_", 1)
    if kind in ("W", "b"):
        rows = [k == task for k in range(T)]
    elif kind == "V":
        rows = [k == task for k, _ in _pairs_by_hand(T)]
    else:                                          # alpha, c, U: columns 1 … T-1
        rows = [k == task for k in range(1, T)]
    return np.broadcast_to(np.array(rows).reshape((-1,) + (1,) * (len(shape) - 1)), shape)


def _theta(res, t):
    return {k: np.asarray(v[0, t]) for k, v in res.task_params.items()}


def test_everything_a_task_does_not_own_stays_bitwise_fixed_under_adam():
    res, init = _reference()
    before = {k: np.asarray(v) for k, v in init.items()}
    for t in range(T):
        after = _theta(res, t)
        for name in after:
            owned = _owned_by_hand(name, after[name].shape, t)
            np.testing.assert_array_equal(after[name][~owned], before[name][~owned],
                                          err_msg=f"task {t} moved {name} outside its column")
            if owned.any():                        # task 0 owns no adapter
                assert np.any(after[name][owned] != before[name][owned]), (t, name)
        before = after


def _unmasked():
    """pnn without its update mask: the base optimizer alone."""
    return get_method("pnn")._replace(make_optimizer=lambda hparams, base: base,
                                      optimizer_args=lambda p, b, m, c: {})


@pytest.mark.slow
def test_without_the_update_mask_adam_moves_the_frozen_columns():
    """The control: Adam's momentum moves column 0 on task 1 though its gradient is 0 (the
    activations feed the adapters through stop_gradient), so the mask is what keeps it."""
    _, trainer, data = _build(method=_unmasked())
    res = run_stream(trainer, data, num_steps=STEPS, keys=KEYS[:1], keep_params=True)
    a, b = _theta(res, 0), _theta(res, 1)
    assert np.any(a["W_0"][0] != b["W_0"][0])


@pytest.mark.slow
def test_without_the_update_mask_sgd_moves_only_the_trained_column():
    """With plain SGD the gradient alone decides, and it is exactly zero outside column t (the
    stop_gradient into the adapters, the other columns' heads unused by the loss)."""
    _, trainer, data = _build(method=_unmasked(), optimizer=optax.sgd(0.1))
    res = run_stream(trainer, data, num_steps=STEPS, keys=KEYS[:1], keep_params=True)
    for t in (1, 2):
        before, after = _theta(res, t - 1), _theta(res, t)
        for name in after:
            owned = _owned_by_hand(name, after[name].shape, t)
            np.testing.assert_array_equal(after[name][~owned], before[name][~owned])


def test_task_il_accuracy_matrix_has_zero_forgetting():
    res, _ = _reference()
    R, L = res.accuracy[0], res.loss[0]
    for j in range(T):
        for i in range(j, T):
            assert R[i, j] == R[j, j] and L[i, j] == L[j, j], (i, j, R, L)
    assert R[T - 1].mean() > 0.6, R                        # and it learns


def test_owned_updates_only_zeroes_what_the_task_does_not_own():
    _, init = _reference()
    ones = jax.tree.map(jnp.ones_like, init)
    tx = owned_updates_only()
    for t in range(T):
        out, _ = tx.update(ones, tx.init(init), init, pnn_task=jnp.int32(t))
        for name, u in out.items():
            np.testing.assert_array_equal(np.asarray(u), _owned_by_hand(name, u.shape, t))
    with pytest.raises(ValueError, match="pnn_task"):
        tx.update(ones, tx.init(init), init)


# ------------------------------------------------------------------------------------------
# Prediction, counts, errors
# ------------------------------------------------------------------------------------------

def test_prediction_on_a_mixed_batch_equals_per_task_predictions():
    res, _ = _reference()
    method, trainer, data = _build()
    params = jax.tree.map(lambda v: v[0], res.final_state.params)
    model, spec = trainer.model_and_spec(data)
    n = 10
    tasks = np.repeat(np.arange(T), n)
    order = np.random.default_rng(0).permutation(T * n)
    rows = {"x": data.test.x[tasks, np.tile(np.arange(n), T)],
            "label": data.test.y[tasks, np.tile(np.arange(n), T)],
            "task": jnp.asarray(tasks, jnp.int32)}

    def predict(sel):
        batch = to_batch(data, {k: v[sel] for k, v in rows.items()})
        return np.asarray(method.predict(params, (), batch, PredictContext(
            model, spec, jax.random.key(0), batch["task"])))

    mixed = predict(order)
    where = np.argsort(order)
    for t in range(T):
        alone = predict(np.flatnonzero(tasks == t))
        np.testing.assert_allclose(mixed[where[tasks == t]], alone, rtol=1e-6, atol=1e-6)
        # and it is column t's head: the all-heads output at t
        batch = to_batch(data, {k: v[tasks == t] for k, v in rows.items()})
        np.testing.assert_allclose(alone, model.all_heads_fn(params, batch)[:, t], rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("adapter_dim", [None, 3])
def test_parameter_counts_against_a_hand_count(adapter_dim):
    d, n1, n2, C, tasks = 36, 8, 6, 2, 3
    method, trainer, data = _build()
    base = trainer.base_model
    spec = trainer.model_and_spec(data)[1]._replace(num_tasks=tasks)
    r1, r2 = adapter_dim or n1, adapter_dim or n2
    column = d * n1 + n1 + n1 * n2 + n2 + n2 * C + C
    want = [column + (k > 0) * ((1 + k * n1 * r1 + r1 + r1 * n2) + (1 + k * n2 * r2 + r2 + r2 * C))
            for k in range(tasks)]
    got = pnn_parameter_counts(base, spec, adapter_dim=adapter_dim)
    assert list(got.per_task) == want
    assert list(got.cumulative) == np.cumsum(want).tolist()
    assert got.base == d * n1 + n1 + n1 * n2 + n2 + n2 * C * tasks + C * tasks
    model = progressive_model(base, tasks, adapter_dim=adapter_dim)
    params = jax.eval_shape(model.init, jax.random.key(0), {"x": jnp.zeros((1, 6, 6, 1)),
                                                            "task": jnp.zeros(1, jnp.int32)})
    assert sum(v.size for v in params.values()) == got.cumulative[-1]


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="cljax.nn.MLP base"):
        progressive_model(as_model(CNN(num_outputs=2)), T)
    with pytest.raises(ValueError, match="feature encoding"):
        progressive_model(as_model(MLP((4,), 2, feature_encoding=T)), T)
    with pytest.raises(TypeError, match="base must be a cljax.nn.Model"):
        progressive_model(MLP((4,), 2), T)
    with pytest.raises(ValueError, match="adapter_dim must be a positive int"):
        get_method("pnn", adapter_dim=0)
    with pytest.raises(ValueError, match="not a parameter of a ProgressiveMLP"):
        parameter_owners("Dense_0", T)
    with pytest.raises(ValueError, match="num_tasks must be a positive int"):
        parameter_owners("W_0", 0)
    with pytest.raises(ValueError, match="num_tasks must be a positive int"):
        progressive_model(as_model(MLP((4,), 2)), 0)
    model = progressive_model(as_model(MLP((4,), 2)), T)
    params = model.init(jax.random.key(0), {"x": jnp.zeros((2, 3)), "task": jnp.zeros(2, jnp.int32)})
    with pytest.raises(ValueError, match="batch\\['task'\\] is required"):
        model.logits_fn(params, {"x": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match="shape"):
        model.logits_fn(params, {"x": jnp.zeros((2, 3)), "task": jnp.zeros(3, jnp.int32)})


# ------------------------------------------------------------------------------------------
# Through the trainer: one compilation, vmapped runs, the host pipeline
# ------------------------------------------------------------------------------------------

@pytest.mark.slow   # the contract suite (tests/test_contract.py) checks this by default
def test_one_trace_for_the_stream():
    traces = []
    method = get_method("pnn")
    build = method.model

    def counting(base, spec):
        model = build(base, spec)
        inner = model.train_logits_fn

        def train_logits_fn(params, batch, key):
            traces.append(1)
            return inner(params, batch, key)

        return model._replace(train_logits_fn=train_logits_fn)

    _, trainer, data = _build(method=method._replace(model=counting))
    res = run_stream(trainer, data, num_steps=3, keys=KEYS[:1])
    assert len(traces) == 1 and np.all(np.isfinite(res.train_loss))


def test_task_il_only():
    """The column is chosen by the task id, which only Task-IL gives at test time."""
    method = get_method("pnn")
    assert method.scenarios == ("task",)
    for scenario in ("domain", "class"):
        with pytest.raises(ValueError, match=f"does not support the '{scenario}' scenario"):
            check_scenario(method, scenario)
        _, trainer, data = _build(scenario)                    # refused when a run starts
        with pytest.raises(ValueError, match="the 'task' scenario only"):
            jax.eval_shape(lambda: trainer.init(KEYS[0], {}, data))


@pytest.mark.slow   # the contract suite (tests/test_contract.py) checks this by default
def test_vmapped_runs_equal_separate_runs():
    _, trainer, data = _build()
    both = run_stream(trainer, data, num_steps=STEPS, keys=KEYS, runs="vmap")
    assert not np.allclose(both.train_loss[0], both.train_loss[1])
    for r in range(2):
        alone = (_reference()[0] if r == 0
                 else run_stream(trainer, data, num_steps=STEPS, keys=KEYS[1:]))
        for field in ("train_loss", "loss", "accuracy"):
            np.testing.assert_allclose(getattr(both, field)[r], getattr(alone, field)[0],
                                       rtol=2e-5, atol=1e-6, err_msg=f"run {r}: {field}")
        for name, v in both.final_state.params.items():
            np.testing.assert_allclose(v[r], alone.final_state.params[name][0], rtol=2e-5,
                                       atol=1e-6, err_msg=f"run {r}: {name}")


@pytest.mark.slow   # the contract suite (tests/test_contract.py) checks this by default
def test_host_pipeline_equals_device():
    _, trainer, data = _build(placement="host")
    host = run_stream(trainer, data, num_steps=STEPS, keys=KEYS[:1], keep_params=True)
    assert host.timings["data"]["placement"] == "host"
    device = _reference()[0]
    for field in ("train_loss", "loss", "accuracy", "init_accuracy"):
        np.testing.assert_array_equal(getattr(host, field), getattr(device, field), err_msg=field)
    for name, v in host.task_params.items():
        np.testing.assert_array_equal(v, device.task_params[name], err_msg=name)
