"""Tests for cljax.transforms.stiefel: the Cayley retraction of ORTHOG-SUBSPACE (Chaudhry et al.
2020) against dense numpy oracles, and orthonormality over many steps."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

from cljax.nn import MLP, as_model
from cljax.transforms import cayley_update, gram_error, orthonormalize, stiefel_retraction
from cljax.transforms.stiefel import kernel_names, selected_kernels, skew_generator


def _orthonormal(rng, rows, cols):
    q = np.linalg.qr(rng.normal(size=(max(rows, cols), min(rows, cols))))[0]
    return q if rows >= cols else q.T


def _dense_cayley(w, direction, *, clamp=True):
    """The closed-form Cayley transform with a matrix inverse (float64 numpy): A from
    G = −direction, τ = min(1, 1/(‖A‖₁ + 1e-8)), Y = (I + τA/2)⁻¹ (I − τA/2) W."""
    g = -direction
    g_hat = g - 0.5 * w @ (w.T @ g)
    a = g_hat @ w.T - w @ g_hat.T
    tau = min(1.0, 1.0 / (np.abs(a).sum(axis=0).max() + 1e-8)) if clamp else 1.0
    eye = np.eye(w.shape[0])
    return np.linalg.inv(eye + tau / 2 * a) @ (eye - tau / 2 * a) @ w


def _their_step(w, grad, lr, iterations=2):
    """Their ``create_stiefel_ops`` (STIEFEL_INNP_EUC), transcribed: the raw gradient, the step
    α = min(lr, 1/(‖A‖₁ + 1e-8)), Y₀ = W − αAW, then Y_{k+1} = W − αA(W + Y_k)/2."""
    gxt = grad @ w.T
    a_hat = gxt - 0.5 * w @ (w.T @ gxt)
    a = a_hat - a_hat.T
    alpha = min(lr, 0.5 * 2 / (np.abs(a).sum(axis=1).max() + 1e-8))
    y = w - alpha * a @ w
    for _ in range(iterations):
        y = w - alpha * a @ (0.5 * (w + y))
    return y


@pytest.mark.parametrize("rows,cols", [(50, 10), (30, 20), (20, 20), (10, 30)])
@pytest.mark.parametrize("scale", [1e-3, 0.1, 10.0])
def test_closed_form_equals_the_dense_oracle(rows, cols, scale):
    """Both solve paths (rows ≤ 2·cols: rows × rows; rows > 2·cols: Woodbury) and a wide kernel,
    unclamped (small steps) and clamped (scale 10), against the inverse-based closed form."""
    rng = np.random.default_rng(rows + cols)
    w = _orthonormal(rng, rows, cols)
    d = rng.normal(size=(rows, cols)) * scale
    got = w + np.asarray(cayley_update(jnp.asarray(w, jnp.float32), jnp.asarray(d, jnp.float32)),
                         np.float64)
    np.testing.assert_allclose(got, _dense_cayley(w, d), atol=3e-7)


def test_closed_form_in_float64_and_without_clamp(x64):
    rng = np.random.default_rng(0)
    for rows, cols in [(40, 8), (12, 9)]:
        w = _orthonormal(rng, rows, cols)
        d = rng.normal(size=(rows, cols))
        for clamp in (True, False):
            got = w + np.asarray(cayley_update(jnp.asarray(w), jnp.asarray(d), clamp=clamp))
            np.testing.assert_allclose(got, _dense_cayley(w, d, clamp=clamp), atol=1e-12)
            np.testing.assert_allclose(got.T @ got, np.eye(cols), atol=1e-12)


def test_skew_generator_is_their_euclidean_metric_matrix(x64):
    rng = np.random.default_rng(1)
    w, g = _orthonormal(rng, 9, 4), rng.normal(size=(9, 4))
    a = np.asarray(skew_generator(jnp.asarray(w), jnp.asarray(-g)))
    a_hat = g @ w.T - 0.5 * w @ (w.T @ g @ w.T)
    np.testing.assert_allclose(a, a_hat - a_hat.T, atol=1e-13)
    np.testing.assert_allclose(a, -a.T, atol=0)


@pytest.mark.parametrize("lr", [1e-2, 0.4, 50.0])
def test_iterations_after_sgd_are_their_step(lr, x64):
    """``chain(sgd(lr), stiefel_retraction(iterations=2))`` is their TensorFlow update (the clamp
    binds at lr 50); many iterations converge to the closed form."""
    rng = np.random.default_rng(2)
    w, g = _orthonormal(rng, 12, 5), rng.normal(size=(12, 5))
    params, grads = {"Dense_0": {"kernel": jnp.asarray(w)}}, {"Dense_0": {"kernel": jnp.asarray(g)}}
    tx = optax.chain(optax.sgd(lr), stiefel_retraction(iterations=2))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(w + np.asarray(updates["Dense_0"]["kernel"]),
                               _their_step(w, g, lr), rtol=1e-7, atol=1e-8 * lr)
    many = cayley_update(jnp.asarray(w), jnp.asarray(-lr * g), iterations=200)
    np.testing.assert_allclose(w + np.asarray(many), _dense_cayley(w, -lr * g), atol=1e-12)


def test_kernels_stay_orthonormal_over_200_training_steps():
    """An MLP trained 200 steps (SGD lr 0.5, large steps: the clamp binds at times) with its two
    hidden kernels on the manifold: WᵀW = I to 1e-5; the output layer and the biases take plain
    SGD steps, exactly."""
    model = as_model(MLP((64, 32), 10))
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(200, 16, 100)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=(200, 16)))
    params = model.init(jax.random.key(0), {"x": x[0]})
    params = {k: ({**v, "kernel": orthonormalize(v["kernel"])} if k != "Dense_2" else v)
              for k, v in params.items()}
    tx = optax.chain(optax.sgd(0.5), stiefel_retraction(["Dense_0", "Dense_1"]))

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(
            model.logits_fn(p, {"x": xb}), yb).mean()

    @jax.jit
    def step(p, s, xb, yb):
        g = jax.grad(loss)(p, xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, g, u

    state = tx.init(params)
    for i in range(200):
        params, state, g, u = step(params, state, x[i], y[i])
    for name in ("Dense_0", "Dense_1"):
        assert float(gram_error(params[name]["kernel"])) < 1e-5, name
    assert float(gram_error(params["Dense_2"]["kernel"])) > 0.1
    plain = {"Dense_2": g["Dense_2"], "Dense_0": {"bias": g["Dense_0"]["bias"]}}
    assert_trees_close({"Dense_2": u["Dense_2"], "Dense_0": {"bias": u["Dense_0"]["bias"]}},
                       jax.tree.map(lambda t: -0.5 * t, plain), rtol=0, atol=0)


def test_a_wide_kernel_keeps_its_orthonormal_rows():
    rng = np.random.default_rng(4)
    w = jnp.asarray(_orthonormal(rng, 6, 15), jnp.float32)
    gram = np.asarray(w.T @ w)
    for _ in range(50):
        w = w + cayley_update(w, jnp.asarray(rng.normal(size=(6, 15)), jnp.float32))
    assert float(gram_error(w)) < 1e-5                                     # W Wᵀ = I
    np.testing.assert_allclose(np.asarray(w.T @ w), gram, atol=1e-5)       # WᵀW kept


def test_conv_kernels_are_matrices_of_their_input_patches():
    """A conv kernel [h, w, in, out] is the matrix [h·w·in, out], as their ``[-1, out]``."""
    rng = np.random.default_rng(5)
    w = orthonormalize(jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32))
    assert w.shape == (3, 3, 4, 8) and float(gram_error(w)) < 2e-6
    d = jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32)
    flat = cayley_update(w.reshape(36, 8), d.reshape(36, 8))
    np.testing.assert_array_equal(cayley_update(w, d).reshape(36, 8), flat)


def test_orthonormalize():
    rng = np.random.default_rng(6)
    for shape in [(30, 30), (50, 7), (5, 12)]:
        w = jnp.asarray(rng.normal(size=shape), jnp.float32)
        assert float(gram_error(orthonormalize(w))) < 2e-6, shape
    q = jax.nn.initializers.orthogonal()(jax.random.key(0), (40, 16))
    np.testing.assert_array_equal(orthonormalize(q), q)        # already on the manifold: kept
    # the Q of the QR with diag R > 0: span and orientation of the columns kept
    w = jnp.asarray(rng.normal(size=(20, 4)), jnp.float32)
    r = np.asarray(orthonormalize(w)).T @ np.asarray(w)
    np.testing.assert_allclose(np.tril(r, -1), 0, atol=1e-5)
    assert np.all(np.diag(r) > 0)


def test_vmapped_updates_equal_separate_ones():
    """The Cayley update and the orthonormalisation under vmap (their solves and QRs looped on
    the CPU, tests/test_linalg.py) equal the unbatched calls."""
    rng = np.random.default_rng(7)
    ws = jnp.asarray(np.stack([_orthonormal(rng, 30, 10) for _ in range(3)]), jnp.float32)
    ds = jnp.asarray(rng.normal(size=(3, 30, 10)), jnp.float32)
    for rows in (30, 12):        # the Woodbury solve, then the rows × rows one
        batched = jax.jit(jax.vmap(cayley_update))(ws[:, :rows], ds[:, :rows])
        for i in range(3):
            np.testing.assert_allclose(batched[i], cayley_update(ws[i, :rows], ds[i, :rows]),
                                       rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.vmap(orthonormalize)(ds)[1], orthonormalize(ds[1]),
                               rtol=1e-5, atol=1e-6)


def test_layer_selection_and_errors():
    model = as_model(MLP((8, 8), 3))
    params = model.init(jax.random.key(0), {"x": jnp.ones((1, 5))})
    assert kernel_names(params) == ["Dense_0", "Dense_1", "Dense_2"]
    assert selected_kernels(params, lambda p: ["Dense_1"]) == ["Dense_1"]
    with pytest.raises(ValueError, match="hold no kernel"):
        selected_kernels(params, ["Dense_9"])
    with pytest.raises(TypeError, match="sequence of layer names"):
        stiefel_retraction("Dense_0")
    tx = stiefel_retraction()
    with pytest.raises(ValueError, match="requires the current parameters"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="must be a positive int"):
        stiefel_retraction(iterations=0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        cayley_update(jnp.ones(3), jnp.ones(3))
    # every leaf not selected passes through, extra arguments are ignored
    only = stiefel_retraction(["Dense_1"])
    updates, _ = only.update(params, only.init(params), params, task=jnp.int32(0))
    assert_trees_close({k: v for k, v in updates.items() if k != "Dense_1"},
                       {k: v for k, v in params.items() if k != "Dense_1"}, rtol=0, atol=0)
    np.testing.assert_array_equal(updates["Dense_1"]["bias"], params["Dense_1"]["bias"])
