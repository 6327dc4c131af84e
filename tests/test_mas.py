"""MAS importance (Aljundi et al. 2018): oracle first (float64, 1e-6 relative), then properties."""
import functools

import importance_helpers as H
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.importance import mas_importance


@pytest.mark.parametrize("problem", [functools.partial(H.mlp_problem, heads=2), H.cnn_problem,
                                     H.mixed_problem, H.plain_problem])
def test_matches_per_example_abs_gradient_loop(x64, problem):
    model, params, batch = problem()
    f = model if callable(model) else model.logits_fn
    got = mas_importance(f, params, batch, chunk_size=3)
    assert H.rel_err(got, H.oracle_mas(f, params, batch)) < 1e-6


def test_abs_is_per_example_not_of_the_sum(x64):
    """|Σ_n g_n| ≠ Σ_n |g_n|: the estimate must exceed |mean gradient| somewhere."""
    model, params, batch = H.mlp_problem(heads=2)
    got = mas_importance(model.logits_fn, params, batch, chunk_size=3)
    g = jax.jit(jax.grad(lambda p: jnp.mean(jnp.sum(model.logits_fn(p, batch) ** 2, -1))))(params)
    gaps = jax.tree.map(lambda a, b: float(jnp.min(a - jnp.abs(b))), got, g)
    assert min(jax.tree.leaves(gaps)) > -1e-12
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(a - jnp.abs(b))),
                                            got, g))) > 1e-3


def _oracle_grouped(logits_fn, params, batch, g):
    """(1/N) Σ_G |∂ Σ_{n∈G} ‖f(x_n)‖² / ∂θ| by a loop over the groups of g consecutive examples."""
    n = batch["x"].shape[0]
    acc = jax.tree.map(jnp.zeros_like, params)
    for start in range(0, n, g):
        group = {k: v[start:start + g] for k, v in batch.items()}
        grad = jax.grad(lambda p: jnp.sum(logits_fn(p, group) ** 2))(params)
        acc = jax.tree.map(lambda a, b: a + jnp.abs(b), acc, grad)
    return jax.tree.map(lambda a: a / n, acc)


@pytest.mark.parametrize("problem,g", [(functools.partial(H.mlp_problem, n=9, heads=2), 3),
                                       (functools.partial(H.cnn_problem, n=6), 2)])
def test_grouped_matches_a_loop_over_the_groups(x64, problem, g):
    """A-GEM's code: the absolute value of each group's summed gradient, / N."""
    model, params, batch = problem()
    f = model.logits_fn
    want = _oracle_grouped(f, params, batch, g)
    for chunk in (None, 4, 1):
        got = mas_importance(f, params, batch, chunk_size=chunk, group_size=g)
        assert H.rel_err(got, want) < 1e-10, chunk
    assert H.rel_err(jax.jit(lambda p: mas_importance(f, p, batch, group_size=g))(params),
                     want) < 1e-10
    # |Σ| ≤ Σ|·|: never above the per-example estimate, and strictly below somewhere
    per_example = mas_importance(f, params, batch)
    gaps = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.min(b - a)), want, per_example))
    assert min(gaps) > -1e-12
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(b - a)), want,
                                            per_example))) > 1e-6
    # one group of all N: |∇ Σ_n ‖f‖²| / N
    n = batch["x"].shape[0]
    whole = jax.grad(lambda p: jnp.sum(f(p, batch) ** 2))(params)
    assert H.rel_err(mas_importance(f, params, batch, group_size=n),
                     jax.tree.map(lambda a: jnp.abs(a) / n, whole)) < 1e-10


def test_grouped_refuses_bad_groups():
    model, params, batch = H.mlp_problem(dtype=jnp.float32)       # 7 examples
    with pytest.raises(ValueError, match="7 examples; with group_size=2 it must be a positive "
                                         "multiple of 2"):
        mas_importance(model.logits_fn, params, batch, group_size=2)
    for bad in (0, -1, 2.0, True):
        with pytest.raises((ValueError, TypeError), match="group_size"):
            mas_importance(model.logits_fn, params, batch, group_size=bad)
    with pytest.raises(ValueError, match="implementation"):
        mas_importance(model.logits_fn, params, batch, group_size=7, implementation="fast")
    with pytest.raises(ValueError, match=r"batch\['task'\] must have shape \(7,\)"):
        mas_importance(model.logits_fn, params, {**batch, "task": jnp.zeros(3, jnp.int32)},
                       group_size=7)
    with pytest.raises(TypeError, match="logits_fn must be callable"):
        mas_importance(None, params, batch, group_size=7)


def test_fast_path_matches_vmap_fallback_on_conv(x64):
    model, params, batch = H.cnn_problem()
    fast = mas_importance(model.logits_fn, params, batch, chunk_size=3)
    slow = mas_importance(model.logits_fn, params, batch, implementation="vmap")
    assert H.rel_err(fast, slow) < 1e-6


def test_properties_chunking_order_labels_unused_multihead(x64):
    model, params, batch = H.mlp_problem(heads=2)
    f = model.logits_fn
    ref = mas_importance(f, params, batch, chunk_size=3)
    perm = np.random.RandomState(1).permutation(batch["x"].shape[0])
    assert H.rel_err(mas_importance(f, params, {k: v[perm] for k, v in batch.items()},
                                    chunk_size=3), ref) < 1e-10
    assert H.rel_err(mas_importance(f, params, batch), ref) < 1e-10
    no_y = {k: v for k, v in batch.items() if k != "y"}
    assert H.rel_err(mas_importance(f, params, no_y, chunk_size=3), ref) == 0.0
    for leaf in jax.tree.leaves(ref):
        assert bool(jnp.all(leaf >= 0))
    only0 = {**batch, "task": jnp.zeros_like(batch["task"])}
    r = mas_importance(f, params, only0, chunk_size=3)
    kern = r["Dense_2"]["kernel"].reshape(-1, 2, 3)
    assert float(jnp.max(kern[:, 1])) == 0.0 and float(jnp.min(jnp.abs(kern[:, 0]).sum(0))) > 0


def test_jit_equals_eager_and_dtype():
    model, params, batch = H.mlp_problem(dtype=jnp.float32)
    eager = mas_importance(model.logits_fn, params, batch, chunk_size=4)
    jitted = jax.jit(functools.partial(mas_importance, model.logits_fn, chunk_size=4))
    assert H.rel_err(jitted(params, batch), eager) < 1e-5
    jitted(params, {**batch, "x": batch["x"] * 2})
    assert jitted._cache_size() == 1
    for a, p in zip(jax.tree.leaves(eager), jax.tree.leaves(params)):
        assert a.dtype == p.dtype == jnp.float32 and a.shape == p.shape


def test_bad_inputs_raise():
    model, params, batch = H.mlp_problem(dtype=jnp.float32)
    f = model.logits_fn
    with pytest.raises(ValueError, match="must have shape"):
        mas_importance(f, params, {**batch, "y": batch["y"][:3]})
    with pytest.raises(ValueError, match="chunk_size"):
        mas_importance(f, params, batch, chunk_size=-1)
    with pytest.raises(TypeError, match="dict"):
        mas_importance(f, params, batch["x"])
    with pytest.raises(ValueError, match="params"):
        mas_importance(f, {"Dense_9": params["Dense_0"]}, batch)
    with pytest.raises(FloatingPointError, match="NaN"):
        mas_importance(f, params, {**batch, "x": batch["x"].at[2, 0].set(jnp.inf)})
    with pytest.raises(TypeError, match="callable"):
        mas_importance(params, params, batch)
