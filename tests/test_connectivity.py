"""cljax.analysis.connectivity: paths between solutions, their loss, Bézier curves."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.analysis import fit_bezier, loss_along_path, loss_barrier, path_point

A = {"w": jnp.array([1.0, 0.0]), "b": jnp.array(0.5)}
B = {"w": jnp.array([-1.0, 0.0]), "b": jnp.array(-0.5)}


def ring(params):
    """Minima on the unit circle (any b): the straight line from (1, 0) to (−1, 0) crosses the
    origin, where the loss is 1; a curve around the circle stays at 0."""
    return (jnp.sum(params["w"] ** 2) - 1.0) ** 2 + 0.0 * params["b"]


def test_paths_start_and_end_at_the_solutions_bit_for_bit():
    c = {"w": jnp.array([0.3, 2.0]), "b": jnp.array(7.0)}
    for control in (None, c):
        for t, end in ((0.0, A), (1.0, B)):
            got = path_point(A, B, t, control=control)
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(end)):
                np.testing.assert_array_equal(x, y)
    mid = path_point(A, B, 0.5, control=c)       # 0.25·a + 0.5·c + 0.25·b
    np.testing.assert_allclose(mid["w"], [0.15, 1.0], rtol=1e-6)


def test_loss_along_a_path_equals_evaluating_each_point():
    c = {"w": jnp.array([0.0, 1.5]), "b": jnp.array(0.0)}
    for control in (None, c):
        out = loss_along_path(ring, A, B, num_points=7, control=control)
        expected = [float(ring(path_point(A, B, float(t), control=control))) for t in out["t"]]
        np.testing.assert_allclose(out["loss"], expected, rtol=1e-6)
    linear = loss_along_path(ring, A, B, num_points=5)
    assert linear["loss"][2] == pytest.approx(1.0)                # the origin
    assert loss_barrier(linear["t"], linear["loss"]) == pytest.approx(1.0)


def test_a_trained_bezier_curve_goes_around_the_barrier():
    control, values = fit_bezier(ring, A, B, jax.random.key(0), steps=400,
                                 optimizer=optax.adam(5e-2),
                                 init={"w": jnp.array([0.0, 0.1]), "b": jnp.array(0.0)})
    assert values.shape == (400,)
    curve = loss_along_path(ring, A, B, num_points=21, control=control)
    # a quadratic curve cannot follow the circle exactly (≈ 0.035 at best), far below the line
    assert loss_barrier(curve["t"], curve["loss"]) < 0.15
    assert abs(float(control["w"][1])) > 1.0    # the control point left the straight line


def test_barrier_definition_and_errors():
    assert loss_barrier([0.0, 0.5, 1.0], [0.0, 0.5, 1.0]) == 0.0   # on the line: no barrier
    assert loss_barrier([0.0, 0.5, 1.0], [2.0, 0.0, 1.0]) == 0.0   # below it: none either
    with pytest.raises(ValueError, match="t from 0 to 1"):
        loss_barrier([0.1, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        loss_barrier([0.0, 1.0], [0.0, np.nan])
    with pytest.raises(ValueError, match="theta_a's pytree structure"):
        path_point(A, {"w": B["w"]}, 0.5)
    with pytest.raises(ValueError, match="theta_a's shapes"):
        path_point(A, {"w": jnp.zeros(3), "b": B["b"]}, 0.5)
    with pytest.raises(ValueError, match="num_points must be an int >= 2"):
        loss_along_path(ring, A, B, num_points=1)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        fit_bezier(ring, A, B, jax.random.key(0), steps=0)


def _three_solutions(*, width, n, seed):
    """A one-hidden-layer MLP, 3 tasks of ``n`` random examples (stacked task data) and three
    random parameter sets θ*_1 … θ*_3, as a list and stacked on a task axis."""
    from cljax.nn import MLP, as_model

    model = as_model(MLP((width,), 3))
    keys = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(keys[0], (3, n, 4))
    y = jax.random.randint(keys[1], (3, n), 0, 3)
    data = {"x": x, "y": y, "task": jnp.zeros((3, n), jnp.int32)}
    thetas = [model.init(k, {"x": x[0]}) for k in keys[2:5]]
    return model, x, y, data, thetas, jax.tree.map(lambda *p: jnp.stack(p), *thetas)


def test_forgetting_paths_against_a_point_by_point_loop():
    from cljax.analysis import forgetting_paths

    model, x, y, data, thetas, stacked = _three_solutions(width=6, n=9, seed=0)
    counts = [9, 7, 5]
    out = forgetting_paths(model.logits_fn, stacked, data, counts=counts, num_points=5,
                           chunk_size=4)
    assert out["loss"].shape == (2, 5) and out["barrier"].shape == (2,)
    for i in range(2):
        for j, t in enumerate(out["t"]):
            params = jax.tree.map(lambda a, b, t=t: (1 - t) * a + t * b, thetas[i], thetas[2])
            z = np.asarray(model.logits_fn(params, {"x": x[i, :counts[i]]}), np.float64)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            ce = -logp[np.arange(counts[i]), np.asarray(y[i, :counts[i]])].mean()
            assert out["loss"][i, j] == pytest.approx(ce, rel=1e-5)
        assert out["barrier"][i] == pytest.approx(loss_barrier(out["t"], out["loss"][i]))
    np.testing.assert_allclose(out["forgetting"], out["loss"][:, -1] - out["loss"][:, 0])
    one = jax.tree.map(lambda p: p[:1], stacked)
    with pytest.raises(ValueError, match="at least two tasks"):
        forgetting_paths(model.logits_fn, one, {k: v[:1] for k, v in data.items()})


def _numpy_ce(model, params, x, y):
    z = np.asarray(model.logits_fn(params, {"x": x}), np.float64)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(y)), np.asarray(y)].mean()


def test_multitask_paths_against_a_point_by_point_loop():
    """Row t: the mean over tasks i ≤ t of task i's loss at (1 − s)·θ*_t + s·end, end the next
    continual solution or the multitask one, evaluated one point at a time in float64."""
    from cljax.analysis import multitask_paths
    from cljax.nn import MLP, as_model

    model = as_model(MLP((5,), 3))
    keys = jax.random.split(jax.random.key(3), 8)
    x = jax.random.normal(keys[0], (3, 8, 4))
    y = jax.random.randint(keys[1], (3, 8), 0, 3)
    data = {"x": x, "y": y, "task": jnp.zeros((3, 8), jnp.int32)}
    thetas = [model.init(k, {"x": x[0]}) for k in keys[2:5]]
    multi = [model.init(k, {"x": x[0]}) for k in keys[5:7]]
    stack = lambda ts: jax.tree.map(lambda *p: jnp.stack(p), *ts)
    counts = [8, 6, 7]
    out = multitask_paths(model.logits_fn, stack(thetas), stack(multi), data, counts=counts,
                          num_points=4, chunk_size=3)
    assert out["continual"].shape == out["multitask"].shape == (2, 4)
    for t in range(2):
        for kind, end in (("continual", thetas[t + 1]), ("multitask", multi[t])):
            for j, s in enumerate(out["t"]):
                params = jax.tree.map(lambda a, b, s=s: (1 - s) * a + s * b, thetas[t], end)
                want = np.mean([_numpy_ce(model, params, x[i, :counts[i]], y[i, :counts[i]])
                                for i in range(t + 1)])
                assert out[kind][t, j] == pytest.approx(want, rel=1e-5)
            assert out[f"barrier_{kind}"][t] == pytest.approx(
                loss_barrier(out["t"], out[kind][t]))
            assert out[f"rise_{kind}"][t] == pytest.approx(max(out[kind][t]) - out[kind][t][0])
    with pytest.raises(ValueError, match="T − 1 = 2 solutions"):
        multitask_paths(model.logits_fn, stack(thetas), stack(thetas), data)


def test_sharpness_paths_against_the_dense_hessian_at_each_point():
    """λ_max at each point of the path from θ*_i to θ*_T equals the largest eigenvalue of task
    i's dense Hessian there (jax.hessian of the flattened parameters, numpy eigvalsh), and the
    squared distances are ‖θ*_T − θ*_i‖²."""
    from jax.flatten_util import ravel_pytree

    from cljax.analysis import sharpness_paths

    model, x, y, data, thetas, stacked = _three_solutions(width=5, n=8, seed=4)
    counts = [8, 6, 7]
    flat, unravel = ravel_pytree(thetas[0])
    out = sharpness_paths(model.logits_fn, stacked, data, jax.random.key(0), counts=counts,
                          num_points=3, num_iters=flat.size, tol=None, chunk_size=3)
    assert out["lambda_max"].shape == (2, 3) and out["t"].tolist() == [0.0, 0.5, 1.0]
    for i in range(2):
        def loss(v, i=i):
            z = model.logits_fn(unravel(v), {"x": x[i, :counts[i]]})
            return optax.softmax_cross_entropy_with_integer_labels(z, y[i, :counts[i]]).mean()

        start, end = ravel_pytree(thetas[i])[0], ravel_pytree(thetas[2])[0]
        for j, t in enumerate(out["t"]):
            H = np.asarray(jax.hessian(loss)((1 - t) * start + t * end), np.float64)
            top = np.linalg.eigvalsh((H + H.T) / 2)[-1]
            assert out["lambda_max"][i, j] == pytest.approx(top, rel=1e-3, abs=1e-5)
        assert out["delta_sq_norm"][i] == pytest.approx(float(jnp.sum((end - start) ** 2)),
                                                        rel=1e-5)
    # λ_max at θ*_i given (the flatness analysis'): t = 0 takes it, the other points unchanged
    given = sharpness_paths(model.logits_fn, stacked, data, jax.random.key(0), counts=counts,
                            num_points=3, num_iters=flat.size, tol=None, chunk_size=3,
                            start_lambda_max=[7.0, 8.0, 9.0])
    assert given["lambda_max"][:, 0].tolist() == [7.0, 8.0]
    np.testing.assert_array_equal(given["lambda_max"][:, 1:], out["lambda_max"][:, 1:])
    for bad, match in (([1.0], "shape"), ([1.0, np.nan], "finite")):
        with pytest.raises(ValueError, match=match):
            sharpness_paths(model.logits_fn, stacked, data, jax.random.key(0), counts=counts,
                            start_lambda_max=bad)
    with pytest.raises(ValueError, match="num_points"):
        sharpness_paths(model.logits_fn, stacked, data, jax.random.key(0), num_points=1)
    from cljax.experiment import flatness_analysis
    for bad in (1, -2, True, 2.5):
        with pytest.raises(ValueError, match="path_sharpness"):
            flatness_analysis(model, None, stacked, runs=[0], seed=0, path_sharpness=bad)


def test_multitask_solutions_start_from_each_continual_solution():
    """With a zero learning rate the multitask solution ŵ_t+1 is θ*_t itself (bit for bit): it
    trains from θ*_t; with a positive one it moves, on the data of tasks ≤ t + 1."""
    from helpers import tiny_dataset

    from cljax.data import make_scenario, split_tasks
    from cljax.experiment import multitask_solutions
    from cljax.methods import get_method
    from cljax.nn import MLP, as_model
    from cljax.training import make_trainer, prepare_data

    s = split_tasks(tiny_dataset(num_classes=6, n=60), tiny_dataset(num_classes=6, n=30, seed=1),
                    tasks=[[0, 1], [2, 3], [4, 5]])
    sc = make_scenario(s, "domain")
    data = prepare_data(s, sc, eval_chunk=16)
    model = as_model(MLP((6,), sc.num_outputs))
    for lr in (0.0, 0.1):
        tr = make_trainer(model, get_method("ewc"), optimizer=optax.sgd(lr), batch_size=4)
        thetas = [tr.init(jax.random.key(k), {"strength": 1.0}, data).params for k in range(3)]
        stacked = jax.tree.map(lambda *p: jnp.stack(p), *thetas)
        out = multitask_solutions(tr, data, stacked, steps=5, key=jax.random.key(0))
        for t in range(2):
            moved = [float(jnp.max(jnp.abs(a[t] - b[t]))) for a, b in
                     zip(jax.tree.leaves(out), jax.tree.leaves(stacked))]
            assert (max(moved) == 0.0) == (lr == 0.0), (lr, t, moved)
    hat = make_trainer(model, get_method("hat"), optimizer=optax.sgd(0.1), batch_size=4)
    with pytest.raises(ValueError, match="one run's θ\\*_1 … θ\\*_T of the network"):
        multitask_solutions(hat, data, stacked, steps=2, key=jax.random.key(0))  # no gates
    with pytest.raises(ValueError, match="steps"):
        multitask_solutions(tr, data, stacked, steps=0, key=jax.random.key(0))
