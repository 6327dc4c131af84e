"""Lanczos and top eigenvalues against numpy.linalg.eigvalsh of dense matrices (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curvature_helpers import (
    dense_ggn,
    dense_hessian,
    mean_ce,
    quadratic_loss,
    symmetric_with_spectrum,
    tiny_mlp,
)
from jax.flatten_util import ravel_pytree

from cljax import curvature as cv


def _top(evals, k, which):
    order = np.argsort(-evals) if which == "largest" else np.argsort(-np.abs(evals))
    return evals[order[:k]]


@pytest.mark.parametrize("which", ["largest", "magnitude"])
def test_top_eigenvalues_mlp_hessian(x64, which):
    logits_fn, params, batch = tiny_mlp(0, n=8)
    loss = mean_ce(logits_fn, batch)
    h = dense_hessian(loss, params)
    evals = np.linalg.eigvalsh(h)
    assert evals.min() < 0  # an indefinite Hessian
    dim = evals.size
    res = cv.top_eigenvalues(loss, params, jax.random.key(1), k=5, num_iters=dim, tol=1e-10,
                             which=which, return_eigenvectors=True)
    np.testing.assert_allclose(res.eigenvalues, _top(evals, 5, which), rtol=1e-6)
    assert res.converged and res.num_matvecs <= dim
    # eigenvectors: unit norm, H y = λ y
    y = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(res.eigenvectors))  # [5, D]
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(y @ h, np.asarray(res.eigenvalues)[:, None] * y,
                               atol=1e-6 * abs(evals).max())


@pytest.mark.parametrize("which", ["largest", "magnitude"])
def test_negative_eigenvalue_of_larger_magnitude(x64, which):
    spectrum = [-7.0, 5.0, 3.0, 2.5, 2.0, 1.0, 0.5, 0.25, -0.5, -1.0, 0.1, 0.0]
    a = symmetric_with_spectrum(2, spectrum)
    params = {"w": jnp.zeros(len(spectrum))}
    res = cv.top_eigenvalues(quadratic_loss(a), params, jax.random.key(3), k=5,
                             num_iters=len(spectrum), tol=1e-12, which=which)
    expected = ([5.0, 3.0, 2.5, 2.0, 1.0] if which == "largest"
                else [-7.0, 5.0, 3.0, 2.5, 2.0])
    np.testing.assert_allclose(res.eigenvalues, expected, rtol=1e-6)


def test_early_stopping_on_well_separated_spectrum(x64):
    spectrum = np.concatenate([[100.0, 50.0], np.linspace(0, 1, 198)])
    a = symmetric_with_spectrum(4, spectrum)
    params = {"w": jnp.zeros(spectrum.size)}
    res = cv.top_eigenvalues(quadratic_loss(a), params, jax.random.key(5), k=1, num_iters=60,
                             tol=1e-6)
    assert res.converged and res.num_matvecs < 40
    np.testing.assert_allclose(res.eigenvalues[0], 100.0, rtol=1e-8)
    assert res.residuals[0] <= 1e-6 * 100
    # tol=None runs all iterations
    full = cv.top_eigenvalues(quadratic_loss(a), params, jax.random.key(5), k=1, num_iters=60,
                              tol=None)
    assert full.num_matvecs == 60


def test_lanczos_basis_orthonormal_and_tridiagonal(x64):
    logits_fn, params, batch = tiny_mlp(6, n=8)
    loss = mean_ce(logits_fn, batch)
    h = dense_hessian(loss, params)
    m = 30
    res = cv.lanczos(lambda v: cv.hvp(loss, params, v), params, jax.random.key(7), num_iters=m,
                     return_basis=True)
    assert res.alphas.shape == (m,) and res.betas.shape == (m - 1,)
    v = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(res.basis))  # [m, D]
    np.testing.assert_allclose(v @ v.T, np.eye(m), atol=1e-8)
    t = np.diag(res.alphas) + np.diag(res.betas, 1) + np.diag(res.betas, -1)
    np.testing.assert_allclose(v @ h @ v.T, t, atol=1e-8 * np.abs(h).max())


def test_lanczos_restarts_after_breakdown(x64):
    # 3 distinct eigenvalues: the Krylov space is invariant after 3 steps, Lanczos must restart
    spectrum = [4.0] * 3 + [2.0] * 3 + [-1.0] * 2
    a = symmetric_with_spectrum(8, spectrum)
    params = {"w": jnp.zeros(8)}
    res = cv.lanczos(lambda v: {"w": jnp.asarray(a) @ v["w"]}, params, jax.random.key(9),
                     num_iters=8, return_basis=True)
    assert np.any(np.asarray(res.betas) == 0.0)
    v = np.asarray(res.basis["w"])
    np.testing.assert_allclose(v @ v.T, np.eye(8), atol=1e-8)
    theta, _ = cv.tridiagonal_eigh(res.alphas, res.betas)
    np.testing.assert_allclose(np.sort(theta), np.sort(spectrum), atol=1e-8)


def test_lanczos_jit_equals_eager(x64):
    a = symmetric_with_spectrum(10, np.linspace(-1, 3, 10))
    mv = lambda v: {"w": jnp.asarray(a) @ v["w"]}
    params = {"w": jnp.zeros(10)}
    f = lambda key: cv.lanczos(mv, params, key, num_iters=6)
    eager, jitted = f(jax.random.key(11)), jax.jit(f)(jax.random.key(11))
    np.testing.assert_allclose(eager.alphas, jitted.alphas, rtol=1e-12)
    np.testing.assert_allclose(eager.betas, jitted.betas, rtol=1e-12)


def test_top_eigenvalues_of_chunked_ggn_matvec(x64):
    logits_fn, params, batch = tiny_mlp(12, n=10)
    g = dense_ggn(logits_fn, params, batch)
    mv = cv.make_task_matvec(logits_fn, params, batch, curvature="ggn", chunk_size=4)
    res = cv.top_eigenvalues_matvec(mv, params, jax.random.key(13), k=3, num_iters=30,
                                    tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues, np.linalg.eigvalsh(g)[::-1][:3], rtol=1e-6)


def test_validation_errors():
    params = {"w": jnp.zeros(6)}
    loss = quadratic_loss(np.eye(6))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_iters must be <= the dimension"):
        cv.top_eigenvalues(loss, params, key, num_iters=7)
    with pytest.raises(ValueError, match="num_iters"):
        cv.lanczos(lambda v: v, params, key, num_iters=0)
    with pytest.raises(ValueError, match="k must be <= num_iters"):
        cv.top_eigenvalues(loss, params, key, k=4, num_iters=3)
    with pytest.raises(ValueError, match="which"):
        cv.top_eigenvalues(loss, params, key, num_iters=3, which="smallest")
    with pytest.raises(ValueError, match="tol"):
        cv.top_eigenvalues(loss, params, key, num_iters=3, tol=-1.0)
    with pytest.raises(TypeError, match="key"):
        cv.top_eigenvalues(loss, params, 0, num_iters=3)
    with pytest.raises(TypeError, match="matvec must be callable"):
        cv.lanczos(None, params, key, num_iters=3)
    with pytest.raises(FloatingPointError, match="params"):
        cv.top_eigenvalues(loss, {"w": jnp.full(6, jnp.nan)}, key, num_iters=3)
    with pytest.raises(FloatingPointError, match="non-finite"):
        cv.top_eigenvalues_matvec(lambda v: {"w": v["w"] * jnp.nan}, params, key, num_iters=3)
