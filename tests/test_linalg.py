"""Tests for cljax._linalg (eigh that loops over a vmap batch on the CPU)."""
import jax
import jax.numpy as jnp
import numpy as np

from cljax._linalg import eigh


def _sym(key, *shape):
    m = jax.random.normal(key, shape)
    return m + jnp.swapaxes(m, -1, -2)


def test_values_match_numpy_and_vectors_diagonalise(x64):
    m = _sym(jax.random.PRNGKey(0), 6, 6)
    w, u = eigh(m)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(np.asarray(m)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(u @ jnp.diag(w) @ u.T, m, atol=1e-12)
    np.testing.assert_allclose(u.T @ u, np.eye(6), atol=1e-12)


def test_vmap_nested_vmap_and_jit_equal_the_loop(x64):
    m = _sym(jax.random.PRNGKey(1), 2, 3, 5, 5)
    w, _ = jax.jit(jax.vmap(jax.vmap(eigh)))(m)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(w[i, j], np.linalg.eigvalsh(np.asarray(m[i, j])),
                                       rtol=1e-12, atol=1e-12)
    # the batched program holds no batched LAPACK call: the eigh runs inside a loop
    jaxpr = str(jax.make_jaxpr(jax.vmap(eigh))(m[0]))
    assert "while" in jaxpr or "scan" in jaxpr


def test_gradient_matches_jnp_linalg_eigh(x64):
    m = _sym(jax.random.PRNGKey(2), 3, 5, 5)
    c = jnp.arange(5.0)

    def loss(fn):
        return lambda a: jnp.sum(fn(a)[0] ** 2) + jnp.sum(fn(a)[1][:, 0] ** 2 * c)

    ours = jax.vmap(jax.grad(loss(eigh)))(m)
    ref = jax.vmap(jax.grad(loss(jnp.linalg.eigh)))(m)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
