"""Diagonal Fisher estimators: oracles first (float64, 1e-6 relative), then properties."""
import functools

import importance_helpers as H
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.importance import (
    argmax_fisher_diagonal,
    empirical_fisher_diagonal,
    estimation,
    exact_fisher_diagonal,
    true_fisher_diagonal,
)
from cljax.layers import leaf_paths

PROBLEMS = {"mlp_multihead": functools.partial(H.mlp_problem, heads=2),
            "cnn": H.cnn_problem, "mixed": H.mixed_problem, "plain": H.plain_problem}


def _unpack(problem):
    model, params, batch = problem
    return (model if callable(model) else model.logits_fn), params, batch


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_empirical_and_exact_match_oracles(x64, name):
    """Empirical vs a per-example loop over jax.grad; exact vs an explicit p-weighted class sum."""
    f, params, batch = _unpack(PROBLEMS[name]())
    got = empirical_fisher_diagonal(f, params, batch, chunk_size=3)
    assert H.rel_err(got, H.oracle_empirical(f, params, batch)) < 1e-6
    got = exact_fisher_diagonal(f, params, batch, chunk_size=3)
    assert H.rel_err(got, H.oracle_exact(f, params, batch)) < 1e-6


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_argmax_matches_its_oracle_and_ignores_the_labels(x64, name):
    """Hsu et al.'s Fisher: the empirical Fisher on the model's argmax labels, against a loop;
    the dataset labels are not read (the same with them permuted or absent)."""
    f, params, batch = _unpack(PROBLEMS[name]())
    want = H.oracle_argmax(f, params, batch)
    got = argmax_fisher_diagonal(f, params, batch, chunk_size=3)
    assert H.rel_err(got, want) < 1e-6
    assert H.rel_err(argmax_fisher_diagonal(f, params, batch, implementation="vmap"), want) < 1e-6
    relabelled = {**batch, "y": jnp.roll(batch["y"], 1)}
    assert H.rel_err(argmax_fisher_diagonal(f, params, relabelled, chunk_size=3), got) == 0.0
    no_y = {k: v for k, v in batch.items() if k != "y"}
    assert H.rel_err(argmax_fisher_diagonal(f, params, no_y, chunk_size=3), got) == 0.0
    # with every dataset label equal to the argmax it is the empirical Fisher
    top = jnp.argmax(f(params, batch), axis=-1).astype(batch["y"].dtype)
    assert H.rel_err(empirical_fisher_diagonal(f, params, {**batch, "y": top}, chunk_size=3),
                     got) < 1e-10


@pytest.mark.parametrize("name,estimator", [("mixed", "empirical"), ("mixed", "exact"),
                                            ("cnn", "true")])
def test_fast_path_matches_vmap_fallback(x64, name, estimator):
    f, params, batch = _unpack(PROBLEMS[name]())
    fn = {"empirical": empirical_fisher_diagonal, "exact": exact_fisher_diagonal,
          "true": functools.partial(true_fisher_diagonal, key=jax.random.PRNGKey(3),
                                    num_samples=2)}[estimator]
    fast = fn(f, params, batch, chunk_size=3)
    slow = fn(f, params, batch, implementation="vmap")
    assert H.rel_err(fast, slow) < 1e-6


def test_dispatch_uses_fast_path_for_flax_layers_and_fallback_for_the_rest(x64):
    model, params, batch = H.mixed_problem()
    plan = estimation.discover(model.logits_fn, params, batch, "auto")
    assert [s.kind for s in plan.layers] == ["conv", "conv", "dense", "dense"]
    names = list(leaf_paths(params))
    assert sorted(names[i] for i in plan.fallback_indices) == [
        "LayerNorm_0/bias", "LayerNorm_0/scale", "scale"]
    plain = estimation.discover(H.plain_logits_fn, H.plain_problem()[1], H.plain_problem()[2], "auto")
    assert plain.layers == () and len(plain.fallback_indices) == 5
    model, params, batch = H.shared_problem()
    plan = estimation.discover(model.logits_fn, params, batch, "auto")
    assert [s.name for s in plan.layers] == ["Dense_1"] and len(plan.fallback_indices) == 2
    got = empirical_fisher_diagonal(model.logits_fn, params, batch)
    assert H.rel_err(got, H.oracle_empirical(model.logits_fn, params, batch)) < 1e-6


