"""Tests for cljax._linalg (eigh, solve and qr that loop over a vmap batch on the CPU)."""
import jax
import jax.numpy as jnp
import numpy as np

from cljax._linalg import eigh, qr, solve


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


def test_solve_and_qr_under_vmap_match_numpy():
    """solve (one matrix or a batch of them, against a shared or batched right-hand side) and qr
    under vmap equal numpy's, the batch looped on the CPU."""
    rng = np.random.default_rng(7)
    a = jnp.asarray(rng.normal(size=(2, 5, 5)) + 5 * np.eye(5), jnp.float32)
    b = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    want = np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64))
    np.testing.assert_allclose(jax.jit(jax.vmap(solve, (0, None)))(a, b), want, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(solve(a[0], b), want[0], rtol=1e-4, atol=1e-6)
    m = jnp.asarray(rng.normal(size=(3, 6, 4)), jnp.float32)
    q, r = jax.vmap(qr)(m)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(q[i]) @ np.asarray(r[i]), m[i], rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(np.asarray(q[i]).T @ np.asarray(q[i]), np.eye(4), atol=1e-5)
