"""Tests for cljax.transforms.projection: A-GEM and GEM gradient projections."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

from cljax.transforms import agem_project, agem_projection, gem_dual, gem_project, gem_projection


def _tree(key, scale=1.0, lead=()):
    k1, k2 = jax.random.split(key)
    return {"w": scale * jax.random.normal(k1, lead + (3, 4)), "b": scale * jax.random.normal(k2, lead + (4,))}


def _flat(t):
    return jnp.concatenate([x.reshape(x.shape[:1] + (-1,)) if x.ndim > 2 else x.reshape(-1)
                            for x in jax.tree.leaves(t)], axis=-1)


def _vec(t):
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(t)])


def test_agem_projection_oracle_and_constraint():
    for seed in range(20):
        g, r = _tree(jax.random.key(2 * seed)), _tree(jax.random.key(2 * seed + 1))
        gv, rv = _vec(g), _vec(r)
        out = _vec(agem_project(g, r))
        if gv @ rv >= 0:
            np.testing.assert_array_equal(out, gv)        # the constraint holds: unchanged
        else:
            np.testing.assert_allclose(out, gv - (gv @ rv) / (rv @ rv) * rv, rtol=1e-5,
                                       atol=1e-6)
            assert out @ rv >= -1e-6 * np.linalg.norm(out) * np.linalg.norm(rv)


def test_agem_transform_in_a_chain_and_under_jit():
    g, r = _tree(jax.random.key(0)), _tree(jax.random.key(1))
    r = jax.tree.map(lambda x: -x, g) if _vec(g) @ _vec(r) >= 0 else r
    tx = optax.chain(agem_projection(), optax.sgd(1.0))
    state = tx.init(g)
    upd, _ = jax.jit(tx.update)(g, state, None, reference_grads=r)
    assert_trees_close(upd, jax.tree.map(lambda x: -x, agem_project(g, r)), rtol=1e-6)
    with pytest.raises(ValueError, match="reference_grads"):
        tx.update(g, state, None)
    with pytest.raises(ValueError, match="reference_grads"):
        agem_project(g, {"w": r["w"]})


def _qp_oracle(G, g, mask, margin, eps):
    """Brute force over active sets: the v ≥ margin minimising ½vᵀ(GGᵀ+εI)v + (Gg)ᵀv."""
    idx = np.flatnonzero(mask)
    Q = G[idx] @ G[idx].T + eps * np.eye(len(idx))
    p = G[idx] @ g
    best, best_val = None, np.inf
    for r in range(len(idx) + 1):
        for free in itertools.combinations(range(len(idx)), r):
            v = np.full(len(idx), margin, np.float64)
            fr = list(free)
            if fr:
                fixed = [i for i in range(len(idx)) if i not in fr]
                rhs = -p[fr] - Q[np.ix_(fr, fixed)] @ v[fixed]
                try:
                    v[fr] = np.linalg.solve(Q[np.ix_(fr, fr)], rhs)
                except np.linalg.LinAlgError:
                    continue
            if np.all(v >= margin - 1e-12):
                val = 0.5 * v @ Q @ v + p @ v
                if val < best_val:
                    best, best_val = v, val
    full = np.zeros(len(mask))
    full[idx] = best
    return full


@pytest.mark.parametrize("margin,eps", [(0.0, 0.0), (0.5, 1e-3)])
def test_gem_dual_matches_brute_force(margin, eps, x64):
    rng = np.random.default_rng(0)
    for trial in range(10):
        T, P = 5, 12
        G = rng.normal(size=(T, P))
        g = rng.normal(size=P) - 0.8 * G[:3].sum(0)       # violate some constraints
        mask = np.array([True, True, True, trial % 2 == 0, False])
        v = gem_dual(jnp.asarray(G @ G.T), jnp.asarray(G @ g), jnp.asarray(mask), margin=margin,
                     eps=eps, num_sweeps=2000)
        np.testing.assert_allclose(v, _qp_oracle(G, g, mask, margin, eps), rtol=1e-6, atol=1e-8)


def test_gem_constraints_hold_after_projection():
    """Stated tolerance (module docstring): g̃ᵀg_k ≥ −1e-5·‖g̃‖‖g_k‖, 100 sweeps, float32."""
    rng = np.random.default_rng(1)
    worst = 0.0
    project = jax.jit(lambda a, b, c: gem_project(a, b, c, margin=0.0, eps=0.0))
    for trial in range(12):
        T = (2, 5, 12, 20)[trial % 4]          # four shapes: four compilations
        refs = {"w": jnp.asarray(rng.normal(size=(T, 30, 10)), jnp.float32),
                "b": jnp.asarray(rng.normal(size=(T, 10)), jnp.float32)}
        g = {"w": jnp.asarray(rng.normal(size=(30, 10)) - refs["w"][:3].sum(0), jnp.float32),
             "b": jnp.asarray(rng.normal(size=(10,)), jnp.float32)}
        mask = jnp.asarray(rng.random(T) < 0.8)
        out = project(g, refs, mask)
        ov = _vec(out)
        for k in np.flatnonzero(np.asarray(mask)):
            rk = np.concatenate([np.asarray(refs["b"][k]).ravel(), np.asarray(refs["w"][k]).ravel()])
            rel = (ov @ rk) / (np.linalg.norm(ov) * np.linalg.norm(rk))
            worst = min(worst, rel)
    assert worst >= -1e-5, worst


def test_gem_with_one_past_task_equals_agem_and_leaves_satisfied_gradients():
    g, r = _tree(jax.random.key(3)), _tree(jax.random.key(4))
    if _vec(g) @ _vec(r) >= 0:
        r = jax.tree.map(lambda x: -x, r)
    refs = jax.tree.map(lambda x: jnp.stack([x, 100 * x]), r)          # task 1 masked out
    mask = jnp.array([True, False])
    got = gem_project(g, refs, mask, margin=0.0, eps=1e-7)
    assert_trees_close(got, agem_project(g, r, eps=1e-7), rtol=1e-5, atol=1e-6)
    same = gem_project(r, refs, jnp.array([True, True]))                  # r·g_k > 0 for all
    assert_trees_close(same, r, rtol=0, atol=0)
    tx = optax.chain(gem_projection(margin=0.0, eps=1e-7), optax.sgd(1.0))
    upd, _ = tx.update(g, tx.init(g), None, reference_grads=refs, reference_mask=mask)
    assert_trees_close(upd, jax.tree.map(lambda x: -x, got), rtol=1e-6)


def test_gem_bad_inputs():
    g = _tree(jax.random.key(0))
    with pytest.raises(ValueError, match="margin"):
        gem_projection(margin=-1.0)
    with pytest.raises(ValueError, match="reference_grads"):
        gem_projection().update(g, optax.EmptyState(), None)
    with pytest.raises(ValueError, match="leading"):
        gem_project(g, g, jnp.array([True]))
    with pytest.raises(ValueError, match="num_sweeps"):
        gem_projection(num_sweeps=0)
