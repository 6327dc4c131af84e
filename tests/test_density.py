"""Stochastic Lanczos quadrature spectral density (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curvature_helpers import dense_hessian, mean_ce, symmetric_with_spectrum, tiny_mlp

from cljax import curvature as cv


def test_density_integrates_to_one_and_sits_on_eigenvalues(x64):
    spectrum = np.array([-3.0] * 5 + [0.0] * 20 + [2.0] * 10 + [10.0] * 5)
    a = jnp.asarray(symmetric_with_spectrum(0, spectrum))
    params = {"w": jnp.zeros(spectrum.size)}
    grid, density = cv.spectral_density(lambda v: {"w": a @ v["w"]}, params, jax.random.key(1),
                                        num_iters=12, num_runs=20, grid=4000, sigma=0.2)
    grid, density = np.asarray(grid), np.asarray(density)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-6)
    # mass within ±1 of each eigenvalue ≈ its multiplicity / D (random start vectors: ~±0.1)
    for lam in np.unique(spectrum):
        near = np.abs(grid - lam) < 1.0
        mass = np.trapezoid(np.where(near, density, 0.0), grid)
        np.testing.assert_allclose(mass, np.mean(spectrum == lam), atol=0.1)
    assert np.trapezoid(np.where(np.abs(grid - 6) < 2, density, 0), grid) < 1e-6


def test_density_of_mlp_hessian(x64):
    logits_fn, params, batch = tiny_mlp(2, n=8)
    loss = mean_ce(logits_fn, batch)
    evals = np.linalg.eigvalsh(dense_hessian(loss, params))
    grid, density = cv.spectral_density(lambda v: cv.hvp(loss, params, v), params,
                                        jax.random.key(3), num_iters=evals.size, num_runs=3,
                                        grid=2000)
    grid, density = np.asarray(grid), np.asarray(density)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-4)
    sigma = 0.01 * (evals.max() - evals.min())
    expected = np.mean(np.exp(-0.5 * ((grid[:, None] - evals) / sigma) ** 2), axis=1) / (
        sigma * np.sqrt(2 * np.pi))
    # with num_iters = D the quadrature is exact per run up to the random weights
    assert np.trapezoid(np.abs(density - expected), grid) < 0.5
    nodes, weights = cv.slq_nodes_weights(lambda v: cv.hvp(loss, params, v), params,
                                          jax.random.key(3), num_iters=evals.size, num_runs=3)
    np.testing.assert_allclose(np.sum(weights, axis=1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(np.sort(nodes[0]), evals, atol=1e-8 * np.abs(evals).max())


def test_validation_errors():
    params = {"w": jnp.zeros(4)}
    mv = lambda v: v
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_runs"):
        cv.spectral_density(mv, params, key, num_iters=2, num_runs=0)
    with pytest.raises(ValueError, match="num_iters must be <= the dimension"):
        cv.spectral_density(mv, params, key, num_iters=5, num_runs=1)
    with pytest.raises(ValueError, match="sigma"):
        cv.spectral_density(mv, params, key, num_iters=2, num_runs=1, sigma=-1.0)
    with pytest.raises(ValueError, match="grid"):
        cv.spectral_density(mv, params, key, num_iters=2, num_runs=1, grid=1)
    with pytest.raises(ValueError, match="grid"):
        cv.spectral_density(mv, params, key, num_iters=2, num_runs=1, grid=np.zeros((2, 2)))
