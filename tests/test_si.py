"""SI (Zenke et al. 2017): path integral in optax state on a quadratic with a known trajectory."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.importance import (
    PathIntegralState,
    WithPathIntegralState,
    accumulate_path_integral,
    get_path_integral,
    init_path_integral,
    reset_path_integral,
    si_importance,
    track_path_integral,
    with_path_integral,
)
from cljax.methods import si

# numpy float64 constants: jnp converts them to float64 inside the x64 fixture
H_DIAG = {"a": np.array([0.5, 1.0, 2.0]), "b": np.array([[0.2, 1.5]])}
C = {"a": np.array([1.0, -2.0, 0.5]), "b": np.array([[3.0, -1.0]])}
THETA0 = {"a": np.zeros(3), "b": np.zeros((1, 2))}


def task_loss(params):
    """L(θ) = ½ Σ h_i (θ_i − c_i)²."""
    return sum(0.5 * jnp.sum(h * (p - c) ** 2) for h, p, c in
               zip(jax.tree.leaves(H_DIAG), jax.tree.leaves(params), jax.tree.leaves(C)))


def closed_form_omega(lr, steps):
    """SGD: θ_t − c = r^t (θ_0 − c), r = 1 − ηh; g_t = h r^t (θ_0 − c), Δθ_t = −η g_t, so
    ω = Σ_t η g_t² = η h² (θ_0 − c)² (1 − r^{2T}) / (1 − r²)."""
    def one(h, c, t0):
        r = 1 - lr * h
        return lr * h ** 2 * (t0 - c) ** 2 * (1 - r ** (2 * steps)) / (1 - r ** 2)
    return jax.tree.map(one, H_DIAG, C, THETA0)


def run(tx, params, steps, use_extra):
    """A jitted lax.scan training loop; returns final params and optimizer state."""
    state = tx.init(params)

    @jax.jit
    def train(params, state):
        def step(carry, _):
            params, state = carry
            g = jax.grad(task_loss)(params)
            if use_extra:
                updates, state = tx.update(g, state, params, task_grads=g)
            else:
                updates, state = tx.update(g, state, params)
            return (optax.apply_updates(params, updates), state), None
        return jax.lax.scan(step, (params, state), None, length=steps)[0]

    return train(params, state)


@pytest.mark.parametrize("style", ["wrapper", "chained"])
def test_path_integral_matches_closed_form_sgd_trajectory(x64, style):
    lr, steps = 0.3, 25
    params = jax.tree.map(jnp.asarray, THETA0)
    if style == "wrapper":
        tx = with_path_integral(optax.sgd(lr))
    else:
        tx = optax.chain(optax.sgd(lr), track_path_integral())
    final, state = run(tx, params, steps, use_extra=style == "chained")
    omega = get_path_integral(state)
    expected = closed_form_omega(lr, steps)
    for a, b in zip(jax.tree.leaves(omega), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    # each SGD step lowers L by η g² − ½ η² h g² < ω's increment η g², so Σ ω > L(θ0) − L(θ_T) > 0
    total = sum(float(jnp.sum(w)) for w in jax.tree.leaves(omega))
    assert total > float(task_loss(params) - task_loss(final)) > 0


def test_uses_task_gradient_and_applied_update_with_penalty_inside(x64):
    """With a penalty (weight decay) inside the wrapper and Adam, ω = −Σ_t g_task · Δθ_applied."""
    params = jax.tree.map(jnp.asarray, THETA0)
    inner = optax.chain(optax.add_decayed_weights(0.5), optax.adam(0.05))
    tx = with_path_integral(inner)
    state = tx.init(params)
    manual = jax.tree.map(jnp.zeros_like, params)
    for _ in range(7):
        g = jax.grad(task_loss)(params)
        updates, state = tx.update(g, state, params)
        manual = jax.tree.map(lambda m, gg, u: m - gg * u, manual, g, updates)
        params = optax.apply_updates(params, updates)
    for a, b in zip(jax.tree.leaves(get_path_integral(state)), jax.tree.leaves(manual)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert isinstance(state, WithPathIntegralState)


def test_track_path_integral_passes_updates_through_and_requires_task_grads():
    tx = track_path_integral()
    theta0 = jax.tree.map(jnp.asarray, THETA0)
    state = tx.init(theta0)
    u = jax.tree.map(jnp.ones_like, theta0)
    out, state = tx.update(u, state, theta0, task_grads=u)
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(u)))
    assert float(state.omega["a"][0]) == -1.0
    with pytest.raises(ValueError, match="task_grads"):
        tx.update(u, state, theta0)
    with pytest.raises(ValueError, match="task_grads"):
        tx.update(u, state, theta0, task_grads={"a": jnp.ones(3)})


def test_reset_is_pure_and_keeps_inner_state():
    tx = optax.chain(optax.adam(0.1), track_path_integral())
    state = tx.init(THETA0)
    g = jax.tree.map(jnp.ones_like, THETA0)
    _, state = tx.update(g, state, THETA0, task_grads=g)
    new = reset_path_integral(state)
    assert all(float(jnp.max(jnp.abs(w))) == 0 for w in jax.tree.leaves(get_path_integral(new)))
    assert float(jnp.max(jnp.abs(get_path_integral(state)["a"]))) > 0   # input unchanged
    assert jax.tree.structure(new) == jax.tree.structure(state)
    np.testing.assert_array_equal(new[0][0].mu["a"], state[0][0].mu["a"])
    wrapped = with_path_integral(optax.sgd(0.1))
    ws = reset_path_integral(wrapped.init(THETA0))
    assert isinstance(ws.path_integral, PathIntegralState)
    with pytest.raises(ValueError, match="PathIntegralState"):
        reset_path_integral(optax.adam(0.1).init(THETA0))


def test_si_importance_formula_and_clipping():
    omega = {"a": jnp.array([0.2, -0.1, 0.0]), "b": jnp.array([[1.0, 2.0]])}
    delta = {"a": jnp.array([0.1, 1.0, 3.0]), "b": jnp.array([[0.0, -2.0]])}
    got = si_importance(omega, delta, xi=0.1)
    np.testing.assert_allclose(got["a"], [0.2 / 0.11, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(got["b"], [[10.0, 2.0 / 4.1]], rtol=1e-6)
    raw = si_importance(omega, delta, xi=1e-3, clip_negative=False)
    np.testing.assert_allclose(raw["a"][1], -0.1 / 1.001, rtol=1e-6)
    with pytest.raises(ValueError, match="xi"):
        si_importance(omega, delta, xi=0.0)
    with pytest.raises(ValueError, match="delta_params"):
        si_importance(omega, {"a": delta["a"]})
    with pytest.raises(FloatingPointError, match="omega"):
        si_importance({**omega, "a": omega["a"] * jnp.nan}, delta)


def test_si_end_to_end_importance_on_quadratic(x64):
    """Ω = ω/(Δθ²+ξ) from a training run equals the closed form on the known trajectory."""
    lr, steps, xi = 0.1, 40, 0.1
    params = jax.tree.map(jnp.asarray, THETA0)
    final, state = run(with_path_integral(optax.sgd(lr)), params, steps, use_extra=False)
    delta = jax.tree.map(jnp.subtract, final, params)
    got = si_importance(get_path_integral(state), delta, xi=xi)
    exp = jax.tree.map(lambda w, h, c, t0: w / (((1 - (1 - lr * h) ** steps) * (c - t0)) ** 2 + xi),
                       closed_form_omega(lr, steps), H_DIAG, C, THETA0)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(exp)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_accumulate_path_integral_is_omega_minus_grad_times_update(x64):
    """The public step ω ← ω − g·Δθ, elementwise, in ω's dtypes; the optax forms use it."""
    rng = np.random.default_rng(0)
    omega = {"a": jnp.asarray(rng.normal(size=3), jnp.float32),
             "b": jnp.asarray(rng.normal(size=(1, 2)))}
    grads = {"a": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(rng.normal(size=(1, 2)))}
    updates = {"a": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(rng.normal(size=(1, 2)))}
    got = accumulate_path_integral(omega, grads, updates)
    assert got["a"].dtype == jnp.float32 and got["b"].dtype == jnp.float64
    np.testing.assert_allclose(got["a"], np.asarray(omega["a"]) - np.asarray(grads["a"]) *
                               np.asarray(updates["a"]), rtol=1e-6)
    np.testing.assert_allclose(got["b"], omega["b"] - grads["b"] * updates["b"], rtol=1e-15)
    jitted = jax.jit(accumulate_path_integral)(omega, grads, updates)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # track_path_integral is exactly this step
    tx = track_path_integral()
    _, state = tx.update(updates, PathIntegralState(omega), None, task_grads=grads)
    for a, b in zip(jax.tree.leaves(state.omega), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)


def test_one_path_integral_state_for_the_optax_wrappers_and_the_si_method():
    params = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones((1, 2), jnp.bfloat16)}
    pi = init_path_integral(params)
    assert isinstance(pi, PathIntegralState)
    for w, p in zip(jax.tree.leaves(pi.omega), jax.tree.leaves(params)):
        assert w.shape == p.shape and w.dtype == p.dtype and not jnp.any(w)
    tracked = track_path_integral().init(params)
    assert isinstance(tracked, PathIntegralState)
    assert all(jnp.array_equal(x, y) for x, y in zip(jax.tree.leaves(tracked),
                                                     jax.tree.leaves(pi)))
    # the si method keeps the same state type, so the same helpers read and reset it
    state = si().init(params, None, None, None)
    assert isinstance(state.path_integral, PathIntegralState)
    assert get_path_integral(state) is state.omega is state.path_integral.omega
    state = state._replace(path_integral=PathIntegralState(jax.tree.map(jnp.ones_like, params)))
    reset = reset_path_integral(state)
    assert all(not jnp.any(w) for w in jax.tree.leaves(reset.omega))
    kept = lambda s: jax.tree.leaves((s.penalty, s.start))
    assert all(x is y for x, y in zip(kept(reset), kept(state)))