def test_exact_equals_diagonal_of_dense_ggn(x64):
    model, params, batch = H.mlp_problem(n=5, d=3, widths=(3,), classes=3)
    ggn, unravel = H.dense_ggn(model.logits_fn, params, batch)
    got = exact_fisher_diagonal(model.logits_fn, params, batch)
    assert H.rel_err(got, unravel(jnp.diag(ggn))) < 1e-6


def test_true_fisher_monte_carlo_converges_to_exact(x64):
    """Statistical test: with S draws per example the MC estimate of each entry has standard
    deviation sd = sqrt(mean_n Var_y[g²] / (N·S)) (computed exactly by the oracle); every entry
    must lie within 5 sd (+1e-10) of the exact Fisher for S = 1000, and the error must shrink
    from S = 10 to S = 1000 (same key, different S)."""
    model, params, batch = H.mlp_problem(n=4, d=3, widths=(3,), classes=3, seed=1)
    f = model.logits_fn
    exact = H.oracle_exact(f, params, batch)
    var = H.oracle_exact_fourth_moment(f, params, batch)
    n = batch["x"].shape[0]
    errs = {}
    for s in (10, 1000):
        est = true_fisher_diagonal(f, params, batch, jax.random.PRNGKey(0), num_samples=s)
        sd = jax.tree.map(lambda v: jnp.sqrt(v / (n * s)), var)
        if s == 1000:
            ok = jax.tree.map(lambda e, x, d: bool(jnp.all(jnp.abs(e - x) <= 5 * d + 1e-10)),
                              est, exact, sd)
            assert all(jax.tree.leaves(ok)), ok
        errs[s] = H.rel_err(est, exact)
    assert errs[1000] < errs[10] and errs[1000] < 0.1


def test_true_fisher_samples_from_the_model_not_the_labels(x64):
    f, params, batch = _unpack(H.mlp_problem())
    a = true_fisher_diagonal(f, params, batch, jax.random.PRNGKey(0))
    b = true_fisher_diagonal(f, params, {**batch, "y": (batch["y"] + 1) % 3}, jax.random.PRNGKey(0))
    c = true_fisher_diagonal(f, params, batch, jax.random.PRNGKey(1))
    assert H.rel_err(a, b) == 0.0 and H.rel_err(a, c) > 1e-3


def test_chunking_and_order_invariance(x64):
    f, params, batch = _unpack(H.mlp_problem(n=7, heads=2))
    ref_e = H.oracle_empirical(f, params, batch)
    perm = np.random.RandomState(0).permutation(7)
    shuffled = {k: v[perm] for k, v in batch.items()}
    for chunk in (1, 3, None):   # 3 does not divide 7: padded with zero-weight examples
        for b in (batch, shuffled):
            got = empirical_fisher_diagonal(f, params, b, chunk_size=chunk)
            assert H.rel_err(got, ref_e) < 1e-10
    # true Fisher draws with fold_in(key, example index): invariant to chunking
    t_ref = true_fisher_diagonal(f, params, batch, jax.random.PRNGKey(5), num_samples=3)
    t = true_fisher_diagonal(f, params, batch, jax.random.PRNGKey(5), num_samples=3, chunk_size=3)
    assert H.rel_err(t, t_ref) < 1e-10


def test_outputs_nonnegative_same_structure_and_dtype():
    f, params, batch = _unpack(H.cnn_problem(dtype=jnp.float32))
    for r in (exact_fisher_diagonal(f, params, batch, chunk_size=2),
              true_fisher_diagonal(f, params, batch, jax.random.PRNGKey(0))):
        assert jax.tree.structure(r) == jax.tree.structure(params)
        for a, p in zip(jax.tree.leaves(r), jax.tree.leaves(params)):
            assert a.shape == p.shape and a.dtype == p.dtype and bool(jnp.all(a >= 0))
            assert bool(jnp.all(jnp.isfinite(a)))


