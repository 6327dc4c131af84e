"""K-FAC factors and helpers: brute-force factors and dense Kronecker oracles (float64)."""
import functools

import importance_helpers as H
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.importance import (
    kfac_damped_inverse_matvec,
    kfac_factors,
    kfac_matvec,
    kfac_quadratic_form,
)
from cljax.types import KFACFactors


def _sampled_labels(model, params, batch, key):
    """The labels kfac_factors(fisher='true') draws: categorical(fold_in(key, n), logits_n)."""
    logits = model.logits_fn(params, batch)
    return jnp.array([jax.random.categorical(jax.random.fold_in(key, i), logits[i], shape=(1,))[0]
                      for i in range(logits.shape[0])])


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_dense_factors_match_brute_force(x64, fisher):
    model, params, batch = H.mlp_problem(n=7)
    key = jax.random.PRNGKey(4)
    got = kfac_factors(model.logits_fn, params, batch, key, fisher=fisher, chunk_size=3)
    ys = batch["y"] if fisher == "empirical" else _sampled_labels(model, params, batch, key)
    want = H.oracle_kfac_mlp(params, batch, ys)
    assert sorted(got) == sorted(want) == ["Dense_0", "Dense_1", "Dense_2"]
    for name, (a, g) in want.items():
        assert isinstance(got[name], KFACFactors)
        assert got[name].A.shape == (params[name]["kernel"].shape[0] + 1,) * 2
        assert H.rel_err(got[name].A, a) < 1e-6 and H.rel_err(got[name].G, g) < 1e-6


def test_exact_factors_weight_every_class_by_its_probability(x64):
    model, params, batch = H.mlp_problem(n=5)
    got = kfac_factors(model.logits_fn, params, batch, fisher="exact", chunk_size=2)
    p = jax.nn.softmax(model.logits_fn(params, batch))
    n, c = p.shape
    for name in got:
        want_g = 0.0
        for y in range(c):
            names, q = H.mlp_layer_quantities(params, batch, jnp.full((n,), y))
            l = names.index(name)
            want_g = want_g + sum(p[i, y] * jnp.outer(q[i][l][1], q[i][l][1]) for i in range(n)) / n
        want_a = H.oracle_kfac_mlp(params, batch, batch["y"])[name][0]
        assert H.rel_err(got[name].A, want_a) < 1e-6 and H.rel_err(got[name].G, want_g) < 1e-6
    # many sampled labels converge to it
    sampled = kfac_factors(model.logits_fn, params, batch, jax.random.PRNGKey(0), fisher="true",
                           num_samples=4000)
    for name in got:
        assert H.rel_err(sampled[name].G, got[name].G) < 0.1


def test_conv_factors_match_brute_force_kfc(x64):
    model, params, batch = H.cnn_problem(n=3)
    got = kfac_factors(model.logits_fn, params, batch, fisher="empirical", chunk_size=2)
    a, g = H.oracle_kfac_cnn_first_conv(params, batch, batch["y"])
    assert got["Conv_0"].A.shape == (3 * 3 * 2 + 1,) * 2
    assert H.rel_err(got["Conv_0"].A, a) < 1e-6 and H.rel_err(got["Conv_0"].G, g) < 1e-6


def test_single_example_dense_block_is_exact_kronecker(x64):
    """For one example the empirical Fisher block of a dense layer is exactly A ⊗ G:
    (vec ΔW̄ · vec ∇W̄)² = tr(ΔW̄ᵀ A ΔW̄ G)."""
    model, params, batch = H.mlp_problem(n=1)
    factors = kfac_factors(model.logits_fn, params, batch, fisher="empirical")
    grad = H.per_example_grad(model.logits_fn, params, batch, 0, int(batch["y"][0]))
    rng = np.random.RandomState(0)
    delta = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape)), params)
    want = sum(float(jnp.sum(delta[k]["kernel"] * grad[k]["kernel"]) +
                     jnp.sum(delta[k]["bias"] * grad[k]["bias"])) ** 2 for k in params)
    np.testing.assert_allclose(float(kfac_quadratic_form(factors, delta)), want, rtol=1e-8)


def _dense_kron_problem():
    rng = np.random.RandomState(3)
    params = {"enc": {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(3, 2))),
                                  "bias": jnp.asarray(rng.normal(size=(2,)))}},
              "Conv_0": {"kernel": jnp.asarray(rng.normal(size=(2, 1, 2, 3)))},  # no bias
              "other": jnp.asarray(rng.normal(size=(4,)))}

    def psd(n):
        m = rng.normal(size=(n, n + 1))
        return jnp.asarray(m @ m.T)
    factors = {"enc/Dense_0": KFACFactors(psd(4), psd(2)), "Conv_0": KFACFactors(psd(4), psd(3))}
    return params, factors


