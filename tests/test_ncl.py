"""Tests for cljax.transforms.ncl (NCL preconditioner over a diagonal or a K-FAC prior).

The prior (:class:`NCLState`, ``init_ncl(params, curvature="diagonal"|"kfac")``) is passed to
``update`` as the optax extra argument ``ncl_state``; strength and damping are arguments of the
boundary function.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

from cljax.curvature import Diagonal, KroneckerFactored, nearest_kronecker_sum
from cljax.nn import MLP, as_model
from cljax.transforms import (
    NCLState,
    init_ncl,
    init_penalty,
    ncl,
    ncl_consolidate,
    ncl_kfac_value_and_grad,
    ncl_preconditioner,
)
from cljax.types import KFACFactors


def _params(key, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"Dense_0": {"kernel": jax.random.normal(k1, (3, 2), dtype),
                        "bias": jax.random.normal(k2, (2,), dtype)},
            "scale": jax.random.normal(k3, (2,), dtype)}


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


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


def _update(tx, g, params, prior):
    return tx.update(g, tx.init(params), params, ncl_state=prior)[0]


def _init_kfac(params, **kw):
    return init_ncl(params, curvature="kfac", **kw)


# ---------------------------------------------------------------- diagonal


def test_diag_step_matches_closed_form_on_quadratic(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    loss, h, c = _quadratic(jax.random.PRNGKey(1), params)
    omega = jax.tree.map(lambda p: jnp.abs(p) + 0.5, _params(jax.random.PRNGKey(2), jnp.float64))
    mu = _params(jax.random.PRNGKey(3), jnp.float64)
    s, d, lr = 3.0, 0.2, 0.05
    tx = ncl(lr)
    prior = ncl_consolidate(init_ncl(params), mu, omega, strength=s, damping=d)
    lam = s * _flat(omega) + d
    theta = _flat(params)
    p, opt_state = params, tx.init(params)

    @jax.jit
    def step(p, opt_state):
        updates, opt_state = tx.update(jax.grad(loss)(p), opt_state, p, ncl_state=prior)
        return optax.apply_updates(p, updates), opt_state

    for _ in range(4):
        p, opt_state = step(p, opt_state)
        theta = theta - lr * (h @ (theta - c) / lam + (theta - _flat(mu)))
    np.testing.assert_allclose(_flat(p), theta, rtol=1e-12)


def test_diag_identity_precision_is_sgd_plus_pull(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    mu = _params(jax.random.PRNGKey(3), jnp.float64)
    g = _params(jax.random.PRNGKey(4), jnp.float64)
    tx = ncl(0.1)
    # Λ = 0·Ω + 1·I = I
    prior = ncl_consolidate(init_ncl(params), mu, jax.tree.map(jnp.ones_like, params),
                            strength=0.0, damping=1.0)
    updates = _update(tx, g, params, prior)
    assert_trees_close(updates, jax.tree.map(lambda gg, p, m: -0.1 * (gg + p - m), g, params, mu),
                       rtol=1e-14)


def test_diag_before_first_consolidation_is_plain_gradient():
    params = _params(jax.random.PRNGKey(0))
    g = _params(jax.random.PRNGKey(4))
    tx = ncl_preconditioner()
    assert tx.init(params) == optax.EmptyState()
    prior = init_ncl(params)
    assert isinstance(prior, NCLState) and int(prior.count) == 0
    assert isinstance(prior.precision, Diagonal) and isinstance(prior.inverse, Diagonal)
    updates = _update(tx, g, jax.tree.map(lambda p: p + 3.0, params), prior)
    for u, v in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
        assert np.array_equal(np.asarray(u), np.asarray(v))


def test_diag_consolidate_accumulates_with_decay(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    f1 = jax.tree.map(jnp.abs, _params(jax.random.PRNGKey(1), jnp.float64))
    f2 = jax.tree.map(jnp.abs, _params(jax.random.PRNGKey(2), jnp.float64))
    mu = _params(jax.random.PRNGKey(3), jnp.float64)
    p0 = init_ncl(params)
    s = ncl_consolidate(ncl_consolidate(p0, params, f1, strength=2.0, damping=0.5, decay=0.5),
                        mu, f2, strength=2.0, damping=0.5, decay=0.5)
    assert int(s.count) == 2 and int(p0.count) == 0
    assert_trees_close(s.mean, mu)
    assert_trees_close(s.precision.values, jax.tree.map(lambda a, b: 0.5 * a + b, f1, f2),
                       rtol=1e-14)
    assert_trees_close(s.inverse.values,
                       jax.tree.map(lambda a, b: 1 / (2.0 * (0.5 * a + b) + 0.5), f1, f2),
                       rtol=1e-14)
    # strength and damping are boundary arguments: they shape Λ⁻¹ of this boundary only; the
    # stored precision is unscaled, so a later boundary with other (s, d) uses the same Ω
    s2 = ncl_consolidate(ncl_consolidate(p0, params, f1, strength=9.0, damping=3.0, decay=0.5),
                         mu, f2, strength=4.0, damping=0.1, decay=0.5)
    assert_trees_close(s2.precision, s.precision, rtol=1e-14)
    assert_trees_close(s2.inverse.values,
                       jax.tree.map(lambda a, b: 1 / (4.0 * (0.5 * a + b) + 0.1), f1, f2),
                       rtol=1e-14)
    # a Diagonal is accepted in place of the importance pytree
    s3 = ncl_consolidate(ncl_consolidate(p0, params, Diagonal(f1), strength=2.0, damping=0.5,
                                         decay=0.5), mu, f2, strength=2.0, damping=0.5, decay=0.5)
    assert_trees_close(s3, s, rtol=0)


def test_diag_vmap_over_strength_and_no_recompile():
    params = _params(jax.random.PRNGKey(0))
    omega = jax.tree.map(jnp.abs, _params(jax.random.PRNGKey(1)))
    g = _params(jax.random.PRNGKey(2))
    tx = ncl(0.1)

    def make(lam):
        return ncl_consolidate(init_ncl(params), params, omega, strength=lam, damping=0.5)

    step = jax.jit(lambda prior, p: _update(tx, g, p, prior))
    lams = jnp.array([0.0, 1.0, 10.0])
    batched = jax.vmap(step, in_axes=(0, None))(jax.vmap(make)(lams), params)
    for k, lam in enumerate(lams):
        assert_trees_close(jax.tree.map(lambda x: x[k], batched), step(make(float(lam)), params),
                           rtol=1e-6)
    n = step._cache_size()
    prior = init_ncl(params)
    step(prior, params)
    for lam in (2.0, np.float32(3.0), 7):
        prior = ncl_consolidate(prior, params, omega, strength=lam, damping=lam / 10)
        step(prior, params)
    assert step._cache_size() == n == 1


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
    tx = ncl_preconditioner()
    prior = jax.jit(lambda st, m, f: ncl_consolidate(st, m, f, strength=s, damping=d))(
        _init_kfac(params), mu, fac)
    assert isinstance(prior.inverse, KroneckerFactored)
    np.testing.assert_allclose(prior.inverse.other, 1 / d, rtol=1e-14)
    updates = jax.jit(lambda g, p, pr: _update(tx, g, p, pr))(g, params, prior)
    assert_trees_close(updates, _kfac_closed_form(fac["Dense_0"], s, d, g, params, mu), rtol=1e-10)
    # eager == jit
    eager = ncl_consolidate(_init_kfac(params), mu, fac, strength=s, damping=d)
    assert_trees_close(eager, prior, rtol=1e-12, atol=1e-14)
    assert_trees_close(_update(tx, g, params, eager), updates, rtol=1e-12, atol=1e-14)


def test_kfac_trajectory_on_quadratic(x64):
    params, fac, _ = _kfac_setup()
    loss, h, c = _quadratic(jax.random.PRNGKey(1), params)
    mu = _params(jax.random.PRNGKey(11), jnp.float64)
    s, d, lr = 1.5, 0.4, 0.1
    tx = ncl(lr)
    prior = ncl_consolidate(_init_kfac(params), mu, fac, strength=s, damping=d)
    opt_state = tx.init(params)
    p, ref = params, params
    for _ in range(3):
        updates, opt_state = tx.update(jax.grad(loss)(p), opt_state, p, ncl_state=prior)
        p = optax.apply_updates(p, updates)
        step = _kfac_closed_form(fac["Dense_0"], s, d, jax.grad(loss)(ref), ref, mu)
        ref = jax.tree.map(lambda x, u: x - lr * u, ref, step)
    assert_trees_close(p, ref, rtol=1e-10)


def test_kfac_identity_precision_is_sgd_plus_pull(x64):
    params, fac, _ = _kfac_setup()
    mu = _params(jax.random.PRNGKey(11), jnp.float64)
    g = _params(jax.random.PRNGKey(12), jnp.float64)
    tx = ncl(0.1)
    zero = {"Dense_0": KFACFactors(jnp.zeros((4, 4)), jnp.zeros((2, 2)))}
    prior = ncl_consolidate(_init_kfac(params), mu, zero, strength=1.0,
                            damping=1.0)  # Λ = 0 + 1·I
    assert float(prior.inverse.other) == 1.0
    updates = _update(tx, g, params, prior)
    assert_trees_close(updates, jax.tree.map(lambda gg, p, m: -0.1 * (gg + p - m), g, params, mu),
                       rtol=1e-13, atol=1e-14)
    # before any consolidation: plain SGD (identity inverses, other = 1, no pull)
    empty = _init_kfac(params)
    assert isinstance(empty, NCLState) and float(empty.inverse.other) == 1.0
    assert float(empty.precision.other) == 0.0
    updates = _update(tx, g, params, empty)
    assert_trees_close(updates, jax.tree.map(lambda gg: -0.1 * gg, g), rtol=1e-14)


def test_kfac_other_is_inverse_damping_after_consolidation(x64):
    """Parameters outside factor layers get Λ⁻¹ = 1/d after the first boundary (inverse.other)."""
    params, fac, _ = _kfac_setup()
    g = _params(jax.random.PRNGKey(12), jnp.float64)
    tx = ncl_preconditioner()
    empty = _init_kfac(params)
    prior = empty
    for d in (0.25, 4.0):
        prior = ncl_consolidate(prior, params, fac, strength=1.0, damping=d)
        np.testing.assert_allclose(prior.inverse.other, 1 / d, rtol=1e-14)
        np.testing.assert_allclose(_update(tx, g, params, prior)["scale"], g["scale"] / d,
                                   rtol=1e-14)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), prior) == \
        jax.tree.map(lambda x: (x.shape, x.dtype), empty)


def test_kfac_ncl_consolidate_uses_nearest_kronecker_sum(x64):
    params, fac, keys = _kfac_setup()
    fac2 = {"Dense_0": KFACFactors(_spd(keys[2], 4), _spd(keys[3], 2))}
    hp = dict(strength=1.0, damping=0.1)
    s = ncl_consolidate(_init_kfac(params), params, fac, **hp)
    assert_trees_close(s.precision.factors["Dense_0"], fac["Dense_0"], rtol=1e-12)
    s = ncl_consolidate(s, params, fac2, decay=0.7, **hp)
    x, y = nearest_kronecker_sum(0.7 * fac["Dense_0"].A, fac["Dense_0"].G, fac2["Dense_0"].A,
                                 fac2["Dense_0"].G)
    np.testing.assert_allclose(jnp.kron(*s.precision.factors["Dense_0"]), jnp.kron(x, y),
                               rtol=1e-10)
    # Frobenius-optimal: no better than the exact sum, and better than the plain factor sum
    exact = 0.7 * jnp.kron(*fac["Dense_0"]) + jnp.kron(*fac2["Dense_0"])
    plain = jnp.kron(0.7 * fac["Dense_0"].A + fac2["Dense_0"].A,
                     fac["Dense_0"].G + fac2["Dense_0"].G)
    assert jnp.linalg.norm(jnp.kron(x, y) - exact) < jnp.linalg.norm(plain - exact)


def test_kfac_vmap_over_strength_and_no_recompile():
    params, fac, _ = _kfac_setup(jnp.float32)
    fac = {"Dense_0": KFACFactors(*(jnp.asarray(m, jnp.float32) for m in fac["Dense_0"]))}
    g = _params(jax.random.PRNGKey(2))
    tx = ncl(0.1)

    @jax.jit
    def make(lam):
        return ncl_consolidate(_init_kfac(params), params, fac, strength=lam, damping=0.5)

    step = jax.jit(lambda prior, p: _update(tx, g, p, prior))
    lams = jnp.array([0.0, 1.0, 10.0])
    batched = jax.vmap(step, in_axes=(0, None))(jax.vmap(make)(lams), params)
    for k, lam in enumerate(lams):
        assert_trees_close(jax.tree.map(lambda x: x[k], batched), step(make(lam), params),
                           rtol=1e-4, atol=1e-5)
    n = step._cache_size()
    prior = _init_kfac(params)
    step(prior, params)
    boundary = jax.jit(lambda st, lam: ncl_consolidate(st, params, fac, strength=lam,
                                                       damping=lam / 10))
    for lam in (2.0, 3.0):
        prior = boundary(prior, lam)
        step(prior, params)
    assert step._cache_size() == n == 1 and boundary._cache_size() == 1


def _mlp_problem():
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

    return model, x, params, loss, factors


def test_kfac_fused_gradient_equals_preconditioning_the_gradient(x64):
    """ncl_kfac_value_and_grad (with has_aux) + preconditioned_gradients=True gives the same
    trajectory, losses and aux as jax.value_and_grad + the transform, before and after
    consolidations, vmapped over a traced strength."""
    model, x, params, loss, factors = _mlp_problem()

    def loss_aux(q):
        logits = model.logits_fn(q, {"x": x})
        return loss(q), {"logits": logits}

    def trajectory(fused, strength):
        tx = ncl(0.05, momentum=0.9, preconditioned_gradients=fused)
        p, opt_state, prior = params, tx.init(params), _init_kfac(params)
        values, logits = [], []

        def step(carry, _):
            p, opt_state = carry
            if fused:
                (v, aux), g = ncl_kfac_value_and_grad(loss_aux, prior, p, has_aux=True)
            else:
                (v, aux), g = jax.value_and_grad(loss_aux, has_aux=True)(p)
            updates, opt_state = tx.update(g, opt_state, p, ncl_state=prior)
            return (optax.apply_updates(p, updates), opt_state), (v, aux["logits"])

        for t in range(2):   # two tasks of three steps; the second under the first's prior
            (p, opt_state), (v, lg) = jax.lax.scan(step, (p, opt_state), None, length=3)
            values.append(v)
            logits.append(lg)
            prior = ncl_consolidate(prior, p, factors(10 * t), strength=strength, damping=0.3)
        return p, jnp.concatenate(values), jnp.concatenate(logits)

    # the fused path vmapped over a traced strength == the plain path called once per strength
    lams = jnp.array([0.5, 4.0])
    batched = jax.jit(jax.vmap(lambda s: trajectory(True, s)))(lams)
    plain = jax.jit(lambda s: trajectory(False, s))
    for k, lam in enumerate(lams):
        assert_trees_close(jax.tree.map(lambda a: a[k], batched), plain(lam), rtol=1e-9,
                           atol=1e-12)
    assert plain._cache_size() == 1


def test_kfac_value_and_grad_has_aux(x64):
    """has_aux returns ((loss, aux), grad) with the same preconditioned gradient as without."""
    params, fac, _ = _kfac_setup()
    xin = jax.random.normal(jax.random.PRNGKey(5), (4, 3), jnp.float64)

    def loss_aux(p, scale):
        h = jnp.tanh(xin @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
        return scale * (jnp.sum(h ** 2) + jnp.sum(p["scale"] ** 3)), {"h": h, "n": jnp.int32(4)}

    @jax.jit
    def run(p, prior):
        plain = ncl_kfac_value_and_grad(lambda q, s: loss_aux(q, s)[0], prior, p, 2.0)
        with_aux = ncl_kfac_value_and_grad(loss_aux, prior, p, 2.0, has_aux=True)
        pre = _update(ncl_preconditioner(), jax.grad(lambda q: loss_aux(q, 2.0)[0])(p),
                      p, prior)
        return plain, with_aux, pre

    for prior in (_init_kfac(params),
                  ncl_consolidate(_init_kfac(params), params, fac, strength=2.0,
                                  damping=0.3)):
        (value, g), ((value_aux, aux), g_aux), pre = run(params, prior)
        np.testing.assert_allclose(value_aux, value, rtol=1e-14)
        np.testing.assert_allclose(value, loss_aux(params, 2.0)[0], rtol=1e-14)
        assert_trees_close(g_aux, g, rtol=1e-14, atol=1e-15)
        assert_trees_close(aux["h"], loss_aux(params, 2.0)[1]["h"], rtol=1e-14)
        assert int(aux["n"]) == 4
        assert_trees_close(g_aux, pre, rtol=1e-10, atol=1e-13)   # pull is 0: params == mean
    with pytest.raises(ValueError, match="float scalar loss"):
        ncl_kfac_value_and_grad(lambda q: (jnp.ones(2) * jnp.sum(q["scale"]), None),
                                _init_kfac(params), params, has_aux=True)


def test_bad_inputs_raise():
    params, fac, _ = _kfac_setup(jnp.float32)
    tx = ncl_preconditioner()
    st = init_ncl(params)
    hp = dict(strength=1.0, damping=0.5)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params), None, ncl_state=st)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params), {"scale": params["scale"]}, ncl_state=st)
    with pytest.raises(ValueError, match="importance"):
        ncl_consolidate(st, params, {"scale": params["scale"]}, **hp)
    with pytest.raises(ValueError, match="params"):
        ncl_consolidate(st, {"scale": params["scale"]}, jax.tree.map(jnp.abs, params), **hp)
    with pytest.raises(ValueError, match="decay"):
        ncl_consolidate(st, params, jax.tree.map(jnp.abs, params), decay=1.5, **hp)
    with pytest.raises(ValueError, match="negative"):
        ncl_consolidate(st, params, jax.tree.map(lambda p: -jnp.abs(p) - 1, params), **hp)
    with pytest.raises(TypeError, match="strength"):    # required keyword arguments
        ncl_consolidate(st, params, jax.tree.map(jnp.abs, params))
    with pytest.raises(TypeError, match="damping"):
        ncl_consolidate(_init_kfac(params), params, fac, strength=1.0)
    ktx = ncl_preconditioner()
    kst = _init_kfac(params)
    with pytest.raises(ValueError, match="params"):
        ktx.update(params, ktx.init(params), None, ncl_state=kst)
    with pytest.raises(ValueError, match="Dense_7"):
        ncl_consolidate(kst, params, {"Dense_7": fac["Dense_0"]}, **hp)
    with pytest.raises(ValueError, match=r"factors\['Dense_0'\]"):
        ncl_consolidate(kst, params, {"Dense_0": KFACFactors(jnp.eye(3), jnp.eye(2))}, **hp)
    with pytest.raises(TypeError, match="factors"):
        ncl_consolidate(kst, params, [fac["Dense_0"]], **hp)
    with pytest.raises(ValueError, match="decay"):
        ncl_consolidate(kst, params, fac, decay=0.0, **hp)
    with pytest.raises(ValueError, match="layers"):
        _init_kfac(params, layers=["Dense_3"])
    with pytest.raises(ValueError, match="layers"):      # layers are for curvature="kfac"
        init_ncl(params, layers=["Dense_0"])
    with pytest.raises(ValueError, match="curvature"):
        init_ncl(params, curvature="full")
    assert list(_init_kfac(params, layers="Dense_0").inverse.factors) == ["Dense_0"]
    with pytest.raises(TypeError, match="preconditioned_gradients"):
        ncl_preconditioner(preconditioned_gradients="yes")
    with pytest.raises(TypeError, match="preconditioned_gradients"):
        ncl(0.1, preconditioned_gradients=1)


def test_missing_or_wrong_state_raises():
    params, fac, _ = _kfac_setup(jnp.float32)
    st, kst = init_ncl(params), _init_kfac(params)
    imp = jax.tree.map(jnp.abs, params)
    cases = [(ncl_preconditioner(), st), (ncl(0.1), kst),
             (ncl(0.1, preconditioned_gradients=True), kst)]
    for tx, good in cases:
        opt_state = tx.init(params)
        with pytest.raises(ValueError, match="ncl_state="):
            tx.update(params, opt_state, params)
        with pytest.raises(ValueError, match="ncl_state="):
            tx.update(params, opt_state, params, penalty_state=good)
        for wrong in (init_penalty(params), init_penalty(params, curvature="kfac"), opt_state):
            with pytest.raises(TypeError, match="ncl_state must be an? NCLState"):
                tx.update(params, opt_state, params, ncl_state=wrong)
    for wrong in (init_penalty(params), ncl(0.1).init(params), None):
        with pytest.raises(TypeError, match="NCLState"):
            ncl_consolidate(wrong, params, imp, strength=1.0, damping=0.5)
    # one state type: the prior's curvature decides what the boundary accepts
    with pytest.raises(ValueError, match="importance"):      # factors for a diagonal prior
        ncl_consolidate(st, params, fac, strength=1.0, damping=0.5)
    with pytest.raises(TypeError, match="importance"):
        ncl_consolidate(st, params, KroneckerFactored(fac, jnp.zeros(())), strength=1.0,
                        damping=0.5)
    with pytest.raises(TypeError, match="factors"):          # an importance for a K-FAC prior
        ncl_consolidate(kst, params, Diagonal(imp), strength=1.0, damping=0.5)
    with pytest.raises(ValueError, match="factors"):
        ncl_consolidate(kst, params, imp, strength=1.0, damping=0.5)
    with pytest.raises(TypeError, match="K-FAC prior"):
        ncl_kfac_value_and_grad(lambda p: jnp.sum(p["scale"]), st, params)
    with pytest.raises(TypeError, match="NCLState"):
        ncl_kfac_value_and_grad(lambda p: jnp.sum(p["scale"]), init_penalty(params), params)
    with pytest.raises(ValueError, match="ncl_state="):
        ncl_kfac_value_and_grad(lambda p: jnp.sum(p["scale"]), None, params)


def test_preconditioned_gradients_only_add_the_pull_for_either_prior(x64):
    params, fac, _ = _kfac_setup()
    mu = _params(jax.random.PRNGKey(11), jnp.float64)
    g = _params(jax.random.PRNGKey(12), jnp.float64)
    imp = jax.tree.map(jnp.abs, _params(jax.random.PRNGKey(13), jnp.float64))
    for prior in (ncl_consolidate(init_ncl(params), mu, imp, strength=2.0, damping=0.3),
                  ncl_consolidate(_init_kfac(params), mu, fac, strength=2.0, damping=0.3)):
        out = _update(ncl_preconditioner(preconditioned_gradients=True), g, params, prior)
        assert_trees_close(out, jax.tree.map(lambda a, p, m: a + p - m, g, params, mu),
                           rtol=1e-14)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_hyperparameters_importance_factors_params_rejected(bad):
    params, fac, _ = _kfac_setup(jnp.float32)
    fac = jax.tree.map(lambda m: m.astype(jnp.float32), fac)
    st, kst = init_ncl(params), _init_kfac(params)
    imp = jax.tree.map(jnp.abs, params)
    boundaries = [lambda **kw: ncl_consolidate(st, params, imp, **kw),
                  lambda **kw: ncl_consolidate(kst, params, fac, **kw)]
    for cons in boundaries:
        for b in (bad, -bad, np.float32(bad), jnp.asarray(bad)):
            with pytest.raises(ValueError, match="strength"):
                cons(strength=b, damping=0.5)
            with pytest.raises(ValueError, match="damping"):
                cons(strength=1.0, damping=b)
            with pytest.raises(ValueError, match="decay"):
                cons(strength=1.0, damping=0.5, decay=b)
    hp = dict(strength=1.0, damping=0.5)
    with pytest.raises(FloatingPointError, match=r"importance\['scale'\]"):
        ncl_consolidate(st, params, dict(imp, scale=imp["scale"].at[1].set(bad)), **hp)
    bad_params = dict(params, scale=params["scale"].at[0].set(bad))
    with pytest.raises(FloatingPointError, match=r"params\['scale'\]"):
        ncl_consolidate(st, bad_params, imp, **hp)
    with pytest.raises(FloatingPointError, match=r"params\['scale'\]"):
        ncl_consolidate(kst, bad_params, fac, **hp)
    bad_fac = {"Dense_0": KFACFactors(fac["Dense_0"].A.at[0, 3].set(bad), fac["Dense_0"].G)}
    with pytest.raises(FloatingPointError, match=r"factors\['Dense_0'\]"):
        ncl_consolidate(kst, params, bad_fac, **hp)


@pytest.mark.parametrize("damping", [0.0, -0.1, np.float32(0.0), jnp.zeros(())])
def test_damping_must_be_positive_and_strength_nonnegative(damping):
    params, fac, _ = _kfac_setup(jnp.float32)
    fac = jax.tree.map(lambda m: m.astype(jnp.float32), fac)
    imp = jax.tree.map(jnp.abs, params)
    with pytest.raises(ValueError, match="damping must be > 0"):
        ncl_consolidate(init_ncl(params), params, imp, strength=1.0, damping=damping)
    with pytest.raises(ValueError, match="damping must be > 0"):
        ncl_consolidate(_init_kfac(params), params, fac, strength=1.0, damping=damping)
    with pytest.raises(ValueError, match="strength must be >= 0"):
        ncl_consolidate(init_ncl(params), params, imp, strength=-1.0, damping=0.5)
    with pytest.raises(ValueError, match="strength must be >= 0"):
        ncl_consolidate(_init_kfac(params), params, fac, strength=-1.0, damping=0.5)


def test_non_numeric_hyperparameters_are_type_errors():
    params, fac, _ = _kfac_setup(jnp.float32)
    fac = jax.tree.map(lambda m: m.astype(jnp.float32), fac)
    imp = jax.tree.map(jnp.abs, params)
    for cons in (lambda **kw: ncl_consolidate(init_ncl(params), params, imp, **kw),
                 lambda **kw: ncl_consolidate(_init_kfac(params), params, fac, **kw)):
        with pytest.raises(TypeError, match="strength"):
            cons(strength="abc", damping=0.5)
        with pytest.raises(TypeError, match="damping"):
            cons(strength=1.0, damping="abc")
        with pytest.raises(TypeError, match="decay"):
            cons(strength=1.0, damping=0.5, decay="abc")
