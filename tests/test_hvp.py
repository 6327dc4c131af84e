"""Hessian / GGN-vector products against dense oracles (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curvature_helpers import (
    dense_ggn,
    dense_hessian,
    flat_vec,
    linear_model,
    mean_ce,
    random_like,
    tiny_mlp,
)

from cljax import curvature as cv


@pytest.mark.parametrize("num_heads", [1, 2])
def test_hvp_matches_dense_hessian(x64, num_heads):
    logits_fn, params, batch = tiny_mlp(0, num_heads=num_heads)
    loss = mean_ce(logits_fn, batch)
    h = dense_hessian(loss, params)
    for s in range(3):
        v = random_like(10 + s, params)
        np.testing.assert_allclose(flat_vec(cv.hvp(loss, params, v)), h @ flat_vec(v),
                                   rtol=1e-10, atol=1e-12)


def test_ggn_vp_matches_dense_ggn_and_is_psd(x64):
    logits_fn, params, batch = tiny_mlp(1, n=9)
    g = dense_ggn(logits_fn, params, batch)
    assert np.linalg.eigvalsh(g).min() > -1e-12
    v = random_like(2, params)
    gv = flat_vec(cv.ggn_vp(logits_fn, params, batch, v))
    np.testing.assert_allclose(gv, g @ flat_vec(v), rtol=1e-10, atol=1e-12)
    assert gv @ flat_vec(v) >= 0
    # GGN differs from the Hessian for a nonlinear net
    h = dense_hessian(mean_ce(logits_fn, batch), params)
    assert np.abs(h - g).max() > 1e-4


def test_hessian_equals_ggn_for_linear_model(x64):
    logits_fn, params, batch = linear_model(3)
    loss = mean_ce(logits_fn, batch)
    for s in range(2):
        v = random_like(20 + s, params)
        np.testing.assert_allclose(flat_vec(cv.hvp(loss, params, v)),
                                   flat_vec(cv.ggn_vp(logits_fn, params, batch, v)),
                                   rtol=1e-10, atol=1e-12)


def test_ggn_custom_loss_uses_its_output_hessian(x64):
    logits_fn, params, batch = tiny_mlp(4)
    v = random_like(5, params)
    custom = cv.ggn_vp(logits_fn, params, batch, v,
                       per_example_loss=cv.softmax_cross_entropy)
    np.testing.assert_allclose(flat_vec(custom), flat_vec(cv.ggn_vp(logits_fn, params, batch, v)),
                               rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_chunked_task_products_match_unchunked(x64, chunk_size):
    logits_fn, params, batch = tiny_mlp(6, n=10)
    loss = mean_ce(logits_fn, batch)
    v = random_like(7, params)
    np.testing.assert_allclose(cv.task_loss(logits_fn, params, batch, chunk_size=chunk_size),
                               loss(params), rtol=1e-12)
    val, grad = cv.task_value_and_grad(logits_fn, params, batch, chunk_size=chunk_size)
    np.testing.assert_allclose(val, loss(params), rtol=1e-12)
    np.testing.assert_allclose(flat_vec(grad), flat_vec(jax.grad(loss)(params)), rtol=1e-10,
                               atol=1e-13)
    np.testing.assert_allclose(flat_vec(cv.task_hvp(logits_fn, params, batch, v,
                                                    chunk_size=chunk_size)),
                               flat_vec(cv.hvp(loss, params, v)), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(flat_vec(cv.task_ggn_vp(logits_fn, params, batch, v,
                                                       chunk_size=chunk_size)),
                               flat_vec(cv.ggn_vp(logits_fn, params, batch, v)), rtol=1e-10,
                               atol=1e-13)
    mv = cv.make_task_matvec(logits_fn, params, batch, chunk_size=chunk_size)
    np.testing.assert_allclose(flat_vec(mv(v)), flat_vec(cv.hvp(loss, params, v)), rtol=1e-10,
                               atol=1e-13)
    np.testing.assert_allclose(
        flat_vec(cv.hvp(cv.make_task_loss(logits_fn, batch, chunk_size=chunk_size), params, v)),
        flat_vec(cv.hvp(loss, params, v)), rtol=1e-10, atol=1e-13)


def test_weights_select_examples(x64):
    logits_fn, params, batch = tiny_mlp(8, n=10)
    mask = (jnp.arange(10) < 6).astype(jnp.float64)
    sub = {k: a[:6] for k, a in batch.items()}
    v = random_like(9, params)
    np.testing.assert_allclose(cv.task_loss(logits_fn, params, batch, weights=mask, chunk_size=4),
                               mean_ce(logits_fn, sub)(params), rtol=1e-12)
    np.testing.assert_allclose(
        flat_vec(cv.task_hvp(logits_fn, params, batch, v, weights=mask, chunk_size=4)),
        flat_vec(cv.hvp(mean_ce(logits_fn, sub), params, v)), rtol=1e-10, atol=1e-13)


def test_jit_equals_eager(x64):
    logits_fn, params, batch = tiny_mlp(10, n=10)
    v = random_like(11, params)
    f = lambda p, b, u: cv.task_hvp(logits_fn, p, b, u, chunk_size=3)
    np.testing.assert_allclose(flat_vec(jax.jit(f)(params, batch, v)),
                               flat_vec(f(params, batch, v)), rtol=1e-12, atol=1e-14)
    g = lambda p, b, u: cv.task_ggn_vp(logits_fn, p, b, u, chunk_size=3)
    np.testing.assert_allclose(flat_vec(jax.jit(g)(params, batch, v)),
                               flat_vec(g(params, batch, v)), rtol=1e-12, atol=1e-14)


def test_float32_v_is_cast(x64):
    logits_fn, params, batch = tiny_mlp(12)
    v = jax.tree.map(lambda p: jnp.ones_like(p, jnp.float32), params)
    out = cv.hvp(mean_ce(logits_fn, batch), params, v)
    assert all(o.dtype == jnp.float64 for o in jax.tree.leaves(out))


def test_validation_errors():
    logits_fn, params, batch = tiny_mlp(0)
    loss = mean_ce(logits_fn, batch)
    with pytest.raises(ValueError, match="v must have the pytree structure"):
        cv.hvp(loss, params, {"w": jnp.ones(3)})
    bad_shape = jax.tree.map(lambda p: jnp.ones(p.shape + (1,)), params)
    with pytest.raises(ValueError, match="v.*has shape"):
        cv.hvp(loss, params, bad_shape)
    nan_v = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    with pytest.raises(FloatingPointError, match="v"):
        cv.hvp(loss, params, nan_v)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        cv.hvp(None, params, params)
    with pytest.raises(ValueError, match="chunk_size"):
        cv.task_loss(logits_fn, params, batch, chunk_size=0)
    with pytest.raises(ValueError, match="weights"):
        cv.task_loss(logits_fn, params, batch, weights=jnp.ones(3))
    with pytest.raises(ValueError, match="weights"):
        cv.task_loss(logits_fn, params, batch, weights=-jnp.ones(7))
    with pytest.raises(KeyError, match="'y'"):
        cv.task_loss(logits_fn, params, {"x": batch["x"]})
    with pytest.raises(ValueError, match="curvature"):
        cv.make_task_matvec(logits_fn, params, batch, curvature="fisher")
    nan_params = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    with pytest.raises(FloatingPointError, match="params"):
        cv.ggn_vp(logits_fn, nan_params, batch, params)