def _wbar(params, name):
    node = params
    for k in name.split("/"):
        node = node[k]
    w = node["kernel"].reshape(-1, node["kernel"].shape[-1])
    if "bias" in node:
        w = jnp.concatenate([w, node["bias"][None]], 0)
    return w


def test_helpers_match_dense_kronecker_product(x64):
    params, factors = _dense_kron_problem()
    # jitted once each (the helpers are jit-compatible; eager op-by-op dispatch is slow)
    matvec = jax.jit(kfac_matvec)(factors, params)
    inverse = jax.jit(functools.partial(kfac_damped_inverse_matvec, damping=0.3))(factors, params)
    q = 0.0
    for name, f in factors.items():
        m = np.kron(np.asarray(f.A), np.asarray(f.G))   # row-major vec of W̄ [in(+1), out]
        v = np.asarray(_wbar(params, name)).reshape(-1)
        q += float(v @ m @ v)
        np.testing.assert_allclose(_wbar(matvec, name).reshape(-1), m @ v, rtol=1e-10)
        np.testing.assert_allclose(_wbar(inverse, name).reshape(-1),
                                   np.linalg.solve(m + 0.3 * np.eye(m.shape[0]), v), rtol=1e-8)
    quad, g = jax.jit(jax.value_and_grad(lambda p: kfac_quadratic_form(factors, p)))(params)
    np.testing.assert_allclose(float(quad), q, rtol=1e-10)
    # parameters in no factored layer: zero curvature
    np.testing.assert_array_equal(matvec["other"], 0.0)
    np.testing.assert_allclose(inverse["other"], params["other"] / 0.3)
    # ½ q(Δ) has gradient A ΔW̄ G
    g = jax.tree.map(lambda v: 0.5 * v, g)
    mv = matvec
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(mv)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_factors_psd_multihead_jit_and_no_recompile():
    model, params, batch = H.cnn_problem(n=5, heads=2, dtype=jnp.float32)
    fn = jax.jit(lambda p, b, k: kfac_factors(model.logits_fn, p, b, k, chunk_size=2))
    f1 = fn(params, batch, jax.random.PRNGKey(0))
    eager = kfac_factors(model.logits_fn, params, batch, jax.random.PRNGKey(0), chunk_size=2)
    for name in f1:
        for a, b in zip(f1[name], eager[name]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
        for m in f1[name]:
            np.testing.assert_allclose(m, m.T, rtol=1e-5, atol=1e-7)
            m = np.asarray(m, np.float64)
            assert np.linalg.eigvalsh(m).min() > -1e-4 * np.abs(m).max()
    fn(params, {**batch, "x": batch["x"] + 1}, jax.random.PRNGKey(1))
    assert fn._cache_size() == 1
    # task-IL: with every example on head 0, G's rows/cols of head 1's outputs are 0
    only0 = {**batch, "task": jnp.zeros_like(batch["task"])}
    g = kfac_factors(model.logits_fn, params, only0, fisher="empirical")["Dense_1"].G
    assert float(jnp.abs(g[3:, :]).max()) == 0.0 and float(jnp.abs(g[:3, :3]).max()) > 0


def test_bad_inputs_raise():
    model, params, batch = H.mlp_problem(dtype=jnp.float32)
    f = model.logits_fn
    with pytest.raises(ValueError, match="fisher"):
        kfac_factors(f, params, batch, jax.random.PRNGKey(0), fisher="argmax")
    with pytest.raises(TypeError, match="key"):
        kfac_factors(f, params, batch)
    with pytest.raises(ValueError, match="num_samples"):
        kfac_factors(f, params, batch, jax.random.PRNGKey(0), num_samples=0)
    with pytest.raises(ValueError, match="no recognised layer"):
        fn, p, b = H.plain_problem(dtype=jnp.float32)
        kfac_factors(fn, p, b, fisher="empirical")
    params64, factors = _dense_kron_problem()
    with pytest.raises(ValueError, match="damping"):
        kfac_damped_inverse_matvec(factors, params64, damping=0.0)
    with pytest.raises(ValueError, match="enc/Dense_0"):
        kfac_matvec(factors, {"Conv_0": params64["Conv_0"]})
    with pytest.raises(TypeError, match="KFACFactors"):
        kfac_quadratic_form({"Conv_0": 1}, params64)
    with pytest.raises(ValueError, match=r"factors\['Conv_0'\] must have A"):
        kfac_quadratic_form({"Conv_0": (1, 2)}, params64)
    with pytest.raises(TypeError, match="dict"):
        kfac_matvec([factors], params64)
