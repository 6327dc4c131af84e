"""Tests for cljax.transforms.rgo and cljax.nn.fel (RGO, Liu & Liu 2022)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

from cljax.layers import capture_rows, mean_rows
from cljax.nn import MLP, as_model
from cljax.nn.conv import Conv
from cljax.nn.fel import FeatureEncoding, task_permutations
from cljax.nn.resnet import BatchStatNorm
from cljax.transforms import (
    RGOState,
    init_rgo,
    rgo_accumulate,
    rgo_consolidate,
    rgo_projection,
    rgo_value_and_grad,
)
from cljax.transforms.rgo import normalised_projection, sherman_morrison, step_rows, woodbury


def test_recursive_inverse_equals_the_direct_inverse(x64):
    rng = np.random.default_rng(0)
    n, alpha = 6, 1.0
    rows = rng.normal(size=(40, n))
    params = {"Dense_0": {"kernel": jnp.zeros((n - 1, 3)), "bias": jnp.zeros(3)}}
    state = init_rgo(params, alpha=alpha)
    for r in rows:
        state = rgo_accumulate(state, {"Dense_0": jnp.asarray(r)})
    direct = np.linalg.inv(alpha * np.eye(n) + rows.T @ rows)
    np.testing.assert_allclose(state.running["Dense_0"], direct, rtol=1e-8, atol=1e-10)
    state = rgo_consolidate(state)
    p = np.asarray(state.projection["Dense_0"])
    np.testing.assert_allclose(np.trace(p), n, rtol=1e-12)               # Theorem 1
    np.testing.assert_allclose(p, p.T, atol=1e-14)
    assert np.linalg.eigvalsh(p).min() > 0                                # SPD
    np.testing.assert_allclose(p, n / np.trace(direct) * direct, rtol=1e-8)
    np.testing.assert_allclose(sherman_morrison(jnp.eye(2), jnp.array([1.0, 0.0])),
                               np.diag([0.5, 1.0]))


def _toy(key):
    model = as_model(MLP((), 1, use_bias=True))                 # linear regression y = xW + b
    params = model.init(key, {"x": jnp.ones((1, 4))})
    return model, params


def test_no_past_task_is_plain_sgd_and_fused_equals_transform():
    model, params = _toy(jax.random.key(0))
    state = init_rgo(params)
    assert all(np.array_equal(p, np.eye(p.shape[0])) for p in state.projection.values())
    x = jax.random.normal(jax.random.key(1), (8, 4))
    y = jax.random.normal(jax.random.key(2), (8, 1))
    loss = lambda p: jnp.mean((model.logits_fn(p, {"x": x}) - y) ** 2)
    g = jax.grad(loss)(params)
    projected, _ = rgo_projection().update(g, optax.EmptyState(), params, rgo_state=state)
    assert_trees_close(projected, g, rtol=0, atol=0)
    # after a task: the fused backward-pass projection equals projecting the finished gradient
    for i in range(20):
        xi = jax.random.normal(jax.random.fold_in(jax.random.key(3), i), (8, 4))
        _, rows = capture_rows(model.logits_fn, params, {"x": xi})
        state = rgo_accumulate(state, mean_rows(rows))
    state = rgo_consolidate(state)
    value, fused, rows = rgo_value_and_grad(loss, state, params)
    plain, _ = rgo_projection().update(g, optax.EmptyState(), params, rgo_state=state)
    assert_trees_close(fused, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value, loss(params), rtol=1e-6)
    np.testing.assert_allclose(rows["Dense_0"][:4], x.mean(0), rtol=1e-6)  # the mean rows


def test_input_scale_is_one_alpha_for_every_layer_of_a_bias_free_relu_mlp(x64):
    """A bias-free ReLU MLP is positively homogeneous, so scaling the input by c scales every
    layer's mean row by exactly c at any θ; RGO's projections from inputs c·x and α·c² then equal
    those from x and α in every layer: the scale leaves no per-layer imbalance for a per-layer
    α to correct (RESULTS.md, RGO on GPM's standardised pixels)."""
    model = as_model(MLP((16, 16), 5, use_bias=False))
    x = jax.random.uniform(jax.random.key(0), (12, 8, 10))
    params = model.init(jax.random.key(1), {"x": x[0]})
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    c, alpha = 1 / 0.3081, 1.0

    def projections(scale, a):
        state = init_rgo(params, alpha=a)
        for xb in x:
            _, rows = capture_rows(model.logits_fn, params, {"x": scale * xb})
            state = rgo_accumulate(state, mean_rows(rows))
        return rgo_consolidate(state).projection

    plain, scaled, scaled_same_alpha = (projections(1.0, alpha), projections(c, alpha * c**2),
                                        projections(c, alpha))
    assert sorted(plain) == ["Dense_0", "Dense_1", "Dense_2"]
    for name in plain:
        np.testing.assert_allclose(scaled[name], plain[name], rtol=1e-9, atol=1e-12)
        assert not np.allclose(scaled_same_alpha[name], plain[name], rtol=1e-3)


@pytest.mark.slow     # ≈ 8 s cold; RGO's contract rows and goldens run by default
def test_two_task_regression_forgets_far_less_than_sgd():
    """Two linear regressions whose (nonnegative, like pixels or ReLU features) inputs scatter
    around different means: RGO's projection, built from per-step mean inputs, keeps task 1's
    fit while learning task 2; SGD does not."""
    rng = np.random.default_rng(0)
    means = np.abs(rng.normal(size=(2, 6))) + np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    w1, w2 = rng.normal(size=(6, 1)), rng.normal(size=(6, 1))

    def data(t, n):
        z = means[t] * (1 + 0.2 * rng.normal(size=(n, 6)))
        return jnp.asarray(z, jnp.float32), jnp.asarray(z @ (w1 if t == 0 else w2), jnp.float32)

    (x1, y1), (x2, y2) = data(0, 256), data(1, 256)
    model = as_model(MLP((), 1, use_bias=False))
    params0 = model.init(jax.random.key(0), {"x": x1[:1]})
    mse = lambda p, x, y: jnp.mean((model.logits_fn(p, {"x": x}) - y) ** 2)
    tx = optax.sgd(0.05)

    def train(params, x, y, state, use_rgo):
        opt = tx.init(params)
        for i in range(300):
            b = slice((16 * i) % 240, (16 * i) % 240 + 16)
            if use_rgo:
                _, g, rows = rgo_value_and_grad(mse, state, params, x[b], y[b])
                state = rgo_accumulate(state, rows)
            else:
                g = jax.grad(mse)(params, x[b], y[b])
            u, opt = tx.update(g, opt, params)
            params = optax.apply_updates(params, u)
        return params, state

    forgetting = {}
    for use_rgo in (False, True):
        state = init_rgo(params0)
        p1, state = train(params0, x1, y1, state, use_rgo)
        state = rgo_consolidate(state)
        p2, _ = train(p1, x2, y2, state, use_rgo)
        forgetting[use_rgo] = float(mse(p2, x1, y1) - mse(p1, x1, y1))
        assert float(mse(p2, x2, y2)) < 0.5 * float(mse(p1, x2, y2))      # task 2 is learnt
    assert forgetting[True] < 0.2 * forgetting[False], forgetting


def test_feature_encoding_layer():
    perms = np.asarray(task_permutations(5, 7, seed=3))
    for p in perms:
        assert sorted(p.tolist()) == list(range(7))                      # a bijection per task
    assert len({tuple(p) for p in perms}) == 5                            # different across tasks
    np.testing.assert_array_equal(perms, task_permutations(5, 7, seed=3))  # the same every call
    fel = FeatureEncoding(5, seed=3)
    x = jnp.arange(14.0).reshape(2, 7)
    variables = fel.init(jax.random.key(0), x, jnp.array([0, 4]))
    assert variables == {} or not jax.tree.leaves(variables)              # no parameters
    out = fel.apply(variables, x, jnp.array([0, 4]))
    np.testing.assert_array_equal(out[0], x[0][perms[0]])
    np.testing.assert_array_equal(out[1], x[1][perms[4]])
    g = jax.grad(lambda v: jnp.sum(fel.apply(variables, v, jnp.array([1, 2])) * jnp.arange(7.0)))(x)
    np.testing.assert_array_equal(g[0][perms[1]], np.arange(7.0))         # gradients flow
    model = as_model(MLP((6,), 2, feature_encoding=3))
    p = model.init(jax.random.key(0), {"x": jnp.ones((2, 4)), "task": jnp.zeros(2, jnp.int32)})
    assert set(p) == {"Dense_0", "Dense_1"}
    with pytest.raises(ValueError, match="task"):
        model.logits_fn(p, {"x": jnp.ones((2, 4))})


def test_rgo_bad_inputs():
    params = {"Dense_0": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match="alpha"):
        init_rgo(params, alpha=0.0)
    s = init_rgo(params)
    with pytest.raises(ValueError, match="lacks the mean rows"):
        rgo_accumulate(s, {})
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        rgo_accumulate(s, {"Dense_0": jnp.ones(3)})
    with pytest.raises(TypeError, match="RGOState"):
        rgo_consolidate({})
    with pytest.raises(ValueError, match="rgo_state"):
        rgo_projection().update(params, optax.EmptyState(), params)
    with pytest.raises(FloatingPointError, match="running"):
        rgo_consolidate(RGOState({"Dense_0": jnp.full((4, 4), jnp.nan)}, s.projection, s.count))
    with pytest.raises(ValueError, match="feature_encoding"):
        MLP((4,), 2, feature_encoding=-1)
    assert normalised_projection(2 * jnp.eye(3)).trace() == pytest.approx(3.0)


def test_rank_k_rows_equal_the_direct_inverse(x64):
    """Rows given k at a time (a Woodbury update per step) reach the same (αI + Σ a aᵀ)⁻¹ as one
    Sherman–Morrison update per row."""
    rng = np.random.default_rng(1)
    n, k, alpha = 5, 4, 0.5
    rows = rng.normal(size=(7, k, n))
    params = {"Dense_0": {"kernel": jnp.zeros((n - 1, 2)), "bias": jnp.zeros(2)}}
    by_block, by_row = init_rgo(params, alpha=alpha), init_rgo(params, alpha=alpha)
    for block in rows:
        by_block = rgo_accumulate(by_block, {"Dense_0": jnp.asarray(block)})
        for r in block:
            by_row = rgo_accumulate(by_row, {"Dense_0": jnp.asarray(r)})
    flat = rows.reshape(-1, n)
    direct = np.linalg.inv(alpha * np.eye(n) + flat.T @ flat)
    np.testing.assert_allclose(by_block.running["Dense_0"], direct, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(by_row.running["Dense_0"], direct, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(woodbury(jnp.eye(2), jnp.array([[1.0, 0.0], [1.0, 0.0]])),
                               np.diag([1 / 3, 1.0]))


class _ConvNorm(nn.Module):
    """conv → batch-statistics BatchNorm → dense: one parameter node outside the projected
    layers (the BatchNorm's scale and bias)."""

    @nn.compact
    def __call__(self, x, task=None, *, train=False, output="logits"):
        del task, train, output
        x = nn.relu(BatchStatNorm()(Conv(3, (3, 3), padding="SAME", use_bias=False)(x)))
        return nn.Dense(2)(x.reshape(x.shape[0], -1))


def test_example_rows_and_frozen_other_params():
    model = as_model(_ConvNorm())
    x = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))
    y = jnp.array([0, 1, 0, 1, 1, 0])
    params = model.init(jax.random.key(1), {"x": x})
    assert sorted(params) == ["BatchStatNorm_0", "Conv_0", "Dense_0"]
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.logits_fn(p, {"x": x}), y).mean()
    plain = jax.grad(loss)(params)
    state = init_rgo(params)
    # before any consolidation, "freeze" trains everything: the plain gradient, P = I
    _, g, mean_step = rgo_value_and_grad(loss, state, params, other_params="freeze")
    assert_trees_close(g, plain, rtol=1e-6, atol=1e-7)
    _, _, ex_rows = rgo_value_and_grad(loss, state, params, rows="example")
    _, captured = capture_rows(model.logits_fn, params, {"x": x})
    assert ex_rows["Conv_0"].shape == (6, 18) and ex_rows["Dense_0"].shape == (6, 49)
    np.testing.assert_allclose(ex_rows["Conv_0"], captured["Conv_0"][0].mean(1), rtol=1e-6)
    for name in mean_step:   # equal positions per example: the step's mean of the examples' means
        np.testing.assert_allclose(ex_rows[name].mean(0), mean_step[name], rtol=1e-5, atol=1e-7)
    state = rgo_consolidate(rgo_accumulate(state, ex_rows))
    trained = rgo_value_and_grad(loss, state, params)[1]
    frozen = rgo_value_and_grad(loss, state, params, other_params="freeze")[1]
    assert float(jnp.abs(trained["BatchStatNorm_0"]["scale"]).max()) > 0
    assert all(float(jnp.abs(v).max()) == 0 for v in frozen["BatchStatNorm_0"].values())
    for name in ("Conv_0", "Dense_0"):       # the projected layers are unchanged by the option
        assert_trees_close(frozen[name], trained[name], rtol=0, atol=0)
    # the finished-gradient transform freezes the same parameters
    unfused, _ = rgo_projection(other_params="freeze").update(plain, optax.EmptyState(), params,
                                                              rgo_state=state)
    assert_trees_close(unfused, frozen, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="rows must be one of"):
        rgo_value_and_grad(loss, state, params, rows="batch")
    with pytest.raises(ValueError, match="other_params must be one of"):
        rgo_projection(other_params="fix")
    with pytest.raises(ValueError, match=r"shape \(18,\) or \(k, 18\)"):
        rgo_accumulate(state, {**ex_rows, "Conv_0": jnp.ones((2, 3, 19))})
    assert_trees_close(step_rows(captured, "example"), ex_rows, rtol=1e-6, atol=0)
    assert_trees_close(step_rows(captured), step_rows(captured, "step"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="rows must be one of"):
        step_rows(captured, "batch")
    with pytest.raises(ValueError, match=r"a must be \[k, 18\]"):
        woodbury(jnp.eye(18), jnp.ones(18))


def test_moment_rows_equal_the_direct_inverse_of_the_second_moments(x64):
    """rows="moment": H̄ = αI + Σ_steps (1/n) Σ_i x_i x_iᵀ over every step of the past tasks,
    folded into Q at each task's end, equals the dense inverse; P is its normalisation."""
    rng = np.random.default_rng(2)
    n, alpha = 5, 0.7
    tasks = [rng.normal(size=(3, 8, n)), rng.normal(size=(4, 6, n)) + 1.0]   # steps × rows × n
    params = {"Dense_0": {"kernel": jnp.zeros((n - 1, 2)), "bias": jnp.zeros(2)}}
    state = init_rgo(params, alpha=alpha, moment=True)
    h = alpha * np.eye(n)
    for steps in tasks:
        for block in steps:
            state = rgo_accumulate(state, {"Dense_0": jnp.asarray(block)})
            h += block.T @ block / len(block)
        # within a task Q is not touched (P stays frozen); the task's sum waits in `moment`
        np.testing.assert_allclose(state.moment["Dense_0"] + np.linalg.inv(state.running["Dense_0"]),
                                   h, rtol=1e-8, atol=1e-10)
        state = rgo_consolidate(state)
        direct = np.linalg.inv(h)
        np.testing.assert_allclose(state.running["Dense_0"], direct, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(state.projection["Dense_0"], n / np.trace(direct) * direct,
                                   rtol=1e-8, atol=1e-10)
        np.testing.assert_array_equal(state.moment["Dense_0"], 0.0)
    # one row a step: the second moment is that row's outer product, as the mean-row recursion
    rows = rng.normal(size=(6, n))
    by_moment, by_row = init_rgo(params, moment=True), init_rgo(params)
    for r in rows:
        by_moment = rgo_accumulate(by_moment, {"Dense_0": jnp.asarray(r[None])})
        by_row = rgo_accumulate(by_row, {"Dense_0": jnp.asarray(r)})
    np.testing.assert_allclose(rgo_consolidate(by_moment).projection["Dense_0"],
                               rgo_consolidate(by_row).projection["Dense_0"], rtol=1e-8)


def test_moment_rows_of_a_conv_are_its_patches_second_moment():
    """On a conv + dense model the step's rows for rows="moment" are every patch of every
    example (the K-FAC A factor's rows); a jitted step with them matches the eager one."""
    model = as_model(_ConvNorm())
    x = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))
    y = jnp.array([0, 1, 0, 1, 1, 0])
    params = model.init(jax.random.key(1), {"x": x})
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.logits_fn(p, {"x": x}), y).mean()
    _, captured = capture_rows(model.logits_fn, params, {"x": x})
    _, _, rows = rgo_value_and_grad(loss, init_rgo(params, moment=True), params, rows="moment")
    assert rows["Conv_0"].shape == (6 * 16, 18) and rows["Dense_0"].shape == (6, 49)
    patches = np.asarray(captured["Conv_0"][0]).reshape(-1, 18)
    np.testing.assert_allclose(rows["Conv_0"], patches, rtol=1e-6)
    np.testing.assert_allclose(mean_rows(captured)["Conv_0"], patches.mean(0), rtol=1e-5)
    state = init_rgo(params, moment=True)
    eager = rgo_accumulate(state, rows)
    jitted = jax.jit(rgo_accumulate)(state, rows)
    np.testing.assert_allclose(eager.moment["Conv_0"], patches.T @ patches / len(patches),
                               rtol=1e-5, atol=1e-6)
    assert_trees_close(jitted.moment, eager.moment, rtol=1e-6, atol=1e-7)
    assert_trees_close(jitted.running, state.running, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"shape \(k, 18\) \(every row of the step\)"):
        rgo_accumulate(state, {**rows, "Conv_0": jnp.ones(18)})
    with pytest.raises(TypeError, match="moment must be a bool"):
        init_rgo(params, moment="yes")
    with pytest.raises(FloatingPointError, match="moment"):
        rgo_consolidate(eager._replace(moment={**eager.moment,
                                               "Conv_0": jnp.full((18, 18), jnp.nan)}))


