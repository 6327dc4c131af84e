"""Tests for cljax.transforms.penalty: the quadratic penalty over a diagonal curvature (EWC /
online EWC / SI / MAS / L2) and over a Kronecker-factored one (K-FAC Laplace, Ritter et al. 2018).

The penalty's CL state (:class:`QuadraticPenaltyState`) is held by the caller and passed to
``update`` as the optax extra argument ``penalty_state``; λ is a factory argument.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, random_kfac_factors, random_spd

from cljax.curvature import Diagonal, KroneckerFactored, nearest_kronecker_sum
from cljax.transforms import (
    NCLState,
    QuadraticPenaltyState,
    consolidate,
    init_ncl,
    init_penalty,
    penalty_loss,
    quadratic_penalty,
    quadratic_penalty_adam,
)
from cljax.types import KFACFactors


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


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _diagonal_case():
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    pen = init_penalty(params)
    pen = consolidate(pen, jax.tree.map(lambda p: p + 0.3, params),
                      _importance(jax.random.PRNGKey(1), params), mode="multi_task")
    pen = consolidate(pen, jax.tree.map(lambda p: p - 0.2, params),
                      _importance(jax.random.PRNGKey(2), params), mode="multi_task")
    return params, pen, _task_loss


def _kfac_case():
    params = _kparams(jax.random.PRNGKey(0))
    pen = consolidate(_kinit(params), _kparams(jax.random.PRNGKey(1)), _kfactors(2), mode="online")
    return params, pen, lambda p: sum(jnp.sum(jnp.cos(x)) for x in jax.tree.leaves(p))


@pytest.mark.parametrize("case", ["diagonal", "kfac"])
def test_penalty_first_in_chain_equals_grad_of_explicit_loss_through_adam(x64, case):
    """Diagonal (multi-task EWC) and K-FAC (online) states: the chain's step is Adam on the
    gradient of task loss + penalty_loss."""
    params, pen, task_loss = (_diagonal_case if case == "diagonal" else _kfac_case)()
    tx = quadratic_penalty_adam(1e-2, strength=3.0)
    opt_state = tx.init(params)
    ref_tx = optax.adam(1e-2)
    ref_state = ref_tx.init(params)

    @jax.jit
    def both(p, opt_state, q, ref_state):
        updates, opt_state = tx.update(jax.grad(task_loss)(p), opt_state, p, penalty_state=pen)
        total = lambda x: task_loss(x) + penalty_loss(pen, x, strength=3.0)
        ref_updates, ref_state = ref_tx.update(jax.grad(total)(q), ref_state, q)
        return (optax.apply_updates(p, updates), opt_state, optax.apply_updates(q, ref_updates),
                ref_state)

    p_ref = params
    for _ in range(5):
        params, opt_state, p_ref, ref_state = both(params, opt_state, p_ref, ref_state)
    assert_trees_close(params, p_ref, rtol=1e-12 if case == "diagonal" else 1e-11, atol=1e-12)
    # the chain's state is the transform's empty state and Adam's: no CL state inside
    assert isinstance(opt_state[0], optax.EmptyState)
    assert jax.tree.structure(opt_state) == jax.tree.structure(tx.init(params))


def test_update_adds_gradient_of_penalty_loss(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    tx = quadratic_penalty(strength=7.0)
    assert tx.init(params) == optax.EmptyState()
    pen = consolidate(init_penalty(params), jax.tree.map(lambda p: 0.5 * p, params),
                      _importance(jax.random.PRNGKey(3), params), mode="online", decay=0.5)
    theta = jax.tree.map(lambda p: p + 1.0, params)
    updates, new_state = tx.update(_zeros(params), tx.init(params), theta, penalty_state=pen)
    assert new_state == optax.EmptyState()
    assert_trees_close(updates, jax.grad(lambda p: penalty_loss(pen, p, strength=7.0))(theta),
                       rtol=1e-12)
    # λ scales linearly; penalty_loss defaults to λ = 1
    np.testing.assert_allclose(penalty_loss(pen, theta, strength=7.0),
                               7.0 * penalty_loss(pen, theta), rtol=1e-14)


def test_penalty_is_exactly_zero_before_first_consolidate():
    params = _params(jax.random.PRNGKey(0))
    g = _importance(jax.random.PRNGKey(5), params)
    pen = init_penalty(params)
    assert isinstance(pen, QuadraticPenaltyState) and int(pen.count) == 0
    moved = jax.tree.map(lambda p: p + 10.0, params)
    for tx in (quadratic_penalty(strength=1e8), quadratic_penalty_adam(1e-3, strength=1e8)):
        opt_state = tx.init(params)
        updates, _ = jax.jit(tx.update)(g, opt_state, moved, penalty_state=pen)
        expected = g
        if not isinstance(opt_state, optax.EmptyState):  # through adam: same as plain adam
            expected, _ = jax.jit(optax.adam(1e-3).update)(g, opt_state[1], moved)
        for u, v in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
            assert np.array_equal(np.asarray(u), np.asarray(v))
    assert float(penalty_loss(pen, moved, strength=1e8)) == 0.0


def test_online_ewc_decay_one_equals_summed_importance(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    f1, f2 = (_importance(jax.random.PRNGKey(i), params) for i in (1, 2))
    th1 = jax.tree.map(lambda p: p + 0.1, params)
    th2 = jax.tree.map(lambda p: p - 0.4, params)
    tx = quadratic_penalty(strength=2.5)
    e = tx.init(params)
    p0 = init_penalty(params)
    online = consolidate(consolidate(p0, th1, f1, mode="online", decay=1.0),
                         th2, f2, mode="online", decay=1.0)
    summed = consolidate(p0, th2, jax.tree.map(jnp.add, f1, f2), mode="replace")
    theta = _params(jax.random.PRNGKey(9), jnp.float64)
    g = _zeros(params)
    assert_trees_close(tx.update(g, e, theta, penalty_state=online)[0],
                       tx.update(g, e, theta, penalty_state=summed)[0], rtol=1e-13)
    np.testing.assert_allclose(penalty_loss(online, theta, strength=2.5),
                               penalty_loss(summed, theta, strength=2.5), rtol=1e-13)
    # γ < 1: Ω = γ Ω_1 + Ω_2 (Schwarz et al. 2018)
    gamma = 0.3
    decayed = consolidate(consolidate(p0, th1, f1, mode="online", decay=gamma),
                          th2, f2, mode="online", decay=gamma)
    assert isinstance(decayed.curvature, Diagonal)
    assert_trees_close(decayed.curvature.values,
                       jax.tree.map(lambda a, b: gamma * a + b, f1, f2), rtol=1e-13)
    assert_trees_close(decayed.anchor, th2)
    # consolidate is pure: the input state is unchanged
    assert int(p0.count) == 0 and all(float(jnp.max(w)) == 0
                                      for w in jax.tree.leaves(p0.curvature.values))
    # mode="sum" is online with γ = 1, bit for bit; a Diagonal is accepted as the importance
    summed2 = consolidate(consolidate(p0, th1, f1, mode="sum"), th2, Diagonal(f2), mode="sum")
    for a, b in zip(jax.tree.leaves(summed2), jax.tree.leaves(online)):
        np.testing.assert_array_equal(a, b)


def test_multi_task_ewc_equals_sum_of_per_task_penalties(x64):
    params = _params(jax.random.PRNGKey(0), jnp.float64)
    tasks = [(jax.tree.map(lambda p, s=s: p + s, params),
              _importance(jax.random.PRNGKey(10 + i), params))
             for i, s in enumerate((0.1, -0.3, 0.7))]
    # one task with zero importance in a whole leaf, and anchors far apart
    tasks[1][1]["scale"] = jnp.zeros(())
    tasks[2] = (jax.tree.map(lambda p: p + 50.0, tasks[2][0]), tasks[2][1])
    tx = quadratic_penalty(strength=4.0)
    e = tx.init(params)
    pen = init_penalty(params)
    for anchor, imp in tasks:
        pen = consolidate(pen, anchor, imp, mode="multi_task")
    assert int(pen.count) == 3
    per_task = [consolidate(init_penalty(params), a, f, mode="replace") for a, f in tasks]
    theta = _params(jax.random.PRNGKey(4), jnp.float64)
    expected_loss = sum(penalty_loss(s, theta, strength=4.0) for s in per_task)
    np.testing.assert_allclose(penalty_loss(pen, theta, strength=4.0), expected_loss, rtol=1e-13)
    g = _zeros(params)
    expected = jax.tree.map(lambda *u: sum(u), *[tx.update(g, e, theta, penalty_state=s)[0]
                                                  for s in per_task])
    assert_trees_close(tx.update(g, e, theta, penalty_state=pen)[0], expected, rtol=1e-13)


def test_l2_replace_with_uniform_importance():
    params = _params(jax.random.PRNGKey(0))
    tx = quadratic_penalty(strength=0.5)
    pen = consolidate(init_penalty(params), params, None, mode="replace")
    theta = jax.tree.map(lambda p: p + 2.0, params)
    n = sum(p.size for p in jax.tree.leaves(params))
    np.testing.assert_allclose(penalty_loss(pen, theta, strength=0.5), 0.5 / 2 * 4.0 * n,
                               rtol=1e-6)
    updates, _ = tx.update(_zeros(params), tx.init(params), theta, penalty_state=pen)
    assert_trees_close(updates, jax.tree.map(lambda p: jnp.full_like(p, 1.0), params), rtol=1e-6)


def test_boundary_takes_the_penalty_state_and_leaves_the_optimizer_alone():
    params = _params(jax.random.PRNGKey(0))
    imp = _importance(jax.random.PRNGKey(1), params)
    tx = quadratic_penalty_adam(1e-3, strength=1.0)
    opt_state = tx.init(params)
    _, opt_state = tx.update(imp, opt_state, params, penalty_state=init_penalty(params))
    pen = consolidate(init_penalty(params), params, imp, mode="online", decay=0.9)
    assert isinstance(pen, QuadraticPenaltyState) and int(pen.count) == 1
    assert isinstance(opt_state[1][0], type(optax.adam(1e-3).init(params)[0]))
    # boundary functions no longer search an optimizer state: a chain state is a TypeError
    for wrong in (opt_state, optax.adam(1e-3).init(params), init_ncl(params), None):
        with pytest.raises(TypeError, match="QuadraticPenaltyState"):
            consolidate(wrong, params, imp)
        with pytest.raises(TypeError, match="QuadraticPenaltyState"):
            penalty_loss(wrong, params)


def test_vmap_over_traced_strength_matches_separate_calls_and_never_recompiles():
    params = _params(jax.random.PRNGKey(0))
    imp = _importance(jax.random.PRNGKey(1), params)
    anchor = jax.tree.map(lambda p: p - 1.0, params)
    grads = jax.grad(_task_loss)(params)
    opt_state = quadratic_penalty_adam(1e-2).init(params)   # λ is not in any state
    pen = consolidate(init_penalty(params), anchor, imp, mode="multi_task")

    traces = []

    def step(lam, pen, params, opt_state):
        traces.append(1)
        tx = quadratic_penalty_adam(1e-2, strength=lam)   # built in the step from the (traced) λ
        updates, opt_state = tx.update(grads, opt_state, params, penalty_state=pen)
        return optax.apply_updates(params, updates), opt_state

    jstep = jax.jit(step)
    lams = jnp.array([0.0, 1.0, 10.0, 100.0])
    batched, _ = jax.jit(jax.vmap(step, in_axes=(0, None, None, None)))(lams, pen, params,
                                                                         opt_state)
    for k, lam in enumerate(lams):
        p_k, _ = jstep(lam, pen, params, opt_state)
        assert_trees_close(jax.tree.map(lambda x: x[k], batched), p_k, rtol=1e-6, atol=1e-7)
    eager, _ = step(float(lams[2]), pen, params, opt_state)   # jit == eager
    assert_trees_close(eager, jax.tree.map(lambda x: x[2], batched), rtol=1e-6, atol=1e-7)
    # λ = 0 is plain Adam; λ > 0 moves towards the anchor
    plain, _ = optax.adam(1e-2).update(grads, opt_state[1], params)
    assert_trees_close(jax.tree.map(lambda x: x[0], batched),
                       optax.apply_updates(params, plain), rtol=1e-6, atol=1e-7)
    # vmap over the penalty state too (one state per decay, consolidated under vmap)
    decays = jnp.array([0.25, 0.5, 1.0, 1.0])
    pens = jax.vmap(lambda d: consolidate(pen, params, imp, mode="online", decay=d))(decays)
    both, _ = jax.vmap(step, in_axes=(0, 0, None, None))(lams, pens, params, opt_state)
    for k in range(len(lams)):
        alone = consolidate(pen, params, imp, mode="online", decay=float(decays[k]))
        assert_trees_close(jax.tree.map(lambda x: x[k], both),
                           jstep(lams[k], alone, params, opt_state)[0], rtol=1e-6, atol=1e-7)
    # no recompilation: new λ values (as float32 arrays, like run_stream's hparams), more
    # consolidations (multi-task and online)
    n_cache, n_traces = jstep._cache_size(), len(traces)
    pen = init_penalty(params)
    for value in (3.0, np.float32(4.0), jnp.asarray(5.0), 6):
        jstep(jnp.float32(value), pen, params, opt_state)
    pen = consolidate(pen, anchor, imp, mode="multi_task")
    jstep(jnp.float32(1.0), pen, params, opt_state)
    pen = consolidate(pen, params, imp, mode="multi_task")
    jstep(jnp.float32(2.0), pen, params, opt_state)
    jstep(jnp.float32(2.0), consolidate(pen, params, imp, mode="online", decay=0.5), params,
          opt_state)
    assert jstep._cache_size() == n_cache == 1
    assert len(traces) == n_traces


def test_online_consolidate_under_jit_with_traced_decay_no_recompile():
    params = _params(jax.random.PRNGKey(0))
    tx = quadratic_penalty(strength=1.0)
    imp = _importance(jax.random.PRNGKey(1), params)
    cons = jax.jit(lambda s, p, f, d: consolidate(s, p, f, mode="online", decay=d))
    s = init_penalty(params)
    for d in (1.0, 0.5, 0.9):
        s = cons(s, params, imp, d)
    assert cons._cache_size() == 1
    assert_trees_close(s.curvature.values,
                       jax.tree.map(lambda f: ((1.0 * 0.5 + 1) * 0.9 + 1) * f, imp), rtol=1e-6)
    eager = init_penalty(params)
    for d in (1.0, 0.5, 0.9):
        eager = consolidate(eager, params, imp, mode="online", decay=d)
    assert_trees_close(s, eager, rtol=1e-6)
    jupd = jax.jit(tx.update)
    e = tx.init(params)
    jupd(params, e, params, penalty_state=init_penalty(params))
    jupd(params, e, params, penalty_state=s)
    assert jupd._cache_size() == 1


def test_bad_inputs_raise():
    params = _params(jax.random.PRNGKey(0))
    imp = _importance(jax.random.PRNGKey(1), params)
    tx = quadratic_penalty(strength=1.0)
    e = tx.init(params)
    pen = init_penalty(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, e, None, penalty_state=pen)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, e, {"Dense_0": params["Dense_0"]}, penalty_state=pen)
    for decay in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="decay"):
            consolidate(pen, params, imp, mode="online", decay=decay)
    with pytest.raises(ValueError, match="decay"):
        consolidate(pen, params, imp, mode="replace", decay=0.5)
    with pytest.raises(ValueError, match="importance"):
        consolidate(pen, params, {"Dense_0": imp["Dense_0"]})
    bad_shape = dict(imp, scale=jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"importance\['scale'\]"):
        consolidate(pen, params, bad_shape)
    with pytest.raises(ValueError, match="mode"):
        consolidate(pen, params, imp, mode="exact")
    with pytest.raises(ValueError, match="num_slots"):   # the diagonal fold needs no slots
        init_penalty(params, num_slots=2)
    with pytest.raises(ValueError, match="layers"):
        init_penalty(params, layers=["Dense_0"])
    with pytest.raises(ValueError, match="curvature"):
        init_penalty(params, curvature="full")
    with pytest.raises(TypeError, match="importance"):   # factors for a diagonal state
        consolidate(pen, params, KroneckerFactored({}, jnp.zeros(())))
    with pytest.raises(ValueError, match=r"importance\['scale'\] has negative"):
        consolidate(pen, params, dict(imp, scale=-jnp.ones(())), mode="multi_task")
    with pytest.raises(ValueError, match="params"):
        consolidate(pen, {"Dense_0": params["Dense_0"]}, None, mode="replace")
    with pytest.raises(ValueError, match="params"):
        penalty_loss(pen, {"Dense_0": params["Dense_0"]})


def test_missing_or_wrong_extra_argument_raises_naming_it():
    params = _params(jax.random.PRNGKey(0))
    for tx in (quadratic_penalty(strength=1.0), quadratic_penalty_adam(1e-3, strength=1.0)):
        opt_state = tx.init(params)
        with pytest.raises(ValueError, match="penalty_state="):
            tx.update(params, opt_state, params)
        with pytest.raises(ValueError, match="penalty_state="):
            jax.jit(tx.update)(params, opt_state, params)
        with pytest.raises(TypeError, match="penalty_state must be a QuadraticPenaltyState"):
            tx.update(params, opt_state, params, penalty_state=init_ncl(params))
        with pytest.raises(TypeError, match="NCLState"):
            tx.update(params, opt_state, params, penalty_state=init_ncl(params))
    assert isinstance(init_ncl(params), NCLState)
    # another transform's extra argument is ignored, not mistaken for the penalty state
    tx = quadratic_penalty(strength=1.0)
    with pytest.raises(ValueError, match="penalty_state="):
        tx.update(params, tx.init(params), params, ncl_state=init_penalty(params))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -1.0])
def test_non_finite_or_negative_strength_rejected(bad):
    params = _params(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="strength"):
        quadratic_penalty(strength=bad)
    with pytest.raises(ValueError, match="strength"):
        quadratic_penalty_adam(1e-3, strength=np.float32(bad))
    with pytest.raises(ValueError, match="strength"):
        penalty_loss(init_penalty(params), params, strength=jnp.asarray(bad))


def test_non_numeric_strength_or_decay_is_a_type_error():
    params = _params(jax.random.PRNGKey(0))
    for bad in ("abc", None, {"a": 1.0}):
        with pytest.raises(TypeError, match="strength"):
            quadratic_penalty(strength=bad)
        with pytest.raises(TypeError, match="strength"):
            penalty_loss(init_penalty(params), params, strength=bad)
    with pytest.raises(TypeError, match="strength"):
        quadratic_penalty_adam(1e-3, strength="abc")
    with pytest.raises(TypeError, match="decay"):
        consolidate(init_penalty(params), params, None, mode="online", decay="abc")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_decay_importance_params_rejected(bad):
    params = _params(jax.random.PRNGKey(0))
    imp = _importance(jax.random.PRNGKey(1), params)
    pen = init_penalty(params)
    with pytest.raises(ValueError, match="decay"):
        consolidate(pen, params, imp, mode="online", decay=bad)
    with pytest.raises(ValueError, match="decay"):
        consolidate(pen, params, imp, mode="multi_task", decay=bad)
    bad_imp = {**imp, "Dense_0": {**imp["Dense_0"], "bias": imp["Dense_0"]["bias"].at[2].set(bad)}}
    for mode in ("online", "multi_task", "replace"):
        with pytest.raises(FloatingPointError, match=r"importance\['Dense_0'\]\['bias'\]"):
            consolidate(pen, params, bad_imp, mode=mode)
    bad_params = dict(params, scale=jnp.asarray(bad, jnp.float32))
    for mode in ("online", "multi_task", "replace"):
        with pytest.raises(FloatingPointError, match=r"params\['scale'\]"):
            consolidate(pen, bad_params, imp, mode=mode)
    with pytest.raises(FloatingPointError, match="params"):
        consolidate(pen, bad_params, None, mode="replace")
    # -inf importance is also non-finite (not merely negative)
    with pytest.raises(FloatingPointError, match="importance"):
        consolidate(pen, params, dict(imp, scale=jnp.asarray(-np.inf, jnp.float32)))


def test_non_scalar_hyperparameters_rejected():
    params = _params(jax.random.PRNGKey(0))
    pen = consolidate(init_penalty(params), params, None, mode="replace")
    with pytest.raises(ValueError, match="strength must be a scalar"):
        quadratic_penalty(strength=jnp.ones(4))
    with pytest.raises(ValueError, match="strength must be a scalar"):
        penalty_loss(pen, params, strength=jnp.ones(4))
    with pytest.raises(ValueError, match="decay must be a scalar"):
        consolidate(pen, params, None, mode="online", decay=jnp.ones(2))


# ------------------------------------------------------------------------------------------
# One optax-style harness over every transform of cljax.transforms (cf. optax contrib tests).
# Each entry: the transform built from λ (inside the jitted step), the empty CL state, the task
# boundary (λ enters it for NCL, whose strength is part of the prior), the extra argument's name.
# ------------------------------------------------------------------------------------------

from cljax import transforms as T  # noqa: E402
from cljax.nn import MLP, as_model  # noqa: E402


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
    "quadratic_penalty": (
        lambda lam: T.quadratic_penalty(strength=lam), T.init_penalty,
        lambda s, p, lam: T.consolidate(s, p, _imp(p), mode="online", decay=0.9),
        "penalty_state", T.QuadraticPenaltyState),
    "ewc_multi_task": (
        lambda lam: T.quadratic_penalty_adam(1e-3, strength=lam), T.init_penalty,
        lambda s, p, lam: T.consolidate(s, p, _imp(p), mode="multi_task"),
        "penalty_state", T.QuadraticPenaltyState),
    "quadratic_penalty_kfac": (
        lambda lam: T.quadratic_penalty(strength=lam),
        lambda p: T.init_penalty(p, curvature="kfac"),
        lambda s, p, lam: T.consolidate(s, p, _fake_factors(p)),
        "penalty_state", T.QuadraticPenaltyState),
    "kfac_ewc_slots": (
        lambda lam: T.quadratic_penalty_adam(1e-3, strength=lam),
        lambda p: T.init_penalty(p, curvature="kfac", num_slots=2),
        lambda s, p, lam: T.consolidate(s, p, _fake_factors(p), mode="multi_task"),
        "penalty_state", T.QuadraticPenaltyState),
    "ncl_preconditioner": (
        lambda lam: T.ncl_preconditioner(), T.init_ncl,
        lambda s, p, lam: T.ncl_consolidate(s, p, _imp(p), strength=lam, damping=0.5, decay=0.8),
        "ncl_state", T.NCLState),
    "ncl": (
        lambda lam: T.ncl(1e-2, momentum=0.9), T.init_ncl,
        lambda s, p, lam: T.ncl_consolidate(s, p, _imp(p), strength=lam, damping=lam / 4),
        "ncl_state", T.NCLState),
    "ncl_kfac": (
        lambda lam: T.ncl(1e-2, momentum=0.9), lambda p: T.init_ncl(p, curvature="kfac"),
        lambda s, p, lam: T.ncl_consolidate(s, p, _fake_factors(p), strength=lam,
                                            damping=0.5, decay=0.5),
        "ncl_state", T.NCLState),
}


def _avals(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype, getattr(x, "weak_type", False)), tree)


@pytest.mark.parametrize("name", sorted(HARNESS))
def test_harness_extra_arg_state_jit_no_recompile(name):
    make, init, boundary, arg, cls = HARNESS[name]
    tx = make(2.0)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    params = _mlp_params()
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state = jax.jit(tx.init)(params)
    # the transform's own state is empty: no CL state inside the optimizer state
    assert not [n for n in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, cls))
                if isinstance(n, cls)]
    cl = jax.jit(init)(params)
    assert isinstance(cl, cls)
    assert _avals(cl) == _avals(init(params))
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves((opt_state, cl)))

    def step(lam, g, opt_state, params, cl):
        return make(lam).update(g, opt_state, params, **{arg: cl})

    update = jax.jit(step)
    updates, new_opt = update(jnp.float32(2.0), grads, opt_state, params, cl)
    assert _avals(updates) == _avals(params)
    assert _avals(new_opt) == _avals(opt_state)
    # the extra argument is required, by name, and type-checked; params too
    with pytest.raises(ValueError, match=f"{arg}="):
        tx.update(grads, opt_state, params)
    with pytest.raises(TypeError, match=f"{arg} must be a {cls.__name__}"):
        tx.update(grads, opt_state, params, **{arg: opt_state})
    with pytest.raises(ValueError, match="params"):
        tx.update(grads, opt_state, **{arg: cl})
    # task boundary (eager and jitted) and new λ values keep every leaf's aval: no recompilation
    s1 = boundary(cl, jax.tree.map(lambda x: x + 0.1, params), 2.0)
    jboundary = jax.jit(boundary)
    s2 = jboundary(s1, params, jnp.float32(3.0))
    s3 = jboundary(s2, params, jnp.float32(7.0))
    assert jboundary._cache_size() == 1
    for s in (s1, s2, s3):
        assert isinstance(s, cls) and _avals(s) == _avals(cl)
        for lam in (2.0, 7.0):
            out, _ = update(jnp.float32(lam), grads, new_opt, params, s)
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))
    assert update._cache_size() == 1
    # jit == eager
    moved = jax.tree.map(lambda x: x + 1.0, params)
    eager, _ = make(7.0).update(grads, new_opt, moved, **{arg: s2})
    jitted, _ = update(jnp.float32(7.0), grads, new_opt, moved, s2)
    assert_trees_close(jitted, eager, rtol=1e-5, atol=1e-6)
    # the boundary changed the step (from Adam's second step on: its first is sign-like)
    base, _ = update(jnp.float32(2.0), grads, new_opt, moved, cl)
    after, _ = update(jnp.float32(2.0), grads, new_opt, moved, s2)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(after)))


# ------------------------------------------------------------------------------------------
# The K-FAC Laplace penalty (Ritter et al. 2018): the same transform over a Kronecker-factored
# curvature, (λ/2) Σ_l vec(ΔW̄)ᵀ (A ⊗ G) vec(ΔW̄), checked against dense jnp.kron matrices.
# ------------------------------------------------------------------------------------------

def _kparams(key, dtype=jnp.float64):
    ks = jax.random.split(key, 5)
    return {"Dense_0": {"kernel": jax.random.normal(ks[0], (3, 2), dtype),
                        "bias": jax.random.normal(ks[1], (2,), dtype)},
            "Conv_0": {"kernel": jax.random.normal(ks[2], (2, 2, 1, 3), dtype)},  # no bias
            "LayerNorm_0": {"scale": jax.random.normal(ks[3], (2,), dtype)},
            "Block_0": {"Dense_1": {"kernel": jax.random.normal(ks[4], (2, 2), dtype),
                                    "bias": jnp.zeros((2,), dtype)}}}


SHAPES = {"Dense_0": (4, 2), "Conv_0": (4, 3), "Block_0/Dense_1": (3, 2)}


_spd = random_spd


def _kfactors(seed, dtype=jnp.float64, names=tuple(SHAPES)):
    return random_kfac_factors(seed, SHAPES, dtype, names)


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


def _kinit(params, **kw):
    return init_penalty(params, curvature="kfac", **kw)


def _kupdate(tx, g, params, state):
    """One update of a bare quadratic_penalty (its own state is empty)."""
    return tx.update(g, tx.init(params), params, penalty_state=state)[0]


def test_kfac_layers_found_and_zero_before_consolidate(x64):
    params = _kparams(jax.random.PRNGKey(0))
    tx = quadratic_penalty(strength=1e6)
    state = _kinit(params)
    assert isinstance(state, QuadraticPenaltyState) and int(state.count) == 0
    assert isinstance(state.curvature, KroneckerFactored) and float(state.curvature.other) == 0
    assert {k: (f.A.shape[-1], f.G.shape[-1])
            for k, f in state.curvature.factors.items()} == SHAPES
    moved = jax.tree.map(lambda p: p + 5.0, params)
    g = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(g, tx.init(params), moved, penalty_state=state)
    for u, v in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
        assert np.array_equal(np.asarray(u), np.asarray(v))
    assert float(penalty_loss(state, moved, strength=1e6)) == 0.0


def test_kfac_penalty_equals_dense_kron_form_and_gradient(x64):
    params = _kparams(jax.random.PRNGKey(0))
    anchor = _kparams(jax.random.PRNGKey(1))
    fac = _kfactors(1)
    lam = 2.5
    tx = quadratic_penalty(strength=lam)
    state = jax.jit(lambda s: consolidate(s, anchor, fac, mode="replace"))(_kinit(params))
    np.testing.assert_allclose(penalty_loss(state, params, strength=lam),
                               _dense_penalty(params, anchor, fac, lam), rtol=1e-12)
    np.testing.assert_allclose(penalty_loss(state, params),   # default λ = 1
                               _dense_penalty(params, anchor, fac, 1.0), rtol=1e-12)
    updates = jax.jit(lambda g, p, s: _kupdate(tx, g, p, s))(_zeros(params), params, state)
    dense_grad = jax.jit(jax.grad(_dense_penalty))(params, anchor, fac, lam)
    assert_trees_close(updates, dense_grad, rtol=1e-11, atol=1e-13)
    assert_trees_close(updates, jax.jit(jax.grad(
        lambda s, p: penalty_loss(s, p, strength=lam), 1))(state, params),
        rtol=1e-11, atol=1e-13)
    # eager == jit
    assert_trees_close(_kupdate(tx, _zeros(params), params, state), updates, rtol=1e-12,
                       atol=1e-14)
    # parameters outside factor layers get zero penalty
    assert np.all(np.asarray(updates["LayerNorm_0"]["scale"]) == 0.0)
    # a KroneckerFactored is accepted in place of the factors dict
    same = consolidate(_kinit(params), anchor, KroneckerFactored(
        {k: fac[k] for k in SHAPES}, jnp.zeros(())), mode="replace")
    assert_trees_close(same, state, rtol=1e-15)


def test_kfac_multi_task_equals_sum_of_per_task_penalties(x64):
    params = _kparams(jax.random.PRNGKey(0))
    tasks = [(_kparams(jax.random.PRNGKey(10 + t)), _kfactors(20 + t)) for t in range(3)]
    tasks[1] = (tasks[1][0], {k: v for k, v in tasks[1][1].items() if k != "Conv_0"})
    tx = quadratic_penalty(strength=1.5)
    update = jax.jit(lambda g, p, s: _kupdate(tx, g, p, s))
    state = _kinit(params, num_slots=3)
    assert state.curvature.other.shape == (3,)                # the slot axis
    assert jax.tree.leaves(state.anchor)[0].shape[0] == 3
    for n, (anchor, fac) in enumerate(tasks):
        state = consolidate(state, anchor, fac, mode="multi_task")
        if n < 2:  # partly filled slots: only the filled ones count
            partial = jax.tree.map(lambda *g: sum(g), *[
                jax.grad(_dense_penalty)(params, a, f, 1.5) for a, f in tasks[:n + 1]])
            assert_trees_close(update(_zeros(params), params, state), partial,
                               rtol=1e-11, atol=1e-13)
    assert int(state.count) == 3 and update._cache_size() == 1
    expected = sum(_dense_penalty(params, a, f, 1.5) for a, f in tasks)
    np.testing.assert_allclose(penalty_loss(state, params, strength=1.5), expected,
                               rtol=1e-12)
    updates = _kupdate(tx, _zeros(params), params, state)
    expected_grad = jax.tree.map(lambda *g: sum(g), *[
        jax.grad(_dense_penalty)(params, a, f, 1.5) for a, f in tasks])
    assert_trees_close(updates, expected_grad, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="num_slots"):
        consolidate(state, params, tasks[0][1], mode="multi_task")


def test_kfac_multi_task_with_one_slot_takes_one_task(x64):
    """num_slots=1 stores no slot axis: one multi-task consolidation (= replace), then full."""
    params = _kparams(jax.random.PRNGKey(0))
    anchor, fac = _kparams(jax.random.PRNGKey(1)), _kfactors(3)
    one = consolidate(_kinit(params), anchor, fac, mode="multi_task")
    ref = consolidate(_kinit(params), anchor, fac, mode="replace")
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="num_slots=1 slots are used"):
        consolidate(one, params, fac, mode="multi_task")
    # under jit a write to a full slot is dropped, as with a slot axis
    again = jax.jit(lambda s: consolidate(s, params, _kfactors(4), mode="multi_task"))(one)
    assert int(again.count) == 2
    assert_trees_close((again.anchor, again.curvature), (one.anchor, one.curvature), rtol=0)


def test_kfac_online_and_sum_modes(x64):
    params = _kparams(jax.random.PRNGKey(0))
    f1, f2 = _kfactors(3), _kfactors(4)
    s0 = _kinit(params)
    # proportional factors: the nearest-Kronecker sum is exact, γ·A⊗G + (2A)⊗(3G) = (γ+6) A⊗G
    f_prop = {k: KFACFactors(2 * f.A, 3 * f.G) for k, f in f1.items()}
    s = consolidate(s0, params, f1, mode="online", decay=0.5)
    s = consolidate(s, params, f_prop, mode="online", decay=0.5)
    for k, f in f1.items():
        c = s.curvature.factors[k]
        np.testing.assert_allclose(jnp.kron(c.A, c.G), 6.5 * jnp.kron(f.A, f.G), rtol=1e-10)
    # general factors: matches nearest_kronecker_sum; anchor is the latest params
    anchor = _kparams(jax.random.PRNGKey(5))
    s = consolidate(consolidate(s0, params, f1), anchor, f2)
    for k in f1:
        x, y = nearest_kronecker_sum(f1[k].A, f1[k].G, f2[k].A, f2[k].G)
        c = s.curvature.factors[k]
        np.testing.assert_allclose(jnp.kron(c.A, c.G), jnp.kron(x, y), rtol=1e-10)
    assert_trees_close(s.anchor, anchor)
    s = consolidate(consolidate(s0, params, f1, mode="sum"), params, f2, mode="sum")
    for k in f1:
        assert_trees_close(s.curvature.factors[k],
                           KFACFactors(f1[k].A + f2[k].A, f1[k].G + f2[k].G), rtol=1e-14)
    s = consolidate(consolidate(s0, params, f1), params, f2, mode="replace")
    for k in f1:
        assert_trees_close(s.curvature.factors[k], f2[k], rtol=1e-14)
    assert int(s0.count) == 0  # pure
    # a task without curvature for a layer leaves (γA, G) (G to rounding)
    s = consolidate(consolidate(s0, params, f1), params, {"Dense_0": f2["Dense_0"]},
                    mode="online", decay=0.5)
    np.testing.assert_array_equal(s.curvature.factors["Conv_0"].A, 0.5 * f1["Conv_0"].A)
    np.testing.assert_allclose(s.curvature.factors["Conv_0"].G, f1["Conv_0"].G, rtol=1e-14)


@pytest.mark.slow   # CI time; by default: the contract suite's one-compilation row of kfac_ewc
def test_kfac_vmap_over_traced_strength_and_no_recompile():
    params = _kparams(jax.random.PRNGKey(0), jnp.float32)
    fac = _kfactors(5, jnp.float32)
    g = jax.tree.map(jnp.ones_like, params)
    opt_state = quadratic_penalty_adam(1e-2).init(params)

    def step(lam, st, p):
        tx = quadratic_penalty_adam(1e-2, strength=lam)   # λ from the (traced) hyperparameters
        return optax.apply_updates(p, tx.update(g, opt_state, p, penalty_state=st)[0])

    jstep = jax.jit(step)
    boundary = jax.jit(lambda st, a: consolidate(st, a, fac, mode="multi_task"))
    state = boundary(_kinit(params, num_slots=2), jax.tree.map(lambda x: x - 1, params))
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
    st = _kinit(params, num_slots=2)
    jstep(jnp.float32(1.0), st, params)
    for lam in (5.0, np.float32(7.0)):
        st = boundary(st, params)
        jstep(jnp.float32(lam), st, params)
    assert jstep._cache_size() == n == 1 and boundary._cache_size() == 1
    # vmap over the decay of an online K-FAC boundary == separate boundaries
    decays = jnp.array([0.25, 1.0])
    one = consolidate(_kinit(params), params, fac)
    both = jax.vmap(lambda d: consolidate(one, params, _kfactors(6, jnp.float32),
                                          decay=d))(decays)
    for k, d in enumerate(decays):
        alone = consolidate(one, params, _kfactors(6, jnp.float32), decay=float(d))
        assert_trees_close(jax.tree.map(lambda x: x[k], both), alone, rtol=1e-5, atol=1e-7)


def test_kfac_layers_argument_restricts_tracking():
    params = _kparams(jax.random.PRNGKey(0), jnp.float32)
    state = _kinit(params, layers=["Dense_0"])
    assert list(state.curvature.factors) == ["Dense_0"]
    assert list(_kinit(params, layers="Block_0/Dense_1").curvature.factors) == ["Block_0/Dense_1"]
    with pytest.raises(ValueError, match="Conv_0"):
        consolidate(state, params, _kfactors(1, jnp.float32))
    # only the tracked layer is penalised
    s = consolidate(state, jax.tree.map(lambda x: x - 1, params),
                    _kfactors(1, jnp.float32, names=("Dense_0",)))
    u = _kupdate(quadratic_penalty(strength=1.0), _zeros(params), params, s)
    assert float(jnp.max(jnp.abs(u["Dense_0"]["kernel"]))) > 0
    for leaf in jax.tree.leaves({k: v for k, v in u.items() if k != "Dense_0"}):
        assert np.all(np.asarray(leaf) == 0)


def test_kfac_bad_inputs_raise():
    params = _kparams(jax.random.PRNGKey(0), jnp.float32)
    fac = _kfactors(1, jnp.float32)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_slots"):
            _kinit(params, num_slots=bad)
    with pytest.raises(ValueError, match="layers"):
        _kinit(params, layers=["Dense_9"])
    tx = quadratic_penalty()
    state = _kinit(params)
    e = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, e, None, penalty_state=state)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, e, {"Dense_0": params["Dense_0"]}, penalty_state=state)
    with pytest.raises(ValueError, match="Dense_5"):
        consolidate(state, params, {"Dense_5": fac["Dense_0"]})
    with pytest.raises(ValueError, match=r"factors\['Dense_0'\]"):
        consolidate(state, params, {"Dense_0": KFACFactors(jnp.eye(3), jnp.eye(2))})
    with pytest.raises(TypeError, match="factors"):
        consolidate(state, params, [fac["Dense_0"]])
    with pytest.raises(TypeError, match="factors"):      # no L2 shortcut for K-FAC
        consolidate(state, params, None, mode="replace")
    with pytest.raises(TypeError, match="factors"):      # an importance for a K-FAC state
        consolidate(state, params, Diagonal(_zeros(params)))
    with pytest.raises(ValueError, match="decay"):
        consolidate(state, params, fac, decay=0.0)
    with pytest.raises(ValueError, match="decay"):
        consolidate(state, params, fac, mode="sum", decay=0.5)
    with pytest.raises(ValueError, match="mode"):
        consolidate(state, params, fac, mode="exact")
    with pytest.raises(ValueError, match="num_slots"):
        consolidate(_kinit(params, num_slots=2), params, fac, mode="online")
    with pytest.raises(ValueError, match="params"):
        consolidate(state, {"Dense_0": params["Dense_0"]}, fac)
    with pytest.raises(ValueError, match="params"):
        penalty_loss(_kinit(params, num_slots=2), {"Dense_0": params["Dense_0"]})
    # the old K-FAC extra argument name is not the penalty's: the state is still required
    with pytest.raises(ValueError, match="penalty_state="):
        tx.update(params, e, params, kfac_penalty_state=state)
    with pytest.raises(TypeError, match="penalty_state must be a QuadraticPenaltyState"):
        tx.update(params, e, params, penalty_state=init_ncl(params, curvature="kfac"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_kfac_non_finite_hyperparameters_factors_and_params_rejected(bad):
    params = _kparams(jax.random.PRNGKey(0), jnp.float32)
    fac = _kfactors(1, jnp.float32)
    state = _kinit(params)
    for b in (bad, -bad, np.float32(bad), jnp.asarray(bad)):
        with pytest.raises(ValueError, match="strength"):
            penalty_loss(state, params, strength=b)
        with pytest.raises(ValueError, match="decay"):
            consolidate(state, params, fac, decay=b)
    bad_a = dict(fac, Conv_0=KFACFactors(fac["Conv_0"].A.at[1, 2].set(bad), fac["Conv_0"].G))
    with pytest.raises(FloatingPointError, match=r"factors\['Conv_0'\]"):
        consolidate(state, params, bad_a)
    bad_g = {"Dense_0": KFACFactors(fac["Dense_0"].A, fac["Dense_0"].G * bad)}
    for mode in ("online", "sum", "replace"):
        with pytest.raises(FloatingPointError, match="factors"):
            consolidate(state, params, bad_g, mode=mode)
    with pytest.raises(FloatingPointError, match="factors"):
        consolidate(_kinit(params, num_slots=2), params, bad_g, mode="multi_task")
    bad_params = {**params, "LayerNorm_0": {"scale": params["LayerNorm_0"]["scale"].at[0].set(bad)}}
    with pytest.raises(FloatingPointError, match=r"params\['LayerNorm_0'\]\['scale'\]"):
        consolidate(state, bad_params, fac)


def test_kfac_non_numeric_strength_or_decay_is_a_type_error():
    params = _kparams(jax.random.PRNGKey(0), jnp.float32)
    with pytest.raises(TypeError, match="strength"):
        penalty_loss(_kinit(params), params, strength="abc")
    with pytest.raises(TypeError, match="decay"):
        consolidate(_kinit(params), params, _kfactors(1, jnp.float32), decay="abc")