def test_multihead_only_active_head_gets_importance(x64):
    model, params, batch = H.mlp_problem(n=6, classes=3, heads=3)
    batch = {**batch, "task": jnp.array([0, 2, 0, 2, 0, 2])}
    for fn in (empirical_fisher_diagonal, exact_fisher_diagonal):
        r = fn(model.logits_fn, params, batch, chunk_size=3)
        kern = r["Dense_2"]["kernel"].reshape(-1, 3, 3)   # [in, head, class]
        bias = r["Dense_2"]["bias"].reshape(3, 3)
        assert float(jnp.max(kern[:, 1])) == 0.0 and float(jnp.max(bias[1])) == 0.0
        assert float(jnp.min(bias[0])) > 0 and float(jnp.min(bias[2])) > 0


def test_jit_equals_eager_and_no_recompilation():
    traces = []

    model, params, batch = H.mlp_problem(dtype=jnp.float32)

    def logits_fn(p, b):
        traces.append(1)
        return model.logits_fn(p, b)

    jitted = jax.jit(functools.partial(exact_fisher_diagonal, logits_fn, chunk_size=3))
    eager = exact_fisher_diagonal(logits_fn, params, batch, chunk_size=3)
    assert H.rel_err(jitted(params, batch), eager) < 1e-5
    # a new batch of the same shape: neither the user's jit nor the internal one retraces
    batch2 = {**batch, "x": batch["x"] + 1.0}
    n0 = len(traces)
    jitted(params, batch2)
    exact_fisher_diagonal(logits_fn, params, batch2, chunk_size=3)
    assert len(traces) == n0
    assert jitted._cache_size() == 1


@pytest.mark.parametrize("fn", ["empirical", "true", "exact"])
def test_bad_inputs_raise(fn):
    f, params, batch = _unpack(H.mlp_problem(dtype=jnp.float32))
    call = {"empirical": empirical_fisher_diagonal,
            "true": functools.partial(true_fisher_diagonal, key=jax.random.PRNGKey(0)),
            "exact": exact_fisher_diagonal}[fn]
    with pytest.raises(ValueError, match="must have shape"):
        call(f, params, {**batch, "y": batch["y"][:-1]})
    with pytest.raises(ValueError, match="chunk_size"):
        call(f, params, batch, chunk_size=0)
    with pytest.raises(ValueError, match="params"):
        call(f, {"Dense_0": params["Dense_0"]}, batch)
    with pytest.raises(ValueError, match="params"):
        bad = jax.tree.map(lambda v: v, params)
        bad["Dense_1"] = {**bad["Dense_1"], "kernel": jnp.zeros((2, 2))}
        call(f, bad, batch)
    nan_params = jax.tree.map(lambda v: v * jnp.nan, params)
    with pytest.raises(FloatingPointError, match="NaN"):
        call(f, nan_params, batch)
    with pytest.raises(ValueError, match="implementation"):
        call(f, params, batch, implementation="fast")
    if fn == "empirical":
        with pytest.raises(ValueError, match=r"batch\['y'\] must lie in \[0, C\)"):
            call(f, params, {**batch, "y": batch["y"].at[0].set(3)})
        with pytest.raises(ValueError, match=r"must lie in"):
            call(f, params, {**batch, "y": batch["y"].at[0].set(-1)})
        with pytest.raises(KeyError, match="'y'"):
            call(f, params, {"x": batch["x"]})
    if fn == "true":
        with pytest.raises(ValueError, match="num_samples"):
            call(f, params, batch, num_samples=0)
        with pytest.raises(TypeError, match="key"):
            true_fisher_diagonal(f, params, batch, None)


def test_out_of_range_labels_inside_jit_poison_the_estimate():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cljax.importance import empirical_fisher_diagonal
    from cljax.nn import MLP, as_model
    model = as_model(MLP((4,), 3))
    batch = {"x": jnp.ones((6, 5)), "y": jnp.array([0, 1, 2, 1, 0, 7])}
    params = model.init(jax.random.key(0), batch)
    out = jax.jit(lambda p, b: empirical_fisher_diagonal(model.logits_fn, p, b))(params, batch)
    assert all(np.all(np.isnan(np.asarray(x))) for x in jax.tree.leaves(out))
    ok = dict(batch, y=jnp.array([0, 1, 2, 1, 0, 2]))
    good = jax.jit(lambda p, b: empirical_fisher_diagonal(model.logits_fn, p, b))(params, ok)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(good))
