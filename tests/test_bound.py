"""Forgetting bound (seed 000 eq. 19–20): exact on a quadratic loss, consistent on a tiny MLP."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curvature_helpers import mean_ce, tiny_mlp
from jax.flatten_util import ravel_pytree

from cljax import analysis
from cljax.analysis import plots


def _least_squares_tasks(key, num_tasks=3, n=12, d=4, c=2):
    """Linear model, squared error: ℓ_t(W) = mean ½‖x W − target‖², θ*_t = least squares."""
    rng = np.random.default_rng(key)
    data, thetas = [], []
    for t in range(num_tasks):
        x = rng.normal(size=(n, d)) * (1 + t)
        target = rng.normal(size=(n, c))
        data.append({"x": jnp.asarray(x), "target": jnp.asarray(target)})
        thetas.append(np.linalg.lstsq(x, target, rcond=None)[0])
    params = {"w": jnp.asarray(np.stack(thetas))}
    logits_fn = lambda p, b: b["x"] @ p["w"]
    sq = lambda z, b: 0.5 * jnp.sum((z - b["target"]) ** 2, axis=-1)
    lam = [np.linalg.eigvalsh(d_["x"].T @ d_["x"] / n).max() for d_ in data]
    return logits_fn, params, data, sq, np.asarray(lam)


def test_exact_on_quadratic_loss(x64):
    logits_fn, params, data, sq, lam = _least_squares_tasks(0)
    res = analysis.forgetting_bound(logits_fn, params, data, jax.random.key(1), num_iters=8,
                                    tol=1e-10, per_example_loss=sq, chunk_size=5)
    np.testing.assert_allclose(res.lambda_max, lam, rtol=1e-8)
    assert list(zip(res.pair_i, res.pair_j)) == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose(res.measured, res.quadratic, rtol=1e-8)
    np.testing.assert_allclose(res.first_order, 0.0, atol=1e-10)
    assert np.all(res.quadratic <= res.bound * (1 + 1e-9)) and np.all(res.measured > 0)
    w = np.asarray(params["w"])
    for p, (i, j) in enumerate(zip(res.pair_i, res.pair_j)):
        np.testing.assert_allclose(res.bound[p], 0.5 * lam[i] * np.sum((w[j] - w[i]) ** 2),
                                   rtol=1e-8)
    assert res.summary["frac_measured_le_bound"] == 1.0
    np.testing.assert_allclose(res.summary["median_ratio_measured_to_quadratic"], 1.0, rtol=1e-8)
    assert np.all(np.isnan(res.accuracy))  # no labels
    # stacked input format gives the same numbers; lambda_max can be passed in
    stacked = {k: jnp.stack([d[k] for d in data]) for k in data[0]}
    res2 = analysis.forgetting_bound(logits_fn, params, stacked, lambda_max=lam,
                                     per_example_loss=sq)
    np.testing.assert_allclose(res2.measured, res.measured, rtol=1e-10)
    np.testing.assert_allclose(res2.bound, res.bound, rtol=1e-8)


def _perturbed_mlp(key, eps):
    logits_fn, params, _ = tiny_mlp(key)
    flat, unravel = ravel_pytree(params)
    rng = np.random.default_rng(7)
    d = jnp.asarray(rng.normal(size=flat.shape), float)
    thetas = [unravel(flat + t * eps * d) for t in range(3)]
    stack = jax.tree.map(lambda *p: jnp.stack(p), *thetas)
    data = []
    for n in (9, 6, 7):
        data.append({"x": jnp.asarray(rng.normal(size=(n, 5)), float),
                     "y": jnp.asarray(rng.integers(0, 3, n))})
    return logits_fn, thetas, stack, data


def test_tiny_mlp_against_dense_oracles(x64, tmp_path):
    logits_fn, thetas, stack, data = _perturbed_mlp(3, eps=1e-3)
    res = analysis.forgetting_bound(logits_fn, stack, data, jax.random.key(4), num_iters=39,
                                    tol=1e-10, chunk_size=4)
    _, unravel = ravel_pytree(thetas[0])

    @jax.jit
    def oracle(flat_i, flats, batch):
        loss = lambda f: mean_ce(logits_fn, batch)(unravel(f))
        acc = lambda f: jnp.mean(jnp.argmax(logits_fn(unravel(f), batch), -1) == batch["y"])
        return (jax.hessian(loss)(flat_i), jax.grad(loss)(flat_i), jax.vmap(loss)(flats),
                jax.vmap(acc)(flats))

    flats = jnp.stack([ravel_pytree(t)[0] for t in thetas])
    for i in range(3):
        h, g, losses, accs = map(np.asarray, oracle(flats[i], flats, data[i]))
        np.testing.assert_allclose(res.lambda_max[i], np.linalg.eigvalsh(h).max(), rtol=1e-6)
        np.testing.assert_allclose(res.losses[:, i], losses, rtol=1e-10)
        np.testing.assert_allclose(res.accuracy[:, i], accs)
        np.testing.assert_allclose(res.grad_norm[i], np.linalg.norm(g), rtol=1e-8)
        for p in np.flatnonzero(res.pair_i == i):
            j = res.pair_j[p]
            delta = np.asarray(ravel_pytree(thetas[j])[0] - ravel_pytree(thetas[i])[0])
            np.testing.assert_allclose(res.quadratic[p], 0.5 * delta @ h @ delta, rtol=1e-8)
            np.testing.assert_allclose(res.first_order[p], g @ delta, rtol=1e-8, atol=1e-14)
    # Taylor: measured = first order + quadratic + O(‖Δθ‖³)
    remainder = np.abs(res.measured - res.first_order - res.quadratic)
    assert np.all(remainder <= 0.05 * np.abs(res.quadratic)), (remainder, res.quadratic)
    payload = json.loads(json.dumps(analysis.to_json(res)))
    assert payload["summary"]["num_pairs"] == 3 and len(payload["measured"]) == 3
    out = plots.plot_bound(payload, tmp_path / "bound.png")
    assert (tmp_path / "bound.png").stat().st_size > 1000 and out.endswith("bound.png")


def test_summary_statistics():
    losses = np.array([[0.1, 2.0, 2.0], [0.5, 0.2, 2.0], [0.9, 0.4, 0.3]])
    s = analysis.summarize(measured=[0.4, 0.8, 0.2], quadratic=[0.3, 0.9, 0.1],
                           bound=[0.5, 0.7, 0.4], lambda_max=[3.0, 1.0, 2.0], losses=losses,
                           pair_i=[0, 0, 1], pair_j=[1, 2, 2])
    assert s["frac_measured_le_bound"] == pytest.approx(2 / 3)
    assert s["frac_quadratic_le_bound"] == pytest.approx(2 / 3)
    assert s["median_ratio_measured_to_bound"] == pytest.approx(0.8)
    np.testing.assert_allclose(s["final_forgetting"], [0.8, 0.2])
    assert s["pearson_lambda_max_forgetting"] == pytest.approx(1.0)  # two points
    assert s["spearman_measured_bound"] == pytest.approx(1.0)
    assert analysis.spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert analysis.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(np.corrcoef([1, 2, 3],
                                                                               [2, 4, 7])[0, 1])
    assert np.isnan(analysis.pearson([1, 1, 1], [1, 2, 3]))
    assert analysis.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert analysis.to_json({"a": np.array([1.0, np.nan])}) == {"a": [1.0, None]}


def test_validation_errors(x64):
    logits_fn, thetas, stack, data = _perturbed_mlp(3, eps=1e-2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="task_data has 2 tasks but params_per_task has 3"):
        analysis.forgetting_bound(logits_fn, stack, data[:2], key)
    one = jax.tree.map(lambda a: a[:1], stack)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        analysis.forgetting_bound(logits_fn, one, data[:1], key)
    with pytest.raises(ValueError, match="lambda_max must have shape"):
        analysis.forgetting_bound(logits_fn, stack, data, lambda_max=[1.0, 2.0])
    with pytest.raises(TypeError, match="key is required"):
        analysis.forgetting_bound(logits_fn, stack, data)
    with pytest.raises(ValueError, match="same leading"):
        bad = dict(stack)
        bad["Dense_0"] = {"kernel": stack["Dense_0"]["kernel"][:2],
                          "bias": stack["Dense_0"]["bias"]}
        analysis.forgetting_bound(logits_fn, bad, data, key)
    nan_stack = jax.tree.map(lambda a: a.at[0].set(jnp.nan), stack)
    with pytest.raises(FloatingPointError, match="params_per_task"):
        analysis.forgetting_bound(logits_fn, nan_stack, data, key)
    with pytest.raises(FloatingPointError, match="lambda_max"):
        analysis.forgetting_bound(logits_fn, stack, data, lambda_max=[1.0, np.nan, 2.0])
