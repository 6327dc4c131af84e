"""Tests for cljax.transforms.ncl (NCL preconditioner, diagonal and K-FAC)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.nn import MLP, as_model
from cljax.transforms import (NCLDiagState, NCLKFACState, ncl, ncl_consolidate, ncl_kfac,
                              ncl_kfac_consolidate, ncl_kfac_preconditioner,
                              ncl_kfac_value_and_grad, ncl_preconditioner, nearest_kronecker_sum,
                              set_damping, set_strength)
from cljax.types import KFACFactors
from helpers import assert_trees_close


def _params(key, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"Dense_0": {"kernel": jax.random.normal(k1, (3, 2), dtype),
                        "bias": jax.random.normal(k2, (2,), dtype)},
            "scale": jax.random.normal(k3, (2,), dtype)}


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _unflat(vec, like):
    leaves, tdef = jax.tree.flatten(like)
    out, i = [], 0
    for leaf in leaves:
        out.append(vec[i:i + leaf.size].reshape(leaf.shape))
        i += leaf.size
    return tdef.unflatten(out)


def _spd(key, n, dtype=jnp.float64):
    m = jax.random.normal(key, (n, n), dtype)
    return m @ m.T / n + 0.1 * jnp.eye(n, dtype=dtype)


def _quadratic(key, params):
    """ℓ(θ) = ½ (θ − c)ᵀ H (θ − c) on the flattened params; returns (loss, H, c)."""
    n = _flat(params).size
    k1, k2 = jax.random.split(key)
    h = _spd(k1, n, _flat(params).dtype)
    c = jax.random.normal(k2, (n,), _flat(params).dtype)
    loss = lambda p: 0.5 * (_flat(p) - c) @ h @ (_flat(p) - c)
    return loss, h, c


# ---------------------------------------------------------------- diagonal


def test_diag_step_matches_closed_form_on_quadratic(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    loss, h, c = _quadratic(jax.random.PRNGKey(1), params)
    omega = jax.tree.map(lambda p: jnp.abs(p) + 0.5, _params(jax.random.PRNGKey(2), jnp.float64))
    mu = _params(jax.random.PRNGKey(3), jnp.float64)
    s, d, lr = 3.0, 0.2, 0.05
    tx = ncl(lr, strength=s, damping=d)
    state = ncl_consolidate(tx.init(params), mu, omega)
    lam = s * _flat(omega) + d
    theta = _flat(params)
    p = params

    @jax.jit
    def step(p, state):
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    for _ in range(4):
        p, state = step(p, state)
        theta = theta - lr * (h @ (theta - c) / lam + (theta - _flat(mu)))
    np.testing.assert_allclose(_flat(p), theta, rtol=1e-12)


def test_diag_identity_precision_is_sgd_plus_pull(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    mu = _params(jax.random.PRNGKey(3), jnp.float64)
    g = _params(jax.random.PRNGKey(4), jnp.float64)
    tx = ncl(0.1, strength=0.0, damping=1.0)  # Λ = 0·Ω + 1·I = I
    state = ncl_consolidate(tx.init(params), mu, jax.tree.map(jnp.ones_like, params))
    updates, _ = tx.update(g, state, params)
    assert_trees_close(updates, jax.tree.map(lambda gg, p, m: -0.1 * (gg + p - m), g, params, mu), rtol=1e-14)


def test_diag_before_first_consolidation_is_plain_gradient():
    params = _params(jax.random.PRNGKey(0))
    g = _params(jax.random.PRNGKey(4))
    tx = ncl_preconditioner(strength=5.0, damping=0.01)
    updates, _ = tx.update(g, tx.init(params), jax.tree.map(lambda p: p + 3.0, params))
    for u, v in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
        assert np.array_equal(np.asarray(u), np.asarray(v))


def test_diag_consolidate_accumulates_with_decay(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    f1 = jax.tree.map(jnp.abs, _params(jax.random.PRNGKey(1), jnp.float64))
    f2 = jax.tree.map(jnp.abs, _params(jax.random.PRNGKey(2), jnp.float64))
    tx = ncl_preconditioner(strength=2.0, damping=0.5)
    s = ncl_consolidate(ncl_consolidate(tx.init(params), params, f1, decay=0.5), params, f2,
                        decay=0.5)
    assert_trees_close(s.precision, jax.tree.map(lambda a, b: 0.5 * a + b, f1, f2), rtol=1e-14)
    assert_trees_close(s.inverse, jax.tree.map(lambda a, b: 1 / (2.0 * (0.5 * a + b) + 0.5), f1, f2),
           rtol=1e-14)
    s2 = set_damping(set_strength(s, 4.0), 0.1)
    assert_trees_close(s2.inverse, jax.tree.map(lambda a, b: 1 / (4.0 * (0.5 * a + b) + 0.1), f1, f2),
           rtol=1e-14)


def test_diag_vmap_over_strength_and_no_recompile():
    params = _params(jax.random.PRNGKey(0))
    omega = jax.tree.map(jnp.abs, _params(jax.random.PRNGKey(1)))
    g = _params(jax.random.PRNGKey(2))
    tx = ncl(0.1, damping=0.5)

    def make(lam):
        return ncl_consolidate(set_strength(tx.init(params), lam), params, omega)

    step = jax.jit(lambda state, p: tx.update(g, state, p)[0])
    lams = jnp.array([0.0, 1.0, 10.0])
    batched = jax.vmap(step, in_axes=(0, None))(jax.vmap(make)(lams), params)
    for k, lam in enumerate(lams):
        assert_trees_close(jax.tree.map(lambda x: x[k], batched), step(make(float(lam)), params), rtol=1e-6)
    n = step._cache_size()
    state = tx.init(params)
    step(state, params)
    for lam in (2.0, np.float32(3.0), 7):
        state = ncl_consolidate(set_damping(set_strength(state, lam), lam / 10), params, omega)
        step(state, params)
    assert step._cache_size() == n


# ---------------------------------------------------------------- K-FAC


def _kfac_setup(dtype=jnp.float64):
    params = _params(jax.random.PRNGKey(0), dtype)
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    fac = {"Dense_0": KFACFactors(_spd(keys[0], 4, dtype), _spd(keys[1], 2, dtype))}
    return params, fac, keys


def _wbar(node):
    return jnp.concatenate([node["kernel"], node["bias"][None]], 0)


def _kfac_closed_form(fac, s, d, g, theta, mu):
    """Dense Λ for Dense_0 (row-major vec of W̄ = [W; b]) and Λ = d I for 'scale'."""
    a, gg = fac.A, fac.G
    pi = jnp.sqrt((jnp.trace(a) / 4) / (jnp.trace(gg) / 2))
    lam = jnp.kron(jnp.sqrt(s) * a + pi * jnp.sqrt(d) * jnp.eye(4),
                   jnp.sqrt(s) * gg + jnp.sqrt(d) / pi * jnp.eye(2))
    dw = (jnp.linalg.solve(lam, _wbar(g["Dense_0"]).reshape(-1)).reshape(4, 2)
          + _wbar(theta["Dense_0"]) - _wbar(mu["Dense_0"]))
    return {"Dense_0": {"kernel": dw[:3], "bias": dw[3]},
            "scale": g["scale"] / d + theta["scale"] - mu["scale"]}


def test_kfac_step_matches_closed_form_dense_kron(x64):
    params, fac, keys = _kfac_setup()
    mu = _params(jax.random.PRNGKey(11), jnp.float64)
    g = _params(jax.random.PRNGKey(12), jnp.float64)
    s, d = 2.0, 0.3
    tx = ncl_kfac_preconditioner(strength=s, damping=d)
    state = jax.jit(ncl_kfac_consolidate)(tx.init(params), mu, fac)
    updates, _ = jax.jit(tx.update)(g, state, params)
    assert_trees_close(updates, _kfac_closed_form(fac["Dense_0"], s, d, g, params, mu), rtol=1e-10)


def test_kfac_trajectory_on_quadratic(x64):
    params, fac, _ = _kfac_setup()
    loss, h, c = _quadratic(jax.random.PRNGKey(1), params)
    mu = _params(jax.random.PRNGKey(11), jnp.float64)
    s, d, lr = 1.5, 0.4, 0.1
    tx = ncl_kfac(lr, strength=s, damping=d)
    state = ncl_kfac_consolidate(tx.init(params), mu, fac)
    p, ref = params, params
    for _ in range(3):
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        p = optax.apply_updates(p, updates)
        step = _kfac_closed_form(fac["Dense_0"], s, d, jax.grad(loss)(ref), ref, mu)
        ref = jax.tree.map(lambda x, u: x - lr * u, ref, step)
    assert_trees_close(p, ref, rtol=1e-10)


def test_kfac_identity_precision_is_sgd_plus_pull(x64):
    params, fac, _ = _kfac_setup()
    mu = _params(jax.random.PRNGKey(11), jnp.float64)
    g = _params(jax.random.PRNGKey(12), jnp.float64)
    tx = ncl_kfac(0.1, strength=1.0, damping=1.0)
    zero = {"Dense_0": KFACFactors(jnp.zeros((4, 4)), jnp.zeros((2, 2)))}
    state = ncl_kfac_consolidate(tx.init(params), mu, zero)  # Λ = 0 + 1·I
    updates, _ = tx.update(g, state, params)
    assert_trees_close(updates, jax.tree.map(lambda gg, p, m: -0.1 * (gg + p - m), g, params, mu),
           rtol=1e-13, atol=1e-14)
    # before any consolidation: plain SGD
    updates, _ = tx.update(g, tx.init(params), params)
    assert_trees_close(updates, jax.tree.map(lambda gg: -0.1 * gg, g), rtol=1e-14)


def test_kfac_consolidate_uses_nearest_kronecker_sum(x64):
    params, fac, keys = _kfac_setup()
    fac2 = {"Dense_0": KFACFactors(_spd(keys[2], 4), _spd(keys[3], 2))}
    tx = ncl_kfac_preconditioner(strength=1.0, damping=0.1)
    s = ncl_kfac_consolidate(tx.init(params), params, fac)
    assert_trees_close(s.factors["Dense_0"], fac["Dense_0"], rtol=1e-12)
    s = ncl_kfac_consolidate(s, params, fac2, decay=0.7)
    x, y = nearest_kronecker_sum(0.7 * fac["Dense_0"].A, fac["Dense_0"].G, fac2["Dense_0"].A,
                                 fac2["Dense_0"].G)
    np.testing.assert_allclose(jnp.kron(*s.factors["Dense_0"]), jnp.kron(x, y), rtol=1e-10)
    # Frobenius-optimal: no better than the exact sum, and better than the plain factor sum
    exact = 0.7 * jnp.kron(*fac["Dense_0"]) + jnp.kron(*fac2["Dense_0"])
    plain = jnp.kron(0.7 * fac["Dense_0"].A + fac2["Dense_0"].A,
                     fac["Dense_0"].G + fac2["Dense_0"].G)
    assert jnp.linalg.norm(jnp.kron(x, y) - exact) < jnp.linalg.norm(plain - exact)


def test_kfac_vmap_over_strength_and_no_recompile():
    params, fac, _ = _kfac_setup(jnp.float32)
    fac = {"Dense_0": KFACFactors(*(jnp.asarray(m, jnp.float32) for m in fac["Dense_0"]))}
    g = _params(jax.random.PRNGKey(2))
    tx = ncl_kfac(0.1, damping=0.5)

    @jax.jit
    def make(lam):
        return ncl_kfac_consolidate(set_strength(tx.init(params), lam), params, fac)

    step = jax.jit(lambda state, p: tx.update(g, state, p)[0])
    lams = jnp.array([0.0, 1.0, 10.0])
    batched = jax.vmap(step, in_axes=(0, None))(jax.vmap(make)(lams), params)
    for k, lam in enumerate(lams):
        assert_trees_close(jax.tree.map(lambda x: x[k], batched), step(make(float(lam)), params),
               rtol=1e-4, atol=1e-5)
    n = step._cache_size()
    state = tx.init(params)
    step(state, params)
    boundary = jax.jit(lambda st, lam: ncl_kfac_consolidate(
        set_damping(set_strength(st, lam), lam / 10), params, fac))
    for lam in (2.0, 3.0):
        state = boundary(state, lam)
        step(state, params)
    assert step._cache_size() == n


def test_kfac_fused_gradient_equals_preconditioning_the_gradient(x64):
    """ncl_kfac_value_and_grad + preconditioned_gradients=True gives the same trajectory as
    jax.grad + the transform, before and after consolidations (vmapped over strength)."""
    model = as_model(MLP((7, 6), 3))
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (10, 5), jnp.float64)
    y = jax.random.randint(ky, (10,), 0, 3)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), model.init(kp, {"x": x}))

    def loss(p):
        logp = jax.nn.log_softmax(model.logits_fn(p, {"x": x}))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))

    def factors(seed):
        out = {}
        for i, (name, node) in enumerate(params.items()):
            n, m = node["kernel"].shape[0] + 1, node["kernel"].shape[1]
            k1, k2 = jax.random.split(jax.random.PRNGKey(seed + i))
            out[name] = KFACFactors(_spd(k1, n), _spd(k2, m))
        return out

    def trajectory(fused, strength):
        tx = ncl_kfac(0.05, strength=strength, damping=0.3, momentum=0.9,
                      preconditioned_gradients=fused)
        p, state = params, tx.init(params)
        for t in range(2):
            for _ in range(3):
                g = (ncl_kfac_value_and_grad(lambda q: loss(q), state, p)[1] if fused
                     else jax.grad(loss)(p))
                updates, state = tx.update(g, state, p)
                p = optax.apply_updates(p, updates)
            state = ncl_kfac_consolidate(state, p, factors(10 * t))
        return p

    fused = jax.jit(lambda s: trajectory(True, s))
    plain = jax.jit(lambda s: trajectory(False, s))
    for lam in (0.5, 4.0):
        assert_trees_close(fused(lam), plain(lam), rtol=1e-9, atol=1e-12)
    batched = jax.jit(jax.vmap(fused))(jnp.array([0.5, 4.0]))
    assert_trees_close(jax.tree.map(lambda a: a[1], batched), plain(4.0), rtol=1e-9, atol=1e-12)


def test_bad_inputs_raise():
    params, fac, _ = _kfac_setup(jnp.float32)
    with pytest.raises(ValueError, match="strength"):
        ncl_preconditioner(strength=-1.0)
    with pytest.raises(ValueError, match="damping"):
        ncl_preconditioner(damping=-1.0)
    with pytest.raises(ValueError, match="damping"):
        ncl_kfac_preconditioner(damping=-0.1)
    tx = ncl_preconditioner()
    st = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, st, None)
    with pytest.raises(ValueError, match="importance"):
        ncl_consolidate(st, params, {"scale": params["scale"]})
    with pytest.raises(ValueError, match="decay"):
        ncl_consolidate(st, params, jax.tree.map(jnp.abs, params), decay=1.5)
    with pytest.raises(ValueError, match="negative"):
        ncl_consolidate(st, params, jax.tree.map(lambda p: -jnp.abs(p) - 1, params))
    with pytest.raises(ValueError, match="damping"):
        set_damping(st, -1.0)
    ktx = ncl_kfac_preconditioner()
    kst = ktx.init(params)
    with pytest.raises(ValueError, match="params"):
        ktx.update(params, kst, None)
    with pytest.raises(ValueError, match="Dense_7"):
        ncl_kfac_consolidate(kst, params, {"Dense_7": fac["Dense_0"]})
    with pytest.raises(ValueError, match=r"factors\['Dense_0'\]"):
        ncl_kfac_consolidate(kst, params, {"Dense_0": KFACFactors(jnp.eye(3), jnp.eye(2))})
    with pytest.raises(ValueError, match="layers"):
        ncl_kfac_preconditioner(layers=["Dense_3"]).init(params)
    with pytest.raises(ValueError, match="NCLDiagState"):
        ncl_consolidate(kst, params, jax.tree.map(jnp.abs, params))
    with pytest.raises(ValueError, match="NCLKFACState"):
        ncl_kfac_value_and_grad(lambda p: jnp.sum(p["scale"]), st, params)
    with pytest.raises(TypeError, match="preconditioned_gradients"):
        ncl_kfac_preconditioner(preconditioned_gradients="yes")
    assert isinstance(st, NCLDiagState) and isinstance(kst, NCLKFACState)
