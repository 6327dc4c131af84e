"""Hutchinson trace against the dense trace (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import curvature as cv
from curvature_helpers import dense_hessian, mean_ce, symmetric_with_spectrum, tiny_mlp


def test_hutchinson_within_three_standard_errors(x64):
    logits_fn, params, batch = tiny_mlp(0, n=8)
    loss = mean_ce(logits_fn, batch)
    exact = np.trace(dense_hessian(loss, params))
    est = cv.hutchinson_trace(lambda v: cv.hvp(loss, params, v), params, jax.random.key(1),
                              num_samples=300)
    assert est.samples.shape == (300,)
    assert 0 < est.stderr and abs(est.trace - exact) <= 3 * est.stderr
    np.testing.assert_allclose(est.stderr, np.std(est.samples, ddof=1) / np.sqrt(300))


def test_hutchinson_exact_for_diagonal_and_jit(x64):
    # Rademacher probes: vᵀ D v = tr(D) exactly for a diagonal D, so zero variance
    d = jnp.arange(1.0, 11.0)
    mv = lambda v: {"w": d * v["w"]}
    params = {"w": jnp.zeros(10)}
    est = jax.jit(lambda k: cv.hutchinson_trace(mv, params, k, num_samples=4))(jax.random.key(2))
    np.testing.assert_allclose(est.trace, 55.0, rtol=1e-12)
    np.testing.assert_allclose(est.stderr, 0.0, atol=1e-12)
    # general symmetric matrix, a lot of samples: close to the trace
    a = symmetric_with_spectrum(3, np.linspace(-2, 5, 10))
    est = cv.hutchinson_trace(lambda v: {"w": jnp.asarray(a) @ v["w"]}, params,
                              jax.random.key(4), num_samples=400)
    assert abs(est.trace - np.trace(a)) <= 3 * est.stderr
    one = cv.hutchinson_trace(mv, params, jax.random.key(5), num_samples=1)
    assert np.isnan(one.stderr)


def test_validation_errors():
    params = {"w": jnp.zeros(3)}
    with pytest.raises(ValueError, match="num_samples"):
        cv.hutchinson_trace(lambda v: v, params, jax.random.key(0), num_samples=0)
    with pytest.raises(TypeError, match="matvec"):
        cv.hutchinson_trace("H", params, jax.random.key(0), num_samples=2)
    with pytest.raises(TypeError, match="floating"):
        cv.hutchinson_trace(lambda v: v, {"w": jnp.zeros(3, int)}, jax.random.key(0),
                            num_samples=2)
