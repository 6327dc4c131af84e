"""Tests for cljax.methods.orthog (ORTHOG-SUBSPACE, Chaudhry et al. 2020): the task subspaces,
the projected logits against a hand computation, the replay of one past task through each stored
example's own projection, and the Stiefel option over a whole stream. The contracts (finite, one
compilation, vmap, resume, host) are rows of tests/test_contract.py."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.layers import leaf_paths
from cljax.methods import Clock, LossContext, get_method
from cljax.methods.orthog import (
    output_layer,
    project_features,
    stiefel_kernels,
    subspace_model,
    subspace_rank,
    task_bases,
    task_projections,
)
from cljax.nn import CNN, MLP, AlexNet, ResNet18, as_model
from cljax.training import device_feed, make_trainer, prepare_data, run_stream, to_batch
from cljax.training.data import stream_spec
from cljax.transforms import gram_error


def _their_projections(num_tasks, feature_dim):
    """``generate_projection_matrix(num_tasks, feature_dim, qr=False)`` of their utils/utils.py
    (Python 2's integer division for the rank)."""
    rank = feature_dim // num_tasks
    q = np.identity(feature_dim)
    return [q[:, t * rank:(t + 1) * rank] @ q[:, t * rank:(t + 1) * rank].T
            for t in range(num_tasks)]


@pytest.mark.parametrize("basis", ["identity", "random"])
@pytest.mark.parametrize("num_tasks,features", [(20, 256), (17, 512), (3, 12), (5, 7)])
def test_task_subspaces_are_mutually_orthogonal(basis, num_tasks, features):
    a = task_bases(num_tasks, features, basis=basis, seed=3).astype(np.float64)
    r = features // num_tasks
    assert a.shape == (num_tasks, features, r) == (num_tasks, features,
                                                   subspace_rank(num_tasks, features))
    stacked = a.transpose(1, 0, 2).reshape(features, num_tasks * r)    # [A_0 … A_{T−1}]
    # blocks (s, t) of the Gram matrix: A_sᵀA_t = I_r for s = t, 0 otherwise
    np.testing.assert_allclose(stacked.T @ stacked, np.eye(num_tasks * r), atol=1e-6)
    p = task_projections(a)
    np.testing.assert_allclose(p[:3] @ p[:3], p[:3], atol=1e-6)         # P_t² = P_t
    np.testing.assert_allclose(p[0] @ p[1], 0, atol=1e-6)               # P_s P_t = 0
    np.testing.assert_allclose(p[-1] @ p[0], 0, atol=1e-6)
    if basis == "identity":
        np.testing.assert_array_equal(p, np.stack(_their_projections(num_tasks, features)))


def test_rank_option_and_errors():
    assert task_bases(4, 20, rank=3).shape == (4, 20, 3)
    assert subspace_rank(20, 256) == 12                        # their MNIST: 16 features unused
    with pytest.raises(ValueError, match="need 25 feature dimensions"):
        subspace_rank(5, 20, rank=5)
    with pytest.raises(ValueError, match="widen the last hidden layer"):
        subspace_rank(30, 20)
    with pytest.raises(ValueError, match="basis must be one of"):
        task_bases(2, 4, basis="qr")
    with pytest.raises(ValueError, match="basis must be one of"):
        get_method("orthog", basis="qr")
    with pytest.raises(ValueError, match="need stiefel=True"):
        get_method("orthog", stiefel_layers=["Dense_0"])
    with pytest.raises(ValueError, match="replay must be one of"):
        get_method("orthog", replay="fifo")
    with pytest.raises(TypeError, match="list of layer names"):
        get_method("orthog", stiefel=True, stiefel_layers="Dense_0")


@functools.cache
def _stream():
    return split_tasks(tiny_dataset(num_classes=6, n=90),
                       tiny_dataset(num_classes=6, n=45, seed=1), tasks=[[0, 1], [2, 3], [4, 5]])


def _setup(scenario="domain", widths=(12,), optimizer=None, **options):
    s = _stream()
    sc = make_scenario(s, scenario)
    base = as_model(MLP(widths, sc.num_outputs, num_heads=sc.num_heads))
    method = get_method("orthog", **options)
    trainer = make_trainer(base, method, optimizer=optimizer or optax.sgd(0.1), batch_size=8,
                           eval_chunk=16)
    data = prepare_data(s, sc, eval_chunk=16)
    return base, method, trainer, data


def _hand_logits(base, params, batch, bases, num_heads):
    """head(P_t φ(x)) by hand: the base network's features (unprojected), each example's P_t,
    the output layer's kernel and bias, each example's head."""
    phi = np.asarray(base.features_fn(params, batch), np.float64)
    p = task_projections(bases)[np.asarray(batch["task"])]
    out = params[output_layer(params)]
    z = np.einsum("bde,be->bd", p, phi) @ np.asarray(out["kernel"], np.float64)
    z = z + np.asarray(out.get("bias", 0.0), np.float64)
    if num_heads == 1:
        return z
    return z.reshape(z.shape[0], num_heads, -1)[np.arange(z.shape[0]), np.asarray(batch["task"])]


@pytest.mark.parametrize("scenario", ["domain", "task"])
@pytest.mark.parametrize("basis", ["identity", "random"])
def test_logits_are_the_head_of_each_examples_projected_features(scenario, basis):
    base, _, trainer, data = _setup(scenario, basis=basis, basis_seed=1)
    spec = stream_spec(base, data)
    model = subspace_model(base, spec, basis=basis, seed=1)
    tasks = jnp.asarray([0, 2, 1, 0, 2, 1, 1], jnp.int32)
    x = jax.random.uniform(jax.random.key(1), (7, 6, 6, 1))
    batch = {"x": x, "task": tasks}
    params = model.init(jax.random.key(0), batch)
    bases = task_bases(3, 12, basis=basis, seed=1)
    want = _hand_logits(base, params, batch, bases, spec.num_heads)
    np.testing.assert_allclose(model.logits_fn(params, batch), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.train_logits_fn(params, batch, jax.random.key(2)), want,
                               rtol=1e-5, atol=1e-6)
    phi = np.asarray(base.features_fn(params, batch), np.float64)
    np.testing.assert_allclose(model.features_fn(params, batch),
                               np.einsum("bde,be->bd", task_projections(bases)[tasks], phi),
                               atol=1e-6)
    np.testing.assert_allclose(project_features(jnp.asarray(phi, jnp.float32), tasks, bases),
                               model.features_fn(params, batch), atol=1e-6)
    # a mixed batch equals each task's examples alone, row for row
    for t in range(3):
        rows = np.flatnonzero(np.asarray(tasks) == t)
        alone = model.logits_fn(params, {"x": x[rows], "task": tasks[rows]})
        np.testing.assert_allclose(alone, model.logits_fn(params, batch)[rows], rtol=1e-6)
    assert trainer.model(data).features_fn is not None
    with pytest.raises(ValueError, match="needs batch\\['task'\\]"):
        model.logits_fn(params, {"x": x})


@pytest.mark.parametrize("module,size,out,shortcut", [
    (MLP((16, 12), 2), 8, "Dense_2", None),
    (CNN(2, channels=(4,), hidden=12), 8, "Dense_1", None),
    (AlexNet(2, channels=(4, 4, 4), hidden=(12, 12), dropout=0.0, conv_dropout=(0, 0, 0)),
     32, "Dense_2", None),
    (ResNet18(2, nf=4, num_blocks=(1, 1, 1, 1)), 8, "Dense_0", "BasicBlock_1/Conv_2"),
])
def test_every_network_projects_its_output_layers_input(module, size, out, shortcut):
    s = split_tasks(tiny_dataset(num_classes=6, n=30, size=size, channels=3),
                    tiny_dataset(num_classes=6, n=12, size=size, channels=3, seed=1),
                    tasks=[[0, 1], [2, 3], [4, 5]])
    data = prepare_data(s, make_scenario(s, "domain"), eval_chunk=4)
    base = as_model(module)
    spec = stream_spec(base, data)
    model = subspace_model(base, spec, stiefel=True)
    batch = {"x": jax.random.uniform(jax.random.key(1), (6, size, size, 3)),
             "task": jnp.asarray([0, 1, 2, 2, 1, 0])}
    params = model.init(jax.random.key(0), batch)
    assert output_layer(params) == out
    bases = task_bases(3, spec.feature_dim)
    np.testing.assert_allclose(model.logits_fn(params, batch),
                               _hand_logits(base, params, batch, bases, 1), rtol=1e-4,
                               atol=1e-5)
    chosen = stiefel_kernels(params)
    assert out not in chosen
    kernels = [n[:-len("/kernel")] for n in leaf_paths(params) if n.endswith("/kernel")]
    assert chosen == [n for n in kernels if n != out]
    if shortcut is not None:
        assert shortcut in chosen                     # their shortcut kernels are Stiefel too
    for name in chosen:                               # moved onto the manifold at init
        kernel = leaf_paths(params)[f"{name}/kernel"]
        assert float(gram_error(kernel)) < 2e-6, name


def _state_after(trainer, data, tasks_done, key=0):
    state = trainer.init(jax.random.key(key), {}, data)
    feed = device_feed(data)
    for t in range(tasks_done):
        state = trainer.boundary(state, data, jnp.int32(t), feed)
    return state, feed


def _clock(step):
    return Clock(jnp.int32(step), jnp.int32(step), jnp.int32(100))


def test_replay_draws_one_past_tasks_whole_memory():
    """``replay="task"``: every step's memory rows are the whole stored block (per_class ×
    classes per task) of one past task drawn uniformly; nothing is replayed in the first task."""
    _, method, trainer, data = _setup(per_class=2)
    state, feed = _state_after(trainer, data, 2)
    memory = state.mstate
    assert memory.capacity == 12 and int(memory.valid.sum()) == 8
    drawn = set()
    for step in range(12):
        rows = trainer.draw(state, data, jnp.int32(2), _clock(step), feed)
        tasks = np.asarray(rows["memory"]["task"])
        assert rows["memory_ok"].tolist() == [True] * 4 and len(set(tasks)) == 1, step
        p = int(tasks[0])
        block = np.asarray(memory.x)[np.asarray(memory.valid) & (np.asarray(memory.task) == p)]
        got = np.asarray(rows["memory"]["x"])
        assert sorted(map(bytes, got)) == sorted(map(bytes, block))
        assert np.asarray(rows["task"]).tolist() == [2] * 8
        drawn.add(p)
    assert drawn == {0, 1}
    empty, feed = _state_after(trainer, data, 0)
    rows = trainer.draw(empty, data, jnp.int32(0), _clock(0), feed)
    assert not np.any(rows["memory_ok"])


@pytest.mark.parametrize("loss", ["scaled", "concat"])
def test_loss_replays_each_memory_example_through_its_own_projection(loss):
    """The loss against a hand computation: ``"scaled"`` (ℓ_current + ℓ_memory) / t, their
    accumulated gradient (grad / task_id summed over the two batches); ``"concat"`` one mean over
    every row; each row's logits head(P_task φ(x)) with its own task."""
    base, method, trainer, data = _setup(per_class=2, loss=loss, replay="uniform",
                                         memory_batch_size=5)
    state, feed = _state_after(trainer, data, 2)
    net, spec = trainer.model_and_spec(data)
    rows = trainer.draw(state, data, jnp.int32(2), _clock(3), feed)
    assert len(set(np.asarray(rows["memory"]["task"]).tolist())) == 2     # both past tasks
    batch = to_batch(data, rows)
    ctx = LossContext(net, jax.random.key(0), {}, jnp.int32(2), spec,
                      lambda r: to_batch(data, r), _clock(3))
    value, _ = method.loss(state.params, batch, state.mstate, ctx)
    bases = task_bases(3, 12)

    def ce(b):
        z = _hand_logits(base, state.params, b, bases, 1)
        z = z - z.max(axis=1, keepdims=True)
        return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), np.asarray(b["y"])]

    cur, mem = ce(batch), ce(to_batch(data, rows["memory"]))
    want = ((cur.mean() + mem.mean()) / 3 if loss == "scaled"
            else np.concatenate([cur, mem]).mean())
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def test_without_memory_the_loss_is_the_projected_cross_entropy():
    base, method, trainer, data = _setup(per_class=0)
    state = trainer.init(jax.random.key(0), {}, data)
    assert state.mstate == ()
    net, spec = trainer.model_and_spec(data)
    rows = trainer.draw(state, data, jnp.int32(1), _clock(0), device_feed(data))
    assert set(rows) == {"x", "label", "task"}
    batch = to_batch(data, rows)
    ctx = LossContext(net, jax.random.key(0), {}, jnp.int32(1), spec,
                      lambda r: to_batch(data, r), _clock(0))
    value, _ = method.loss(state.params, batch, state.mstate, ctx)
    z = _hand_logits(base, state.params, batch, task_bases(3, 12), 1)
    z = z - z.max(axis=1, keepdims=True)
    want = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), np.asarray(batch["y"])])
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def test_stiefel_keeps_the_hidden_kernels_orthonormal_over_a_stream():
    """Three tasks of 40 SGD steps (lr 0.2) with two hidden layers on the Stiefel manifold:
    WᵀW = I to 1e-5 at the end, the output layer free; with an orthogonal initialisation the
    initial parameters are the base model's, bit for bit."""
    s = _stream()
    sc = make_scenario(s, "domain")
    data = prepare_data(s, sc, eval_chunk=16)
    base = as_model(MLP((16, 12), sc.num_outputs, kernel_init="orthogonal", bias_init=0.1))
    method = get_method("orthog", per_class=1, stiefel=True)
    trainer = make_trainer(base, method, optimizer=optax.sgd(0.2), batch_size=8, eval_chunk=16)
    init = trainer.init(jax.random.key(0), {}, data)
    base_init = base.init(jax.random.split(jax.random.key(0))[0],
                          {"x": jnp.zeros((1, 6, 6, 1)), "task": jnp.zeros((1,), jnp.int32)})
    for a, b in zip(jax.tree.leaves(init.params), jax.tree.leaves(base_init)):
        np.testing.assert_array_equal(a, b)
    res = run_stream(trainer, data, keys=jax.random.key(0)[None], num_steps=40)
    params = jax.tree.map(lambda v: v[0], res.final_state.params)
    assert np.all(np.isfinite(res.accuracy)) and res.accuracy[0, -1].mean() > 0.5
    for name in ("Dense_0", "Dense_1"):
        assert float(gram_error(params[name]["kernel"])) < 1e-5, name
    assert float(gram_error(params["Dense_2"]["kernel"])) > 1e-2
    moved = params["Dense_0"]["kernel"] - base_init["Dense_0"]["kernel"]
    assert float(jnp.abs(moved).max()) > 1e-2                  # they trained


def test_class_incremental_is_refused():
    s = _stream()
    sc = make_scenario(s, "class")
    trainer = make_trainer(as_model(MLP((12,), sc.num_outputs)), get_method("orthog"),
                           optimizer=optax.sgd(0.1), batch_size=8, eval_chunk=16)
    with pytest.raises(ValueError, match="does not support the 'class' scenario"):
        trainer.init(jax.random.key(0), {}, prepare_data(s, sc, eval_chunk=16))
