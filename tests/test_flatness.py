"""Per-task flatness (λ_max, top-k, trace of H_t at θ*_t) against dense Hessians (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curvature_helpers import mean_ce, tiny_mlp
from jax.flatten_util import ravel_pytree

from cljax import analysis


def _tasks(num_heads=1):
    logits_fn, p0, _ = tiny_mlp(0, num_heads=num_heads)
    _, p1, _ = tiny_mlp(1, num_heads=num_heads)
    stack = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    data = []
    for t, n in enumerate((8, 5)):
        rng = np.random.default_rng(50 + t)
        b = {"x": jnp.asarray(rng.normal(size=(n, 5)), float),
             "y": jnp.asarray(rng.integers(0, 3, n))}
        if num_heads > 1:
            b["task"] = jnp.full((n,), t)
        data.append(b)
    return logits_fn, [p0, p1], stack, data


def _dense(logits_fn, params, batch):
    flat, unravel = ravel_pytree(params)
    h = jax.jit(jax.hessian(lambda f: mean_ce(logits_fn, batch)(unravel(f))))(flat)
    return np.linalg.eigvalsh(np.asarray(h))


@pytest.mark.parametrize("num_heads", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_flatness_matches_dense_eigenvalues(x64, num_heads):
    logits_fn, thetas, stack, data = _tasks(num_heads)
    res = analysis.flatness(logits_fn, stack, data, jax.random.key(2), k=3,
                            num_iters=ravel_pytree(thetas[0])[0].size, tol=1e-10, chunk_size=3,
                            trace_samples=200)
    assert res.top_eigenvalues.shape == (2, 3) and res.lambda_max.shape == (2,)
    for t in range(2):
        evals = _dense(logits_fn, thetas[t], data[t])
        np.testing.assert_allclose(res.top_eigenvalues[t], evals[::-1][:3], rtol=1e-6)
        np.testing.assert_allclose(res.lambda_max[t], evals.max(), rtol=1e-6)
        assert abs(res.trace[t] - evals.sum()) <= 4 * res.trace_stderr[t]
        np.testing.assert_allclose(res.loss[t], mean_ce(logits_fn, data[t])(thetas[t]),
                                   rtol=1e-10)
    assert np.all(np.isfinite(res.grad_norm)) and np.all(res.num_matvecs >= 3)


def test_stacked_input_with_counts_and_ggn(x64):
    logits_fn, thetas, stack, data = _tasks()
    n = 8
    stacked = {k: jnp.stack([jnp.pad(d[k], [(0, n - d[k].shape[0])] + [(0, 0)] * (d[k].ndim - 1))
                             for d in data]) for k in data[0]}
    a = analysis.flatness(logits_fn, stack, data, jax.random.key(3), num_iters=20, tol=None)
    b = analysis.flatness(logits_fn, stack, stacked, jax.random.key(3), counts=[8, 5],
                          num_iters=20, tol=None)
    np.testing.assert_allclose(a.top_eigenvalues, b.top_eigenvalues, rtol=1e-10)
    ggn = analysis.flatness(logits_fn, stack, data, jax.random.key(3), num_iters=20,
                            curvature="ggn")
    assert np.all(ggn.lambda_max > 0)
    json = analysis.to_json(ggn)
    assert json["trace"] == [None, None] and len(json["lambda_max"]) == 2


def test_validation_errors(x64):
    logits_fn, thetas, stack, data = _tasks()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="task_data has 1 tasks but params_per_task has 2"):
        analysis.flatness(logits_fn, stack, data[:1], key)
    with pytest.raises(ValueError, match="counts must lie"):
        stacked = {k: jnp.stack([data[0][k], data[0][k]]) for k in data[0]}
        analysis.flatness(logits_fn, stack, stacked, key, counts=[8, 9])
    with pytest.raises(ValueError, match="counts is only used"):
        analysis.flatness(logits_fn, stack, data, key, counts=[8, 5])
    with pytest.raises(ValueError, match="leading task axis of size 2"):
        analysis.flatness(logits_fn, stack, {"x": data[0]["x"], "y": data[0]["y"]}, key)
    with pytest.raises(ValueError, match="k must be <= num_iters"):
        analysis.flatness(logits_fn, stack, data, key, k=5, num_iters=4)
    with pytest.raises(ValueError, match="num_iters must be <= the dimension"):
        analysis.flatness(logits_fn, stack, data, key, num_iters=1000)
    with pytest.raises(ValueError, match="curvature"):
        analysis.flatness(logits_fn, stack, data, key, curvature="fisher")
    with pytest.raises(ValueError, match="trace_samples"):
        analysis.flatness(logits_fn, stack, data, key, trace_samples=-1)
    with pytest.raises(KeyError, match="'y'"):
        analysis.flatness(logits_fn, stack, [{"x": d["x"]} for d in data], key)
    with pytest.raises(TypeError, match="key"):
        analysis.flatness(logits_fn, stack, data, None)
    bad = [dict(data[0]), dict(data[1])]
    bad[1]["x"] = bad[1]["x"].at[0, 0].set(jnp.nan)
    with pytest.raises(FloatingPointError, match="task_data"):
        analysis.flatness(logits_fn, stack, bad, key)


def test_plot_flatness(tmp_path):
    from cljax.analysis import plots
    result = analysis.FlatnessResult(*(np.ones((3,)),) * 8)
    path = plots.plot_flatness({"naive": np.array([3.0, 5.0, 8.0]),
                                "stable": {"lambda_max": [1.0, 1.2, 1.1]},
                                "result": result, "list": [2.0, 2.5, 3.0]},
                               tmp_path / "flatness.png", log_scale=True)
    assert (tmp_path / "flatness.png").stat().st_size > 1000 and path.endswith("flatness.png")
    with pytest.raises(ValueError, match="runs"):
        plots.plot_flatness({}, tmp_path / "x.png")
