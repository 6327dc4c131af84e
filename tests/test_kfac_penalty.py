"""Tests for cljax.transforms.kfac_penalty (K-FAC Laplace penalty, Ritter et al. 2018)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.transforms import (KFACPenaltyState, kfac_consolidate, kfac_ewc, kfac_penalty,
                              kfac_penalty_loss, nearest_kronecker_sum, set_strength)
from cljax.types import KFACFactors
from helpers import assert_trees_close


def _params(key, dtype=jnp.float64):
    ks = jax.random.split(key, 5)
    return {"Dense_0": {"kernel": jax.random.normal(ks[0], (3, 2), dtype),
                        "bias": jax.random.normal(ks[1], (2,), dtype)},
            "Conv_0": {"kernel": jax.random.normal(ks[2], (2, 2, 1, 3), dtype)},  # no bias
            "LayerNorm_0": {"scale": jax.random.normal(ks[3], (2,), dtype)},
            "Block_0": {"Dense_1": {"kernel": jax.random.normal(ks[4], (2, 2), dtype),
                                    "bias": jnp.zeros((2,), dtype)}}}


SHAPES = {"Dense_0": (4, 2), "Conv_0": (4, 3), "Block_0/Dense_1": (3, 2)}


def _spd(key, n, dtype=jnp.float64):
    m = jax.random.normal(key, (n, n), dtype)
    return m @ m.T / n + 0.1 * jnp.eye(n, dtype=dtype)


def _factors(seed, dtype=jnp.float64, names=tuple(SHAPES)):
    out = {}
    for i, name in enumerate(names):
        ka, kg = jax.random.split(jax.random.PRNGKey(seed * 100 + i))
        n, m = SHAPES[name]
        out[name] = KFACFactors(_spd(ka, n, dtype), _spd(kg, m, dtype))
    return out


def _wbar(node):
    k = node["kernel"]
    w = k.reshape(-1, k.shape[-1])
    return jnp.concatenate([w, node["bias"][None]], 0) if "bias" in node else w


def _get(tree, name):
    for key in name.split("/"):
        tree = tree[key]
    return tree


def _dense_penalty(params, anchor, factors, lam):
    """(λ/2) Σ_l vec(ΔW̄)ᵀ (A ⊗ G) vec(ΔW̄), row-major vec of ΔW̄ [in+1, out], via jnp.kron."""
    total = 0.0
    for name, f in factors.items():
        v = (_wbar(_get(params, name)) - _wbar(_get(anchor, name))).reshape(-1)
        total = total + v @ jnp.kron(f.A, f.G) @ v
    return 0.5 * lam * total


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def test_layers_found_and_zero_before_consolidate(x64):
    params = _params(jax.random.PRNGKey(0))
    tx = kfac_penalty(strength=1e6)
    state = tx.init(params)
    assert {k: (f.A.shape[-1], f.G.shape[-1]) for k, f in state.factors.items()} == SHAPES
    moved = jax.tree.map(lambda p: p + 5.0, params)
    g = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(g, state, moved)
    for u, v in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
        assert np.array_equal(np.asarray(u), np.asarray(v))
    assert float(kfac_penalty_loss(state, moved)) == 0.0


def test_penalty_equals_dense_kron_form_and_gradient(x64):
    params = _params(jax.random.PRNGKey(0))
    anchor = _params(jax.random.PRNGKey(1))
    fac = _factors(1)
    lam = 2.5
    tx = kfac_penalty(strength=lam)
    state = jax.jit(lambda s: kfac_consolidate(s, anchor, fac, mode="replace"))(tx.init(params))
    np.testing.assert_allclose(kfac_penalty_loss(state, params),
                               _dense_penalty(params, anchor, fac, lam), rtol=1e-12)
    updates, _ = jax.jit(tx.update)(_zeros(params), state, params)
    dense_grad = jax.jit(jax.grad(_dense_penalty))(params, anchor, fac, lam)
    assert_trees_close(updates, dense_grad, rtol=1e-11, atol=1e-13)
    assert_trees_close(updates, jax.jit(jax.grad(kfac_penalty_loss, 1))(state, params), rtol=1e-11,
           atol=1e-13)
    # parameters outside factor layers get zero penalty
    assert np.all(np.asarray(updates["LayerNorm_0"]["scale"]) == 0.0)


def test_first_in_chain_equals_grad_of_explicit_loss_through_adam(x64):
    params = _params(jax.random.PRNGKey(0))
    anchor = _params(jax.random.PRNGKey(1))
    task_loss = lambda p: sum(jnp.sum(jnp.cos(x)) for x in jax.tree.leaves(p))
    tx = kfac_ewc(1e-2, strength=3.0)
    state = kfac_consolidate(tx.init(params), anchor, _factors(2), mode="online")
    pen = state[0]
    ref_tx = optax.adam(1e-2)
    ref_state = ref_tx.init(params)

    @jax.jit
    def both(p, state, q, ref_state):
        u, state = tx.update(jax.grad(task_loss)(p), state, p)
        total = lambda x: task_loss(x) + kfac_penalty_loss(pen, x)
        v, ref_state = ref_tx.update(jax.grad(total)(q), ref_state, q)
        return optax.apply_updates(p, u), state, optax.apply_updates(q, v), ref_state

    p, q = params, params
    for _ in range(4):
        p, state, q, ref_state = both(p, state, q, ref_state)
    assert_trees_close(p, q, rtol=1e-11, atol=1e-12)


def test_multi_task_equals_sum_of_per_task_penalties(x64):
    params = _params(jax.random.PRNGKey(0))
    tasks = [(_params(jax.random.PRNGKey(10 + t)), _factors(20 + t)) for t in range(3)]
    tasks[1] = (tasks[1][0], {k: v for k, v in tasks[1][1].items() if k != "Conv_0"})
    tx = kfac_penalty(strength=1.5, num_slots=3)
    state = tx.init(params)
    for n, (anchor, fac) in enumerate(tasks):
        state = kfac_consolidate(state, anchor, fac, mode="multi_task")
        if n < 2:  # partly filled slots: only the filled ones count
            partial = jax.tree.map(lambda *g: sum(g), *[
                jax.grad(_dense_penalty)(params, a, f, 1.5) for a, f in tasks[:n + 1]])
            assert_trees_close(jax.jit(tx.update)(_zeros(params), state, params)[0], partial,
                               rtol=1e-11, atol=1e-13)
    expected = sum(_dense_penalty(params, a, f, 1.5) for a, f in tasks)
    np.testing.assert_allclose(kfac_penalty_loss(state, params), expected, rtol=1e-12)
    updates, _ = tx.update(_zeros(params), state, params)
    expected_grad = jax.tree.map(lambda *g: sum(g), *[
        jax.grad(_dense_penalty)(params, a, f, 1.5) for a, f in tasks])
    assert_trees_close(updates, expected_grad, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="num_slots"):
        kfac_consolidate(state, params, tasks[0][1], mode="multi_task")


def test_online_and_sum_modes(x64):
    params = _params(jax.random.PRNGKey(0))
    f1, f2 = _factors(3), _factors(4)
    tx = kfac_penalty(strength=1.0)
    # proportional factors: the nearest-Kronecker sum is exact, γ·A⊗G + (2A)⊗(3G) = (γ+6) A⊗G
    f_prop = {k: KFACFactors(2 * f.A, 3 * f.G) for k, f in f1.items()}
    s = kfac_consolidate(tx.init(params), params, f1, mode="online", decay=0.5)
    s = kfac_consolidate(s, params, f_prop, mode="online", decay=0.5)
    for k, f in f1.items():
        np.testing.assert_allclose(jnp.kron(s.factors[k].A[0], s.factors[k].G[0]),
                                   6.5 * jnp.kron(f.A, f.G), rtol=1e-10)
    # general factors: matches nearest_kronecker_sum; anchor is the latest params
    s = kfac_consolidate(kfac_consolidate(tx.init(params), params, f1), params, f2)
    for k in f1:
        x, y = nearest_kronecker_sum(f1[k].A, f1[k].G, f2[k].A, f2[k].G)
        np.testing.assert_allclose(jnp.kron(s.factors[k].A[0], s.factors[k].G[0]),
                                   jnp.kron(x, y), rtol=1e-10)
    s = kfac_consolidate(kfac_consolidate(tx.init(params), params, f1, mode="sum"),
                         params, f2, mode="sum")
    for k in f1:
        assert_trees_close(s.factors[k], KFACFactors((f1[k].A + f2[k].A)[None], (f1[k].G + f2[k].G)[None]),
               rtol=1e-14)


def test_vmap_over_strength_and_no_recompile():
    params = _params(jax.random.PRNGKey(0), jnp.float32)
    fac = _factors(5, jnp.float32)
    tx = kfac_ewc(1e-2, num_slots=2)
    g = jax.tree.map(jnp.ones_like, params)
    step = jax.jit(lambda st, p: optax.apply_updates(p, tx.update(g, st, p)[0]))
    make = jax.jit(lambda lam: kfac_consolidate(set_strength(tx.init(params), lam),
                                                jax.tree.map(lambda x: x - 1, params), fac,
                                                mode="multi_task"))
    lams = jnp.array([0.0, 1.0, 100.0])
    batched = jax.vmap(step, in_axes=(0, None))(jax.vmap(make)(lams), params)
    for k, lam in enumerate(lams):
        assert_trees_close(jax.tree.map(lambda x: x[k], batched), step(make(lam), params), rtol=1e-5)
    n = step._cache_size()
    state = tx.init(params)
    step(state, params)
    boundary = jax.jit(lambda st, lam: kfac_consolidate(set_strength(st, lam), params, fac,
                                                        mode="multi_task"))
    for lam in (5.0, np.float32(7.0)):
        state = boundary(state, lam)
        step(state, params)
    assert step._cache_size() == n


def test_layers_argument_restricts_tracking():
    params = _params(jax.random.PRNGKey(0), jnp.float32)
    tx = kfac_penalty(layers=["Dense_0"])
    state = tx.init(params)
    assert list(state.factors) == ["Dense_0"]
    with pytest.raises(ValueError, match="Conv_0"):
        kfac_consolidate(state, params, _factors(1, jnp.float32))


def test_bad_inputs_raise():
    params = _params(jax.random.PRNGKey(0), jnp.float32)
    fac = _factors(1, jnp.float32)
    with pytest.raises(ValueError, match="strength"):
        kfac_penalty(strength=-1.0)
    with pytest.raises(ValueError, match="num_slots"):
        kfac_penalty(num_slots=0)
    with pytest.raises(ValueError, match="layers"):
        kfac_penalty(layers=["Dense_9"]).init(params)
    tx = kfac_penalty()
    state = tx.init(params)
    assert isinstance(state, KFACPenaltyState)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, None)
    with pytest.raises(ValueError, match="Dense_5"):
        kfac_consolidate(state, params, {"Dense_5": fac["Dense_0"]})
    with pytest.raises(ValueError, match=r"factors\['Dense_0'\]"):
        kfac_consolidate(state, params, {"Dense_0": KFACFactors(jnp.eye(3), jnp.eye(2))})
    with pytest.raises(TypeError, match="factors"):
        kfac_consolidate(state, params, [fac["Dense_0"]])
    with pytest.raises(ValueError, match="decay"):
        kfac_consolidate(state, params, fac, decay=0.0)
    with pytest.raises(ValueError, match="decay"):
        kfac_consolidate(state, params, fac, mode="sum", decay=0.5)
    with pytest.raises(ValueError, match="mode"):
        kfac_consolidate(state, params, fac, mode="exact")
    with pytest.raises(ValueError, match="num_slots"):
        kfac_consolidate(kfac_penalty(num_slots=2).init(params), params, fac, mode="online")
    with pytest.raises(ValueError, match="params"):
        kfac_consolidate(state, {"Dense_0": params["Dense_0"]}, fac)
