"""Hutchinson trace against the dense trace (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curvature_helpers import dense_ggn, dense_hessian, mean_ce, symmetric_with_spectrum, tiny_mlp

from cljax import curvature as cv
from cljax.importance import exact_fisher_diagonal


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


def _rms_errors(a, budgets, keys, sketch="random"):
    """RMS error over `keys` of Hutchinson and Hutch++ at each matvec budget."""
    params = {"w": jnp.zeros(a.shape[0])}
    mv = lambda v: {"w": jnp.asarray(a) @ v["w"]}
    exact = np.trace(a)
    out = {"hutchinson": [], "hutchpp": []}
    for m in budgets:
        h = jax.vmap(lambda k: cv.hutchinson_trace(mv, params, k, num_samples=m).trace)(keys)
        p = jax.vmap(lambda k: cv.hutchpp_trace(mv, params, k, num_matvecs=m,
                                                sketch=sketch).trace)(keys)
        out["hutchinson"].append(float(np.sqrt(np.mean((np.asarray(h) - exact) ** 2))))
        out["hutchpp"].append(float(np.sqrt(np.mean((np.asarray(p) - exact) ** 2))))
    return out


@pytest.mark.slow   # CI time; Hutch++'s low-rank oracle runs by default
def test_hutchpp_error_falls_faster_than_hutchinson_on_decaying_spectrum(x64):
    # PSD, known trace, polynomially decaying spectrum λ_i = i^-2 (Meyer et al. 2021, §5)
    spectrum = 1.0 / np.arange(1, 121) ** 2
    a = symmetric_with_spectrum(7, spectrum)
    keys = jax.random.split(jax.random.key(8), 16)
    err = _rms_errors(a, (12, 48), keys)
    kry = _rms_errors(a, (12,), keys, sketch="krylov")["hutchpp"][0]
    assert kry < err["hutchpp"][0]        # the Krylov sketch beats the random one
    # Hutchinson ~ 1/√m (×½ for 4× the budget); Hutch++ ~ 1/m or better here (≤ ¼)
    assert err["hutchpp"][1] < err["hutchinson"][1] / 5
    assert err["hutchpp"][1] / err["hutchpp"][0] < 0.3
    assert err["hutchpp"][1] / err["hutchpp"][0] < err["hutchinson"][1] / err["hutchinson"][0]


def test_hutchpp_exact_when_sketch_spans_the_range_and_stderr(x64):
    # rank-3 A: the sketch of 3 columns captures it exactly, the remainder is 0
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.normal(size=(30, 3)))[0]
    a = u @ np.diag([5.0, 2.0, 1.0]) @ u.T
    params = {"w": jnp.zeros(30)}
    est = jax.jit(lambda k: cv.hutchpp_trace(lambda v: {"w": jnp.asarray(a) @ v["w"]}, params,
                                             k, num_matvecs=9))(jax.random.key(1))
    np.testing.assert_allclose(est.trace, 8.0, rtol=1e-10)
    assert est.samples.shape == (3,)
    np.testing.assert_allclose(est.stderr, np.std(est.samples, ddof=1) / np.sqrt(3), atol=1e-12)
    # Krylov sketch: 4 Lanczos vectors span the start vector and A's range; tr(QᵀAQ) = Σ α
    kry = cv.hutchpp_trace(lambda v: {"w": jnp.asarray(a) @ v["w"]}, params, jax.random.key(2),
                           num_matvecs=6, sketch_size=4, sketch="krylov")
    np.testing.assert_allclose(kry.trace, 8.0, rtol=1e-10)
    assert kry.samples.shape == (2,)


def test_hutchpp_validation_errors():
    params = {"w": jnp.zeros(4)}
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_matvecs"):
        cv.hutchpp_trace(lambda v: v, params, key, num_matvecs=2)
    with pytest.raises(ValueError, match="sketch_size"):
        cv.hutchpp_trace(lambda v: v, params, key, num_matvecs=6, sketch_size=3)
    with pytest.raises(ValueError, match="sketch_size must be <= the dimension"):
        cv.hutchpp_trace(lambda v: v, params, key, num_matvecs=20, sketch_size=5)
    with pytest.raises(TypeError, match="matvec"):
        cv.hutchpp_trace(None, params, key, num_matvecs=6)
    with pytest.raises(ValueError, match="sketch must be"):
        cv.hutchpp_trace(lambda v: v, params, key, num_matvecs=6, sketch="power")


def test_ggn_split_trace(x64):
    logits_fn, params, batch = tiny_mlp(0, n=8)
    h = dense_hessian(mean_ce(logits_fn, batch), params)
    g = dense_ggn(logits_fn, params, batch)
    # the exact part: Σ of the exact Fisher diagonal is tr(GGN)
    diag = exact_fisher_diagonal(logits_fn, params, batch)
    np.testing.assert_allclose(sum(np.sum(d) for d in jax.tree.leaves(diag)), np.trace(g),
                               rtol=1e-10)
    est = cv.ggn_split_trace(logits_fn, params, batch, jax.random.key(3), num_samples=100,
                             chunk_size=3)
    assert abs(est.trace - np.trace(h)) <= 3 * est.stderr
    # the probes see only R = H − G: their spread is that of vᵀ(H − G)v
    r = h - g
    np.testing.assert_allclose(np.var(est.samples, ddof=1),
                               2 * (np.sum(r * r) - np.sum(np.diag(r) ** 2)), rtol=0.5)
