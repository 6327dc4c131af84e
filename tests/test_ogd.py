"""Tests for cljax.transforms.ogd (OGD: the factored / dense gradient store and its projection).

Oracles: per-example gradients by ``vmap(grad)`` of the ground-truth logit, and the orthogonal
projector g − Q Qᵀ g with Q from a float64 QR of the stored directions (materialised densely)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.layers import leaf_paths, with_weight_offsets
from cljax.transforms import (
    OGDDirections,
    factorable_layers,
    ground_truth_gradients,
    init_ogd,
    ogd_consolidate,
    ogd_deferred_value_and_grad,
    ogd_fold,
    ogd_project,
    ogd_projection,
    ogd_value_and_grad,
    ogd_weight_offsets,
    update_scale,
)


class _Net(nn.Module):
    """A conv (stored densely), a Dense with bias, a LayerNorm (dense leaves), a bias-free head."""

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Conv(2, (2, 2), padding="VALID")(x))
        h = jnp.tanh(nn.Dense(5)(h.reshape(h.shape[0], -1)))
        h = nn.LayerNorm()(h)
        return nn.Dense(3, use_bias=False)(h)


def _problem(n=24, dtype=jnp.float64):
    net = _Net()
    x = jax.random.normal(jax.random.key(0), (n, 4, 4, 1), dtype)
    y = jax.random.randint(jax.random.key(1), (n,), 0, 3)
    params = jax.tree.map(lambda a: a.astype(dtype), net.init(jax.random.key(2), x)["params"])
    logits_fn = lambda p, b: net.apply({"params": p}, b["x"])
    return logits_fn, params, {"x": x, "y": y}


def _filled(logits_fn, params, batch, state, **kw):
    """``state`` with the ground-truth gradients of ``batch`` added (jitted)."""
    return jax.jit(lambda s, b: ogd_consolidate(
        s, ground_truth_gradients(logits_fn, params, b, s), **kw))(state, batch)


@functools.partial(jax.jit, static_argnums=0)
def _per_example_grads(logits_fn, params, batch):
    def true_logit(p, ex):
        return logits_fn(p, jax.tree.map(lambda v: v[None], ex))[0, ex["y"]]
    return jax.vmap(jax.grad(true_logit), in_axes=(None, 0))(params, batch)


def _flat(tree, n=None):
    leaves = list(leaf_paths(tree).values())
    if n is None:
        return np.concatenate([np.asarray(v, np.float64).ravel() for v in leaves])
    return np.concatenate([np.asarray(v, np.float64).reshape(n, -1) for v in leaves], axis=1)


def _exact_projection(directions, g):
    q, r = np.linalg.qr(directions.T)
    q = q[:, np.abs(np.diag(r)) > 1e-10 * np.abs(np.diag(r)).max()]
    return g - q @ (q.T @ g)


def test_ground_truth_gradients_equal_per_example_grads(x64):
    logits_fn, params, batch = _problem()
    state = init_ogd(params, capacity=48, block=24)
    assert list(state.rows) == factorable_layers(params) == ["Dense_0", "Dense_1"]
    assert set(state.dense) == {"Conv_0/kernel", "Conv_0/bias", "LayerNorm_0/scale",
                                "LayerNorm_0/bias"}
    d = jax.jit(ground_truth_gradients, static_argnums=0)(logits_fn, params, batch, state)
    oracle = leaf_paths(_per_example_grads(logits_fn, params, batch))
    for n in state.rows:                          # rows ⊗ cotangents = [kernel; bias] gradient
        w = jnp.einsum("nr,no->nro", d.rows[n], d.cotangents[n])
        want = oracle[f"{n}/kernel"]
        if f"{n}/bias" in oracle:
            want = jnp.concatenate([want, oracle[f"{n}/bias"][:, None]], axis=1)
        np.testing.assert_allclose(w, want, rtol=1e-10, atol=1e-12)
    for p, v in d.dense.items():
        np.testing.assert_allclose(v, oracle[p], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("factored", [True, False])
def test_projection_is_the_orthogonal_projector_of_the_stored_span(x64, factored):
    logits_fn, params, batch = _problem()
    state = init_ogd(params, capacity=48, block=12, factored_layers=None if factored else ())
    add = jax.jit(lambda s, b: ogd_consolidate(s, ground_truth_gradients(logits_fn, params, b, s),
                                               tol=1e-12))
    first = jax.tree.map(lambda v: v[:12], batch)
    state = add(state, first)
    state = add(state, jax.tree.map(lambda v: v[12:], batch))
    assert int(state.size) == 24 and int(state.rank) == 24 and int(state.dropped) == 0
    stored = _flat(_per_example_grads(logits_fn, params, batch), 24)
    g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(5), p.shape, p.dtype), params)
    out = jax.jit(ogd_project)(g, state)
    np.testing.assert_allclose(_flat(out), _exact_projection(stored, _flat(g)), rtol=1e-8,
                               atol=1e-10)
    # orthogonal to every stored direction (relative to |g| and the direction's norm)
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    assert np.abs(unit @ _flat(out)).max() / np.linalg.norm(_flat(g)) < 1e-10
    # the optax transform is the same projection
    tx = optax.chain(ogd_projection(), optax.sgd(1.0))
    u, _ = tx.update(g, tx.init(g), None, ogd_state=state)
    np.testing.assert_allclose(-_flat(u), _flat(out), rtol=1e-12)


def test_float32_projection_is_orthogonal_to_1e6():
    logits_fn, params, batch = _problem(n=40, dtype=jnp.float32)
    state = _filled(logits_fn, params, batch, init_ogd(params, capacity=40))
    stored = _flat(_per_example_grads(logits_fn, params, batch), 40)
    g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(6), p.shape), params)
    out = _flat(jax.jit(ogd_project)(g, state))
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    assert np.abs(unit @ out).max() / np.linalg.norm(_flat(g)) < 1e-6


def test_empty_store_is_identity_and_span_duplicates_add_no_rank(x64):
    logits_fn, params, batch = _problem()
    state = init_ogd(params, capacity=36, block=12)
    g = jax.tree.map(lambda p: jnp.full(p.shape, 0.3, p.dtype), params)
    np.testing.assert_array_equal(_flat(jax.jit(ogd_project)(g, state)), _flat(g))   # plain SGD
    d = jax.jit(ground_truth_gradients, static_argnums=0)(
        logits_fn, params, jax.tree.map(lambda v: v[:6], batch), state)
    cat = lambda a, b: jax.tree.map(lambda u, v: jnp.concatenate([u, v]), a, b)
    twice = OGDDirections(jax.tree.map(lambda v: 2 * v, d.rows), d.cotangents,
                          jax.tree.map(lambda v: 2 * v, d.dense))
    doubled = cat(d, twice)                                            # 6 new, 6 in their span
    state = jax.jit(ogd_consolidate)(state, doubled)
    assert int(state.size) == 12 and int(state.rank) == 6


def test_fused_value_and_grad_equals_projecting_the_gradient(x64):
    logits_fn, params, batch = _problem()
    state = init_ogd(params, capacity=24, block=12)
    state = _filled(logits_fn, params, batch, state)
    # a loss calling the model twice (a layer's gradient is the sum over its calls), with aux
    train = jax.tree.map(lambda v: v[:8] * 0.5 + 1.0 if v.dtype.kind == "f" else v[:8], batch)

    def loss(p, b):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, b), b["y"]).mean()
        again = jnp.mean(logits_fn(p, {"x": 2 * b["x"]}) ** 2)
        return ce + 0.1 * again, {"ce": ce}

    (value, aux), grads = jax.jit(lambda s, p, b: ogd_value_and_grad(loss, s, p, b, has_aux=True)
                                  )(state, params, train)
    (v0, aux0), g0 = jax.value_and_grad(loss, has_aux=True)(params, train)
    np.testing.assert_allclose(value, v0, rtol=1e-12)
    np.testing.assert_allclose(aux["ce"], aux0["ce"], rtol=1e-12)
    np.testing.assert_allclose(_flat(grads), _flat(jax.jit(ogd_project)(g0, state)), rtol=1e-9,
                               atol=1e-12)
    assert not np.allclose(_flat(grads), _flat(g0))


def test_store_fills_without_recompiling_and_traced_overflow_is_counted(x64):
    logits_fn, params, batch = _problem()
    traces = []

    def add(s, b):
        traces.append(1)
        return ogd_consolidate(s, ground_truth_gradients(logits_fn, params, b, s))

    add = jax.jit(add)
    state = init_ogd(params, capacity=16, block=8)
    for t in range(3):
        state = add(state, jax.tree.map(lambda v: v[8 * t:8 * (t + 1)], batch))
    assert len(traces) == 1
    assert int(state.size) == 16 and int(state.dropped) == 8     # the third block found it full


def test_ogd_errors():
    logits_fn, params, batch = _problem(dtype=jnp.float32)
    state = init_ogd(params, capacity=24, block=12)
    d = jax.jit(ground_truth_gradients, static_argnums=0)(
        logits_fn, params, jax.tree.map(lambda v: v[:12], batch), state)
    add = jax.jit(ogd_consolidate)
    state = add(add(state, d), d)
    with pytest.raises(ValueError, match="do not fit"):
        ogd_consolidate(state, d)                         # eager calls raise when full
    with pytest.raises(ValueError, match="capacity"):
        init_ogd(params, capacity=0)
    with pytest.raises(TypeError, match=r"params\['Dense_0'\]\['kernel'\] must be a float"):
        init_ogd({"Dense_0": {"kernel": jnp.ones((2, 3), jnp.int32)}}, capacity=4)
    with pytest.raises(TypeError, match="logits_fn must be a callable"):
        ground_truth_gradients(None, params, batch, state)
    with pytest.raises(ValueError, match="multiple of block"):
        init_ogd(params, capacity=10, block=4)
    with pytest.raises(ValueError, match=r"\[in, out\] kernel"):
        init_ogd(params, capacity=4, factored_layers=["Conv_0"])
    with pytest.raises(TypeError, match="OGDDirections"):
        ogd_consolidate(state, {"Dense_0": jnp.ones((2, 5, 3))})
    with pytest.raises(ValueError, match="directions.rows"):
        ogd_consolidate(state, OGDDirections({}, d.cotangents, d.dense))
    with pytest.raises(ValueError, match="must have shape"):
        ogd_consolidate(state, d._replace(rows={**d.rows, "Dense_0": d.rows["Dense_0"][:, :3]}))
    with pytest.raises(FloatingPointError):
        ogd_consolidate(init_ogd(params, capacity=24),
                d._replace(rows={**d.rows, "Dense_0": d.rows["Dense_0"] * jnp.nan}))
    with pytest.raises(ValueError, match="tol"):
        ogd_consolidate(init_ogd(params, capacity=24), d, tol=0.0)
    with pytest.raises(ValueError, match="structure"):
        ogd_project({"Dense_0": params["Dense_0"]}, state)
    with pytest.raises(ValueError, match="ogd_state"):
        ogd_projection().update(params, optax.EmptyState(), None)
    with pytest.raises(ValueError, match=r"labels|\[0, 3\)"):
        ground_truth_gradients(logits_fn, params, {**batch, "y": batch["y"] + 3}, state)

    def twice(p, b):                                      # a factored layer called twice
        return logits_fn(p, b) + logits_fn(p, {"x": 2 * b["x"]})
    with pytest.raises(ValueError, match="2 calls"):
        ground_truth_gradients(twice, params, batch, state)


# --------------------------------------------------------------------------------------------
# The deferred update
# --------------------------------------------------------------------------------------------

def _ce(logits_fn):
    def loss(p, b):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, b), b["y"]).mean()
    return loss


def test_fold_and_offsets_are_params_plus_the_stored_directions(x64):
    """ogd_fold adds G a to the params (oracle: the dense per-example gradients), and the model
    under ogd_weight_offsets computes with those folded weights."""
    logits_fn, params, batch = _problem()
    state = _filled(logits_fn, params, jax.tree.map(lambda v: v[:12], batch),
                    init_ogd(params, capacity=24, block=12))
    a = jnp.zeros(24).at[:12].set(jax.random.normal(jax.random.key(5), (12,)))
    folded = ogd_fold(params, state, a)
    # the conv and the LayerNorm are stored densely (projected at each step, never deferred):
    # only the Dense layers move
    grads = _per_example_grads(logits_fn, params, jax.tree.map(lambda v: v[:12], batch))
    grads = {k: v if k.startswith("Dense") else jax.tree.map(jnp.zeros_like, v)
             for k, v in grads.items()}
    np.testing.assert_allclose(_flat(folded), _flat(params) + np.asarray(a[:12]) @ _flat(grads, 12),
                               rtol=1e-10, atol=1e-12)
    got = jax.jit(lambda p, s, c: with_weight_offsets(
        logits_fn, p, batch, weight_offsets=ogd_weight_offsets(s, c)))(params, state, a)
    np.testing.assert_allclose(got, logits_fn(folded, batch), rtol=1e-10)


@pytest.mark.slow
def test_deferred_sgd_steps_equal_ogd_steps(x64):
    """K SGD steps of the deferred update (params − η g, a + η coef; folded at the end) equal K
    steps of SGD on ogd_project of jax.grad, and each step's g − G coef is that projection."""
    logits_fn, params, batch = _problem()
    state = _filled(logits_fn, params, jax.tree.map(lambda v: v[:12], batch),
                    init_ogd(params, capacity=24, block=12))
    loss, lr = _ce(logits_fn), 0.3
    train = [jax.tree.map(lambda v: v[12 + 4 * i:16 + 4 * i], batch) for i in range(3)]

    @jax.jit
    def reference(p, b):
        return jax.tree.map(lambda w, u: w - lr * u, p, ogd_project(jax.grad(loss)(p, b), state))

    @jax.jit
    def deferred(p, a, b):
        value, g, coef = ogd_deferred_value_and_grad(loss, state, a, p, b)
        return jax.tree.map(lambda w, u: w - lr * u, p, g), a + lr * coef, value, g, coef

    p_ref, p, a = params, params, jnp.zeros(24)
    for b in train:
        theta = ogd_fold(p, state, a)
        p, a, value, g, coef = deferred(p, a, b)
        np.testing.assert_allclose(value, loss(theta, b), rtol=1e-12)
        np.testing.assert_allclose(_flat(ogd_fold(g, state, -coef)),    # g − G_f coef
                                   _flat(ogd_project(jax.grad(loss)(theta, b), state)),
                                   rtol=1e-9, atol=1e-12)
        p_ref = reference(p_ref, b)
    np.testing.assert_allclose(_flat(ogd_fold(p, state, a)), _flat(p_ref), rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(a))) > 0 and not np.allclose(_flat(p), _flat(p_ref))
    # vmapped over two coefficient vectors = two separate calls
    a2 = jnp.stack([a, 2 * a])
    vg = jax.jit(jax.vmap(lambda c: ogd_deferred_value_and_grad(loss, state, c, p, train[0])))(a2)
    one = ogd_deferred_value_and_grad(loss, state, 2 * a, p, train[0])
    np.testing.assert_allclose(vg[2][1], one[2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_flat(jax.tree.map(lambda v: v[1], vg[1])), _flat(one[1]),
                               rtol=1e-10, atol=1e-12)


def test_update_scale_reads_the_sgd_learning_rate_and_refuses_the_rest():
    g = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(2)}
    s, ok = update_scale(g, jax.tree.map(lambda v: -0.05 * v, g))
    np.testing.assert_allclose(s, -0.05, rtol=1e-6)
    assert bool(ok)
    opt = optax.sgd(0.1, momentum=0.9)
    st = opt.init(g)
    _, st = opt.update(g, st)
    u, _ = opt.update({"a": -g["a"], "b": g["b"]}, st)   # momentum: not a multiple of g
    assert not bool(update_scale({"a": -g["a"], "b": g["b"]}, u)[1])
    zero = jax.tree.map(jnp.zeros_like, g)
    s, ok = update_scale(zero, zero)
    assert float(s) == 0.0 and bool(ok)
    with pytest.raises(ValueError, match="updates must have the pytree structure of grads"):
        update_scale(g, {"a": g["a"]})
    with pytest.raises(ValueError, match="updates.*'b'.*has shape"):
        update_scale(g, {"a": g["a"], "b": jnp.ones(3)})
    with pytest.raises(ValueError, match="rtol must be > 0"):
        update_scale(g, g, rtol=0.0)


def test_deferred_errors():
    logits_fn, params, batch = _problem(dtype=jnp.float32)
    state = init_ogd(params, capacity=24, block=12)
    with pytest.raises(ValueError, match=r"coefficients must be a float \[24\]"):
        ogd_fold(params, state, jnp.zeros(12))
    with pytest.raises(ValueError, match="coefficients must be a float"):
        ogd_weight_offsets(state, jnp.zeros(24, jnp.int32))
    with pytest.raises(TypeError, match="OGDState"):
        ogd_fold(params, {}, jnp.zeros(24))
    with pytest.raises(TypeError, match="fun must be a callable"):
        ogd_deferred_value_and_grad(None, state, jnp.zeros(24), params, batch)
