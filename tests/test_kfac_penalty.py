"""Tests for cljax.transforms.kfac_penalty (K-FAC Laplace penalty, Ritter et al. 2018).

The CL state (:class:`KFACPenaltyState`, from :func:`init_kfac_penalty`) is passed to ``update``
as the optax extra argument ``kfac_penalty_state``; λ is a factory argument.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.transforms import (KFACPenaltyState, init_kfac_penalty, init_penalty,
                              kfac_consolidate, kfac_ewc, kfac_penalty, kfac_penalty_loss,
                              nearest_kronecker_sum)
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


def _update(tx, g, params, state):
    """One update of a bare kfac_penalty (its own state is empty)."""
    return tx.update(g, tx.init(params), params, kfac_penalty_state=state)[0]


def test_layers_found_and_zero_before_consolidate(x64):
    params = _params(jax.random.PRNGKey(0))
    tx = kfac_penalty(strength=1e6)
    assert tx.init(params) == optax.EmptyState()
    state = init_kfac_penalty(params)
    assert isinstance(state, KFACPenaltyState) and int(state.count) == 0
    assert {k: (f.A.shape[-1], f.G.shape[-1]) for k, f in state.factors.items()} == SHAPES
    moved = jax.tree.map(lambda p: p + 5.0, params)
    g = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(g, tx.init(params), moved, kfac_penalty_state=state)
    for u, v in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
        assert np.array_equal(np.asarray(u), np.asarray(v))
    assert float(kfac_penalty_loss(state, moved, strength=1e6)) == 0.0


def test_penalty_equals_dense_kron_form_and_gradient(x64):
    params = _params(jax.random.PRNGKey(0))
    anchor = _params(jax.random.PRNGKey(1))
    fac = _factors(1)
    lam = 2.5
    tx = kfac_penalty(strength=lam)
    state = jax.jit(lambda s: kfac_consolidate(s, anchor, fac, mode="replace"))(
        init_kfac_penalty(params))
    np.testing.assert_allclose(kfac_penalty_loss(state, params, strength=lam),
                               _dense_penalty(params, anchor, fac, lam), rtol=1e-12)
    np.testing.assert_allclose(kfac_penalty_loss(state, params),   # default λ = 1
                               _dense_penalty(params, anchor, fac, 1.0), rtol=1e-12)
    updates = jax.jit(lambda g, p, s: _update(tx, g, p, s))(_zeros(params), params, state)
    dense_grad = jax.jit(jax.grad(_dense_penalty))(params, anchor, fac, lam)
    assert_trees_close(updates, dense_grad, rtol=1e-11, atol=1e-13)
    assert_trees_close(updates, jax.jit(jax.grad(
        lambda s, p: kfac_penalty_loss(s, p, strength=lam), 1))(state, params),
        rtol=1e-11, atol=1e-13)
    # eager == jit
    assert_trees_close(_update(tx, _zeros(params), params, state), updates, rtol=1e-12,
                       atol=1e-14)
    # parameters outside factor layers get zero penalty
    assert np.all(np.asarray(updates["LayerNorm_0"]["scale"]) == 0.0)


def test_first_in_chain_equals_grad_of_explicit_loss_through_adam(x64):
    params = _params(jax.random.PRNGKey(0))
    anchor = _params(jax.random.PRNGKey(1))
    task_loss = lambda p: sum(jnp.sum(jnp.cos(x)) for x in jax.tree.leaves(p))
    tx = kfac_ewc(1e-2, strength=3.0)
    opt_state = tx.init(params)
    pen = kfac_consolidate(init_kfac_penalty(params), anchor, _factors(2), mode="online")
    ref_tx = optax.adam(1e-2)
    ref_state = ref_tx.init(params)

    @jax.jit
    def both(p, opt_state, q, ref_state):
        u, opt_state = tx.update(jax.grad(task_loss)(p), opt_state, p, kfac_penalty_state=pen)
        total = lambda x: task_loss(x) + kfac_penalty_loss(pen, x, strength=3.0)
        v, ref_state = ref_tx.update(jax.grad(total)(q), ref_state, q)
        return optax.apply_updates(p, u), opt_state, optax.apply_updates(q, v), ref_state

    p, q = params, params
    for _ in range(4):
        p, opt_state, q, ref_state = both(p, opt_state, q, ref_state)
    assert_trees_close(p, q, rtol=1e-11, atol=1e-12)
    assert isinstance(opt_state[0], optax.EmptyState)


def test_multi_task_equals_sum_of_per_task_penalties(x64):
    params = _params(jax.random.PRNGKey(0))
    tasks = [(_params(jax.random.PRNGKey(10 + t)), _factors(20 + t)) for t in range(3)]
    tasks[1] = (tasks[1][0], {k: v for k, v in tasks[1][1].items() if k != "Conv_0"})
    tx = kfac_penalty(strength=1.5)
    update = jax.jit(lambda g, p, s: _update(tx, g, p, s))
    state = init_kfac_penalty(params, num_slots=3)
    for n, (anchor, fac) in enumerate(tasks):
        state = kfac_consolidate(state, anchor, fac, mode="multi_task")
        if n < 2:  # partly filled slots: only the filled ones count
            partial = jax.tree.map(lambda *g: sum(g), *[
                jax.grad(_dense_penalty)(params, a, f, 1.5) for a, f in tasks[:n + 1]])
            assert_trees_close(update(_zeros(params), params, state), partial,
                               rtol=1e-11, atol=1e-13)
    assert int(state.count) == 3 and update._cache_size() == 1
    expected = sum(_dense_penalty(params, a, f, 1.5) for a, f in tasks)
    np.testing.assert_allclose(kfac_penalty_loss(state, params, strength=1.5), expected,
                               rtol=1e-12)
    updates = _update(tx, _zeros(params), params, state)
    expected_grad = jax.tree.map(lambda *g: sum(g), *[
        jax.grad(_dense_penalty)(params, a, f, 1.5) for a, f in tasks])
    assert_trees_close(updates, expected_grad, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="num_slots"):
        kfac_consolidate(state, params, tasks[0][1], mode="multi_task")


def test_online_and_sum_modes(x64):
    params = _params(jax.random.PRNGKey(0))
    f1, f2 = _factors(3), _factors(4)
    s0 = init_kfac_penalty(params)
    # proportional factors: the nearest-Kronecker sum is exact, γ·A⊗G + (2A)⊗(3G) = (γ+6) A⊗G
    f_prop = {k: KFACFactors(2 * f.A, 3 * f.G) for k, f in f1.items()}
    s = kfac_consolidate(s0, params, f1, mode="online", decay=0.5)
    s = kfac_consolidate(s, params, f_prop, mode="online", decay=0.5)
    for k, f in f1.items():
        np.testing.assert_allclose(jnp.kron(s.factors[k].A[0], s.factors[k].G[0]),
                                   6.5 * jnp.kron(f.A, f.G), rtol=1e-10)
    # general factors: matches nearest_kronecker_sum; anchor is the latest params
    anchor = _params(jax.random.PRNGKey(5))
    s = kfac_consolidate(kfac_consolidate(s0, params, f1), anchor, f2)
    for k in f1:
        x, y = nearest_kronecker_sum(f1[k].A, f1[k].G, f2[k].A, f2[k].G)
        np.testing.assert_allclose(jnp.kron(s.factors[k].A[0], s.factors[k].G[0]),
                                   jnp.kron(x, y), rtol=1e-10)
    assert_trees_close(s.anchors, jax.tree.map(lambda a: a[None], anchor))
    s = kfac_consolidate(kfac_consolidate(s0, params, f1, mode="sum"),
                         params, f2, mode="sum")
    for k in f1:
        assert_trees_close(s.factors[k], KFACFactors((f1[k].A + f2[k].A)[None],
                                                     (f1[k].G + f2[k].G)[None]), rtol=1e-14)
    s = kfac_consolidate(kfac_consolidate(s0, params, f1), params, f2, mode="replace")
    for k in f1:
        assert_trees_close(s.factors[k], KFACFactors(f2[k].A[None], f2[k].G[None]), rtol=1e-14)
    assert int(s0.count) == 0  # pure


def test_vmap_over_traced_strength_and_no_recompile():
    params = _params(jax.random.PRNGKey(0), jnp.float32)
    fac = _factors(5, jnp.float32)
    g = jax.tree.map(jnp.ones_like, params)
    opt_state = kfac_ewc(1e-2).init(params)

    def step(lam, st, p):
        tx = kfac_ewc(1e-2, strength=lam)   # λ from the (traced) hyperparameters
        return optax.apply_updates(p, tx.update(g, opt_state, p, kfac_penalty_state=st)[0])

    jstep = jax.jit(step)
    boundary = jax.jit(lambda st, a: kfac_consolidate(st, a, fac, mode="multi_task"))
    state = boundary(init_kfac_penalty(params, num_slots=2),
                     jax.tree.map(lambda x: x - 1, params))
    lams = jnp.array([0.0, 1.0, 100.0])
    batched = jax.jit(jax.vmap(step, in_axes=(0, None, None)))(lams, state, params)
    for k, lam in enumerate(lams):
        assert_trees_close(jax.tree.map(lambda x: x[k], batched), jstep(lam, state, params),
                           rtol=1e-5)
    # λ = 0: plain Adam
    plain, _ = optax.adam(1e-2).update(g, opt_state[1], params)
    assert_trees_close(jax.tree.map(lambda x: x[0], batched), optax.apply_updates(params, plain),
                       rtol=1e-6)
    n = jstep._cache_size()
    st = init_kfac_penalty(params, num_slots=2)
    jstep(jnp.float32(1.0), st, params)
    for lam in (5.0, np.float32(7.0)):
        st = boundary(st, params)
        jstep(jnp.float32(lam), st, params)
    assert jstep._cache_size() == n == 1 and boundary._cache_size() == 1


def test_layers_argument_restricts_tracking():
    params = _params(jax.random.PRNGKey(0), jnp.float32)
    state = init_kfac_penalty(params, layers=["Dense_0"])
    assert list(state.factors) == ["Dense_0"]
    assert list(init_kfac_penalty(params, layers="Block_0/Dense_1").factors) == ["Block_0/Dense_1"]
    with pytest.raises(ValueError, match="Conv_0"):
        kfac_consolidate(state, params, _factors(1, jnp.float32))
    # only the tracked layer is penalised
    s = kfac_consolidate(state, jax.tree.map(lambda x: x - 1, params),
                         _factors(1, jnp.float32, names=("Dense_0",)))
    u = _update(kfac_penalty(strength=1.0), _zeros(params), params, s)
    assert float(jnp.max(jnp.abs(u["Dense_0"]["kernel"]))) > 0
    for leaf in jax.tree.leaves({k: v for k, v in u.items() if k != "Dense_0"}):
        assert np.all(np.asarray(leaf) == 0)


def test_bad_inputs_raise():
    params = _params(jax.random.PRNGKey(0), jnp.float32)
    fac = _factors(1, jnp.float32)
    with pytest.raises(ValueError, match="strength"):
        kfac_penalty(strength=-1.0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_slots"):
            init_kfac_penalty(params, num_slots=bad)
    with pytest.raises(ValueError, match="layers"):
        init_kfac_penalty(params, layers=["Dense_9"])
    tx = kfac_penalty()
    state = init_kfac_penalty(params)
    e = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, e, None, kfac_penalty_state=state)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, e, {"Dense_0": params["Dense_0"]}, kfac_penalty_state=state)
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
        kfac_consolidate(init_kfac_penalty(params, num_slots=2), params, fac, mode="online")
    with pytest.raises(ValueError, match="params"):
        kfac_consolidate(state, {"Dense_0": params["Dense_0"]}, fac)


def test_missing_or_wrong_state_raises():
    params = _params(jax.random.PRNGKey(0), jnp.float32)
    fac = _factors(1, jnp.float32)
    state = init_kfac_penalty(params)
    for tx in (kfac_penalty(strength=1.0), kfac_ewc(1e-3, strength=1.0)):
        opt_state = tx.init(params)
        with pytest.raises(ValueError, match="kfac_penalty_state="):
            tx.update(params, opt_state, params)
        with pytest.raises(ValueError, match="kfac_penalty_state="):   # the other family's name
            tx.update(params, opt_state, params, penalty_state=state)
        with pytest.raises(TypeError, match="kfac_penalty_state must be a KFACPenaltyState"):
            tx.update(params, opt_state, params, kfac_penalty_state=init_penalty(params))
    for wrong in (init_penalty(params), kfac_ewc(1e-3).init(params), None):
        with pytest.raises(TypeError, match="KFACPenaltyState"):
            kfac_consolidate(wrong, params, fac)
        with pytest.raises(TypeError, match="KFACPenaltyState"):
            kfac_penalty_loss(wrong, params)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_hyperparameters_factors_and_params_rejected(bad):
    params = _params(jax.random.PRNGKey(0), jnp.float32)
    fac = _factors(1, jnp.float32)
    state = init_kfac_penalty(params)
    for b in (bad, -bad, np.float32(bad), jnp.asarray(bad)):
        with pytest.raises(ValueError, match="strength"):
            kfac_penalty(strength=b)
        with pytest.raises(ValueError, match="strength"):
            kfac_ewc(1e-3, strength=b)
        with pytest.raises(ValueError, match="strength"):
            kfac_penalty_loss(state, params, strength=b)
        with pytest.raises(ValueError, match="decay"):
            kfac_consolidate(state, params, fac, decay=b)
    bad_a = dict(fac, Conv_0=KFACFactors(fac["Conv_0"].A.at[1, 2].set(bad), fac["Conv_0"].G))
    with pytest.raises(FloatingPointError, match=r"factors\['Conv_0'\]"):
        kfac_consolidate(state, params, bad_a)
    bad_g = {"Dense_0": KFACFactors(fac["Dense_0"].A, fac["Dense_0"].G * bad)}
    for mode in ("online", "sum", "replace"):
        with pytest.raises(FloatingPointError, match="factors"):
            kfac_consolidate(state, params, bad_g, mode=mode)
    with pytest.raises(FloatingPointError, match="factors"):
        kfac_consolidate(init_kfac_penalty(params, num_slots=2), params, bad_g, mode="multi_task")
    bad_params = {**params, "LayerNorm_0": {"scale": params["LayerNorm_0"]["scale"].at[0].set(bad)}}
    with pytest.raises(FloatingPointError, match=r"params\['LayerNorm_0'\]\['scale'\]"):
        kfac_consolidate(state, bad_params, fac)


def test_non_numeric_strength_or_decay_is_a_type_error():
    params = _params(jax.random.PRNGKey(0), jnp.float32)
    with pytest.raises(TypeError, match="strength"):
        kfac_penalty(strength="abc")
    with pytest.raises(TypeError, match="strength"):
        kfac_ewc(1e-3, strength="abc")
    with pytest.raises(TypeError, match="strength"):
        kfac_penalty_loss(init_kfac_penalty(params), params, strength="abc")
    with pytest.raises(TypeError, match="decay"):
        kfac_consolidate(init_kfac_penalty(params), params, _factors(1, jnp.float32), decay="abc")