def test_alpha_scale_is_the_owm_projector(x64):
    """scale="alpha": P = α(αI + Σ)⁻¹ = I − Σ(Σ + αI)⁻¹ (OWM, Zeng et al. 2019) against a dense
    inverse; eigenvalues in (0, 1], P = I before any rows; the trace scaling of the same Q."""
    rng = np.random.default_rng(3)
    n, alpha = 5, 0.3
    rows = rng.normal(size=(7, n)) * np.array([3.0, 2.0, 1.0, 0.1, 0.01])
    params = {"Dense_0": {"kernel": jnp.zeros((n - 1, 2)), "bias": jnp.zeros(2)}}
    state = init_rgo(params, alpha=alpha)
    fresh = rgo_consolidate(state, scale="alpha", alpha=alpha)
    np.testing.assert_allclose(fresh.projection["Dense_0"], np.eye(n), atol=1e-14)
    for r in rows:
        state = rgo_accumulate(state, {"Dense_0": jnp.asarray(r)})
    p = np.asarray(rgo_consolidate(state, scale="alpha", alpha=alpha).projection["Dense_0"])
    sigma = rows.T @ rows
    np.testing.assert_allclose(p, np.eye(n) - sigma @ np.linalg.inv(sigma + alpha * np.eye(n)),
                               rtol=1e-8, atol=1e-10)
    eig = np.linalg.eigvalsh(p)
    assert eig.min() > 0 and eig.max() <= 1 + 1e-12
    trace = np.asarray(rgo_consolidate(state).projection["Dense_0"])
    np.testing.assert_allclose(trace, n / np.trace(p) * p, rtol=1e-8)
    with pytest.raises(ValueError, match="needs alpha"):
        rgo_consolidate(state, scale="alpha")
    with pytest.raises(ValueError, match="scale"):
        rgo_consolidate(state, scale="owm")
    with pytest.raises(ValueError, match="alpha"):
        rgo_consolidate(state, scale="alpha", alpha=-1.0)
    from cljax.methods import get_method
    with pytest.raises(ValueError, match="scale"):
        get_method("rgo", scale="none")
