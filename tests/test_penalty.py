"""Tests for cljax.transforms.penalty (EWC / online EWC / SI / MAS / L2 quadratic penalty)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.transforms import (QuadraticPenaltyState, consolidate, ewc, online_ewc,
                              penalty_loss, quadratic_penalty, set_strength)


def _params(key, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"Dense_0": {"kernel": jax.random.normal(k1, (3, 4), dtype),
                        "bias": jax.random.normal(k2, (4,), dtype)},
            "scale": jax.random.normal(k3, (), dtype)}


def _importance(key, params):
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return tdef.unflatten([jax.random.uniform(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])


def _task_loss(params):
    return (jnp.sum(jnp.sin(params["Dense_0"]["kernel"]) ** 2)
            + jnp.sum((params["Dense_0"]["bias"] - 1.0) ** 2) + params["scale"] ** 4)


def _state(opt_state):
    return [s for s in opt_state if isinstance(s, QuadraticPenaltyState)][0]


def test_penalty_first_in_chain_equals_grad_of_explicit_loss_through_adam(x64):
    key = jax.random.PRNGKey(0)
    params = _params(key, jnp.float64)
    tx = ewc(1e-2, strength=3.0)
    state = tx.init(params)
    state = consolidate(state, jax.tree.map(lambda p: p + 0.3, params),
                        _importance(jax.random.PRNGKey(1), params), mode="multi_task")
    state = consolidate(state, jax.tree.map(lambda p: p - 0.2, params),
                        _importance(jax.random.PRNGKey(2), params), mode="multi_task")
    ref_tx = optax.adam(1e-2)
    ref_state = ref_tx.init(params)
    p_ref = params
    pen_state = _state(state)
    for _ in range(5):
        g = jax.grad(_task_loss)(params)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        total = lambda p: _task_loss(p) + penalty_loss(pen_state, p)
        ref_updates, ref_state = ref_tx.update(jax.grad(total)(p_ref), ref_state, p_ref)
        p_ref = optax.apply_updates(p_ref, ref_updates)
    assert_trees_close(params, p_ref, rtol=1e-12, atol=1e-12)


def test_update_adds_gradient_of_penalty_loss(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    tx = quadratic_penalty(strength=7.0)
    state = consolidate(tx.init(params), jax.tree.map(lambda p: 0.5 * p, params),
                        _importance(jax.random.PRNGKey(3), params), mode="online", decay=0.5)
    theta = jax.tree.map(lambda p: p + 1.0, params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, theta)
    assert_trees_close(updates, jax.grad(lambda p: penalty_loss(state, p))(theta), rtol=1e-12)


def test_penalty_is_exactly_zero_before_first_consolidate():
    params = _params(jax.random.PRNGKey(0))
    g = _importance(jax.random.PRNGKey(5), params)
    for tx in (quadratic_penalty(strength=1e8), ewc(1e-3, strength=1e8)):
        state = tx.init(params)
        moved = jax.tree.map(lambda p: p + 10.0, params)
        updates, _ = jax.jit(tx.update)(g, state, moved)
        if not isinstance(state, QuadraticPenaltyState):  # through adam: same as plain adam
            g, _ = jax.jit(optax.adam(1e-3).update)(g, state[1], moved)
        for u, v in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
            assert np.array_equal(np.asarray(u), np.asarray(v))
        assert float(penalty_loss(state, moved)) == 0.0


def test_online_ewc_decay_one_equals_summed_importance(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    f1, f2 = (_importance(jax.random.PRNGKey(i), params) for i in (1, 2))
    th1 = jax.tree.map(lambda p: p + 0.1, params)
    th2 = jax.tree.map(lambda p: p - 0.4, params)
    tx = quadratic_penalty(strength=2.5)
    online = consolidate(consolidate(tx.init(params), th1, f1, mode="online", decay=1.0),
                         th2, f2, mode="online", decay=1.0)
    summed = consolidate(tx.init(params), th2, jax.tree.map(jnp.add, f1, f2), mode="replace")
    theta = _params(jax.random.PRNGKey(9), jnp.float64)
    g = jax.tree.map(jnp.zeros_like, params)
    assert_trees_close(tx.update(g, online, theta)[0], tx.update(g, summed, theta)[0], rtol=1e-13)
    np.testing.assert_allclose(penalty_loss(online, theta), penalty_loss(summed, theta),
                               rtol=1e-13)
    # γ < 1: Ω = γ Ω_1 + Ω_2 (Schwarz et al. 2018)
    gamma = 0.3
    decayed = consolidate(consolidate(tx.init(params), th1, f1, mode="online", decay=gamma),
                          th2, f2, mode="online", decay=gamma)
    assert_trees_close(decayed.importance, jax.tree.map(lambda a, b: gamma * a + b, f1, f2), rtol=1e-13)
    assert_trees_close(decayed.anchor, th2)


def test_multi_task_ewc_equals_sum_of_per_task_penalties(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    tasks = [(jax.tree.map(lambda p, s=s: p + s, params),
              _importance(jax.random.PRNGKey(10 + i), params))
             for i, s in enumerate((0.1, -0.3, 0.7))]
    # one task with zero importance in a whole leaf, and anchors far apart
    tasks[1][1]["scale"] = jnp.zeros(())
    tasks[2] = (jax.tree.map(lambda p: p + 50.0, tasks[2][0]), tasks[2][1])
    tx = quadratic_penalty(strength=4.0)
    state = tx.init(params)
    for anchor, imp in tasks:
        state = consolidate(state, anchor, imp, mode="multi_task")
    assert int(state.count) == 3
    single = quadratic_penalty(strength=4.0)
    per_task = [consolidate(single.init(params), a, f, mode="replace") for a, f in tasks]
    theta = _params(jax.random.PRNGKey(4), jnp.float64)
    expected_loss = sum(penalty_loss(s, theta) for s in per_task)
    np.testing.assert_allclose(penalty_loss(state, theta), expected_loss, rtol=1e-13)
    g = jax.tree.map(jnp.zeros_like, params)
    expected = jax.tree.map(lambda *u: sum(u), *[single.update(g, s, theta)[0] for s in per_task])
    assert_trees_close(tx.update(g, state, theta)[0], expected, rtol=1e-13)


def test_l2_replace_with_uniform_importance():
    params = _params(jax.random.PRNGKey(0))
    tx = quadratic_penalty(strength=0.5)
    state = consolidate(tx.init(params), params, None, mode="replace")
    theta = jax.tree.map(lambda p: p + 2.0, params)
    n = sum(p.size for p in jax.tree.leaves(params))
    np.testing.assert_allclose(penalty_loss(state, theta), 0.5 / 2 * 4.0 * n, rtol=1e-6)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, theta)
    assert_trees_close(updates, jax.tree.map(lambda p: jnp.full_like(p, 1.0), params), rtol=1e-6)


def test_consolidate_and_set_strength_on_chain_state():
    params = _params(jax.random.PRNGKey(0))
    tx = online_ewc(1e-3, strength=1.0)
    state = tx.init(params)
    state = consolidate(state, params, _importance(jax.random.PRNGKey(1), params),
                        mode="online", decay=0.9)
    state = set_strength(state, 5.0)
    assert float(_state(state).strength) == 5.0 and int(_state(state).count) == 1
    assert isinstance(state[1], type(optax.adam(1e-3).init(params)))


def test_vmap_over_strength_matches_separate_calls_and_never_recompiles():
    params = _params(jax.random.PRNGKey(0))
    tx = ewc(1e-2, strength=1.0)
    imp = _importance(jax.random.PRNGKey(1), params)
    anchor = jax.tree.map(lambda p: p - 1.0, params)
    grads = jax.grad(_task_loss)(params)

    traces = []

    def step(state, params):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jstep = jax.jit(step)
    lams = jnp.array([0.0, 1.0, 10.0, 100.0])

    def make(lam):
        return consolidate(set_strength(tx.init(params), lam), anchor, imp, mode="multi_task")

    states = jax.vmap(make)(lams)
    batched_params, _ = jax.jit(jax.vmap(step, in_axes=(0, None)))(states, params)
    for k, lam in enumerate(lams):
        p_k, _ = jstep(make(float(lam)), params)
        assert_trees_close(jax.tree.map(lambda x: x[k], batched_params), p_k, rtol=1e-6, atol=1e-7)
    # no recompilation: new λ (python float, numpy scalar, jax array), more consolidations
    n_traces = len(traces)
    state = tx.init(params)
    for value in (3.0, np.float32(4.0), jnp.asarray(5.0), 6):
        state = set_strength(state, value)
        jstep(state, params)
    state = consolidate(state, anchor, imp, mode="multi_task")
    jstep(state, params)
    state = consolidate(state, params, imp, mode="multi_task")
    jstep(state, params)
    assert jstep._cache_size() == 1
    assert len(traces) == n_traces  # traced once, in the loop over λ above


def test_online_consolidate_under_jit_with_traced_decay_no_recompile():
    params = _params(jax.random.PRNGKey(0))
    tx = quadratic_penalty(strength=1.0)
    imp = _importance(jax.random.PRNGKey(1), params)
    cons = jax.jit(lambda s, p, f, d: consolidate(s, p, f, mode="online", decay=d))
    s = tx.init(params)
    for d in (1.0, 0.5, 0.9):
        s = cons(s, params, imp, d)
    assert cons._cache_size() == 1
    assert_trees_close(s.importance, jax.tree.map(lambda f: ((1.0 * 0.5 + 1) * 0.9 + 1) * f, imp),
           rtol=1e-6)
    jupd = jax.jit(tx.update)
    jupd(params, tx.init(params), params)
    jupd(params, s, params)
    assert jupd._cache_size() == 1


def test_bad_inputs_raise():
    params = _params(jax.random.PRNGKey(0))
    imp = _importance(jax.random.PRNGKey(1), params)
    with pytest.raises(ValueError, match="strength"):
        quadratic_penalty(strength=-1.0)
    tx = quadratic_penalty(strength=1.0)
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, None)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, {"Dense_0": params["Dense_0"]})
    for decay in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="decay"):
            consolidate(state, params, imp, mode="online", decay=decay)
    with pytest.raises(ValueError, match="decay"):
        consolidate(state, params, imp, mode="replace", decay=0.5)
    with pytest.raises(ValueError, match="importance"):
        consolidate(state, params, {"Dense_0": imp["Dense_0"]})
    bad_shape = dict(imp, scale=jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"importance\['scale'\]"):
        consolidate(state, params, bad_shape)
    with pytest.raises(ValueError, match="mode"):
        consolidate(state, params, imp, mode="sum")
    with pytest.raises(ValueError, match=r"importance\['scale'\] has negative"):
        consolidate(state, params, dict(imp, scale=-jnp.ones(())), mode="multi_task")
    with pytest.raises(ValueError, match="strength"):
        set_strength(state, -2.0)
    with pytest.raises(ValueError, match="strength"):
        set_strength(state, jnp.ones(3))
    with pytest.raises(ValueError, match="QuadraticPenaltyState"):
        consolidate(optax.adam(1e-3).init(params), params, imp)
    with pytest.raises(ValueError, match="set_strength"):
        set_strength(optax.adam(1e-3).init(params), 1.0)


# ------------------------------------------------------------------------------------------
# One optax-style harness over every transform of cljax.transforms (cf. optax contrib tests).
# ------------------------------------------------------------------------------------------

from cljax import transforms as T  # noqa: E402
from cljax.nn import MLP, as_model  # noqa: E402
from cljax.types import KFACFactors  # noqa: E402
from helpers import assert_trees_close


def _mlp_params():
    model = as_model(MLP((5,), 3))
    return model.init(jax.random.PRNGKey(0), {"x": jnp.ones((2, 4))})


def _fake_factors(params):
    out = {}
    for name, node in params.items():
        n = node["kernel"].shape[0] + 1
        m = node["kernel"].shape[1]
        out[name] = KFACFactors(2.0 * jnp.eye(n), 0.5 * jnp.eye(m))
    return out


_imp = lambda p: jax.tree.map(lambda x: jnp.abs(x) + 0.1, p)

HARNESS = {  # every transform, once bare and once inside its default chain
    "quadratic_penalty": (lambda: T.quadratic_penalty(strength=2.0),
                          lambda s, p: T.consolidate(s, p, _imp(p), mode="online", decay=0.9)),
    "ewc_multi_task": (lambda: T.ewc(1e-3, strength=2.0),
                       lambda s, p: T.consolidate(s, p, _imp(p), mode="multi_task")),
    "kfac_penalty": (lambda: T.kfac_penalty(strength=2.0),
                     lambda s, p: T.kfac_consolidate(s, p, _fake_factors(p))),
    "kfac_ewc_slots": (lambda: T.kfac_ewc(1e-3, strength=2.0, num_slots=2),
                       lambda s, p: T.kfac_consolidate(s, p, _fake_factors(p), mode="multi_task")),
    "ncl_preconditioner": (lambda: T.ncl_preconditioner(strength=2.0, damping=0.5),
                           lambda s, p: T.ncl_consolidate(s, p, _imp(p), decay=0.8)),
    "ncl_kfac": (lambda: T.ncl_kfac(1e-2, strength=2.0, damping=0.5, momentum=0.9),
                 lambda s, p: T.ncl_kfac_consolidate(s, p, _fake_factors(p), decay=0.5)),
}


def _avals(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype, getattr(x, "weak_type", False)), tree)


@pytest.mark.parametrize("name", sorted(HARNESS))
def test_harness_jit_pytree_state_no_recompile(name):
    make, boundary = HARNESS[name]
    tx = make()
    assert isinstance(tx, optax.GradientTransformation)
    params = _mlp_params()
    grads = jax.tree.map(jnp.ones_like, params)
    state = jax.jit(tx.init)(params)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    update = jax.jit(tx.update)
    updates, new_state = update(grads, state, params)
    assert _avals(updates) == _avals(params)
    assert _avals(new_state) == _avals(state)
    with pytest.raises(ValueError, match="params"):
        tx.update(grads, state)
    # task boundary (eager and jitted) and a new λ keep every leaf's aval: no recompilation
    s1 = boundary(new_state, jax.tree.map(lambda x: x + 0.1, params))
    s2 = jax.jit(boundary)(s1, params)
    s3 = T.set_strength(s2, 7.0)
    for s in (s1, s2, s3):
        assert _avals(s) == _avals(state)
        out, _ = update(grads, s, params)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))
    assert update._cache_size() == 1
    # the boundary changed the step
    base, _ = update(grads, state, jax.tree.map(lambda x: x + 1.0, params))
    after, _ = update(grads, s2, jax.tree.map(lambda x: x + 1.0, params))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(after)))
