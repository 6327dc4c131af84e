"""Tests for cljax.curvature.structured (Diagonal and KroneckerFactored curvature blocks).

The oracles are dense matrices built here independently of the module: diag(Ω) on the flattened
parameters, and for K-FAC the block-diagonal matrix ⊕_l kron(A_l, G_l) ⊕ other·I on a vector that
stacks, per layer, the row-major vec of W̄ = [kernel reshaped to [rows, out]; bias] (written out
below, not with cljax.layers) followed by every other leaf.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close, random_kfac_factors, random_spd

from cljax.curvature import (
    Diagonal,
    KroneckerFactored,
    combine,
    damped_inverse,
    diagonal,
    identity,
    kronecker_factored,
    matvec,
    matvec_sum,
    nearest_kronecker_sum,
    quadratic_form,
    zeros,
)
from cljax.types import KFACFactors

LAYERS = {"Dense_0": (4, 2), "Conv_0": (4, 3), "Block_0/Dense_1": (3, 2)}   # (rows, out)


def _params(seed, dtype=jnp.float64):
    ks = jax.random.split(jax.random.PRNGKey(seed), 6)
    n = lambda k, s: jax.random.normal(k, s, dtype)
    return {"Dense_0": {"kernel": n(ks[0], (3, 2)), "bias": n(ks[1], (2,))},
            "Conv_0": {"kernel": n(ks[2], (2, 2, 1, 3))},                    # no bias
            "LayerNorm_0": {"scale": n(ks[3], (2,))},                         # outside the layers
            "Block_0": {"Dense_1": {"kernel": n(ks[4], (2, 2)), "bias": n(ks[5], (2,))}}}


_spd = random_spd


def _factors(seed, dtype=jnp.float64, names=tuple(LAYERS)):
    return random_kfac_factors(seed, LAYERS, dtype, names)


def _node(tree, name):
    for k in name.split("/"):
        tree = tree[k]
    return tree


def _wbar(node):
    k = np.asarray(node["kernel"])
    w = k.reshape(-1, k.shape[-1])
    return np.concatenate([w, np.asarray(node["bias"])[None]]) if "bias" in node else w


def _to_vec(tree):
    """Layers' row-major vec(W̄) in LAYERS order, then the one outside leaf."""
    parts = [_wbar(_node(tree, name)).reshape(-1) for name in LAYERS]
    return np.concatenate(parts + [np.asarray(tree["LayerNorm_0"]["scale"])])


def _from_vec(v, like):
    out = jax.tree.map(np.asarray, like)
    i = 0
    for name in LAYERS:
        node = _node(out, name)
        rows, m = LAYERS[name]
        w = v[i:i + rows * m].reshape(rows, m)
        i += rows * m
        k = node["kernel"]
        nk = rows - ("bias" in node)
        node["kernel"] = w[:nk].reshape(k.shape)
        if "bias" in node:
            node["bias"] = w[nk]
    out["LayerNorm_0"]["scale"] = v[i:]
    return out


def _dense_kfac(factors, other):
    blocks = [np.kron(np.asarray(factors[n][0]), np.asarray(factors[n][1])) for n in LAYERS]
    size = sum(b.shape[0] for b in blocks) + 2
    c = np.zeros((size, size))
    i = 0
    for b in blocks:
        c[i:i + b.shape[0], i:i + b.shape[0]] = b
        i += b.shape[0]
    c[i:, i:] = float(other) * np.eye(2)
    return c


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def _positive(seed, params):
    return jax.tree.map(lambda p: jnp.abs(p) + 0.1, _params(seed, jax.tree.leaves(params)[0].dtype))


# ---------------------------------------------------------------- matvec, quadratic_form


def test_diagonal_matvec_and_quadratic_form_match_the_dense_matrix(x64):
    params, v = _params(0), _params(1)
    omega = _positive(2, params)
    c = np.diag(_flat(omega))
    curv = diagonal(omega)
    np.testing.assert_allclose(_flat(matvec(curv, v)), c @ _flat(v), rtol=1e-14)
    np.testing.assert_allclose(quadratic_form(curv, v), _flat(v) @ c @ _flat(v), rtol=1e-13)
    assert jax.tree.structure(matvec(curv, v)) == jax.tree.structure(v)


@pytest.mark.parametrize("other", [0.0, 0.7])
def test_kfac_matvec_and_quadratic_form_match_the_dense_kron_matrix(x64, other):
    params, v = _params(0), _params(1)
    fac = _factors(1)
    curv = kronecker_factored(params, fac, other=other)
    c = _dense_kfac(fac, other)
    got = matvec(curv, v)
    assert jax.tree.structure(got) == jax.tree.structure(v)
    assert_trees_close(got, _from_vec(c @ _to_vec(v), v), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(quadratic_form(curv, v), _to_vec(v) @ c @ _to_vec(v), rtol=1e-12)
    # the gradient of ½ vᵀCv is Cv (C symmetric)
    assert_trees_close(jax.grad(lambda x: 0.5 * quadratic_form(curv, x))(v), got, rtol=1e-12,
                       atol=1e-14)


def test_omitted_layers_are_zero_and_identity_is_identity(x64):
    params, v = _params(0), _params(1)
    curv = kronecker_factored(params, {"Conv_0": _factors(2)["Conv_0"]})
    for name in ("Dense_0", "Block_0/Dense_1"):
        assert float(jnp.abs(curv.factors[name].A).max()) == 0.0
        assert curv.factors[name].A.shape == (LAYERS[name][0],) * 2
    out = matvec(curv, v)
    assert np.all(np.asarray(out["Dense_0"]["kernel"]) == 0)
    assert np.all(np.asarray(out["LayerNorm_0"]["scale"]) == 0)
    for kind in ("diagonal", "kfac"):
        assert_trees_close(matvec(identity(params, kind), v), v, rtol=0)
        for leaf in jax.tree.leaves(matvec(zeros(params, kind), v)):
            assert np.all(np.asarray(leaf) == 0)
        np.testing.assert_allclose(quadratic_form(identity(params, kind), v),
                                   _flat(v) @ _flat(v), rtol=1e-13)
    # layers= restricts the tracked layers; the rest is `other`
    only = zeros(params, "kfac", layers=["Dense_0"])
    assert list(only.factors) == ["Dense_0"] and float(only.other) == 0.0


# ---------------------------------------------------------------- combine


def test_diagonal_combine_modes_are_the_dense_sums(x64):
    params = _params(0)
    o1, o2 = _positive(1, params), _positive(2, params)
    a, b = diagonal(o1), diagonal(o2)
    d = lambda x: np.diag(_flat(x.values))
    np.testing.assert_allclose(d(combine(a, b, mode="online", decay=0.3)),
                               0.3 * d(a) + d(b), rtol=1e-14)
    np.testing.assert_allclose(d(combine(a, b, mode="sum")), d(a) + d(b), rtol=1e-14)
    np.testing.assert_allclose(d(combine(a, b, mode="replace")), d(b), rtol=0)
    # sum is online with γ = 1, bit for bit
    for x, y in zip(jax.tree.leaves(combine(a, b, mode="sum")),
                    jax.tree.leaves(combine(a, b, mode="online", decay=1.0))):
        np.testing.assert_array_equal(x, y)


def _rank1_error(a1, g1, a2, g2):
    """Van Loan & Pitsianis: ‖S − X⊗Y‖_F minimum = √(Σ_{k≥2} σ_k²) of the rearranged S."""
    r = (np.outer(np.ravel(a1), np.ravel(g1)) + np.outer(np.ravel(a2), np.ravel(g2)))
    sv = np.linalg.svd(r, compute_uv=False)
    return np.sqrt(np.sum(sv[1:] ** 2))


def test_kfac_combine_modes_against_dense_sums_and_nearest_kronecker(x64):
    params = _params(0)
    f1, f2 = _factors(1), _factors(2)
    a = kronecker_factored(params, f1, other=0.5)
    b = kronecker_factored(params, f2, other=0.25)
    gamma = 0.6
    summed = combine(a, b, mode="sum")
    for n in LAYERS:
        np.testing.assert_allclose(summed.factors[n].A, f1[n].A + f2[n].A, rtol=1e-14)
        np.testing.assert_allclose(summed.factors[n].G, f1[n].G + f2[n].G, rtol=1e-14)
    np.testing.assert_allclose(summed.other, 0.75, rtol=1e-14)
    replaced = combine(a, b, mode="replace")
    assert_trees_close(replaced, b, rtol=0)
    online = combine(a, b, mode="online", decay=gamma)
    np.testing.assert_allclose(online.other, gamma * 0.5 + 0.25, rtol=1e-14)
    rng = np.random.default_rng(0)
    for n in LAYERS:
        exact = gamma * np.kron(f1[n].A, f1[n].G) + np.kron(f2[n].A, f2[n].G)
        got = np.kron(online.factors[n].A, online.factors[n].G)
        err = np.linalg.norm(got - exact)
        # the Frobenius-optimal error of the best Kronecker product (SVD oracle) ...
        np.testing.assert_allclose(err, _rank1_error(gamma * f1[n].A, f1[n].G, f2[n].A,
                                                     f2[n].G), rtol=1e-8)
        # ... beats random Kronecker candidates and the plain factor sum
        rows, m = LAYERS[n]
        for _ in range(20):
            p, q = rng.normal(size=(rows, rows)), rng.normal(size=(m, m))
            assert err <= np.linalg.norm(np.kron(p, q) - exact) + 1e-12
        plain = np.kron(gamma * f1[n].A + f2[n].A, f1[n].G + f2[n].G)
        assert err < np.linalg.norm(plain - exact)
        x, y = nearest_kronecker_sum(gamma * f1[n].A, f1[n].G, f2[n].A, f2[n].G)
        np.testing.assert_allclose(got, np.kron(x, y), rtol=1e-12)


def test_kfac_online_is_exact_for_proportional_factors_and_missing_curvature(x64):
    params = _params(0)
    f1 = _factors(1)
    prop = {n: KFACFactors(2.0 * f.A, 3.0 * f.G) for n, f in f1.items()}
    out = combine(kronecker_factored(params, f1), kronecker_factored(params, prop),
                  mode="online", decay=0.5)
    for n, f in f1.items():
        np.testing.assert_allclose(np.kron(out.factors[n].A, out.factors[n].G),
                                   6.5 * np.kron(f.A, f.G), rtol=1e-10)
    # a task without curvature for a layer leaves (γA, G): A exactly, G as G·k/k (rounding)
    part = combine(kronecker_factored(params, f1), kronecker_factored(params, {}),
                   mode="online", decay=0.5)
    for n, f in f1.items():
        np.testing.assert_array_equal(part.factors[n].A, 0.5 * f.A)
        np.testing.assert_allclose(part.factors[n].G, f.G, rtol=1e-14)
    # from zero: the new task's Kronecker product (to rounding: the 2×2 problem rescales G)
    first = combine(zeros(params, "kfac"), kronecker_factored(params, f1), mode="online",
                    decay=0.9)
    for n, f in f1.items():
        np.testing.assert_allclose(np.kron(first.factors[n].A, first.factors[n].G),
                                   np.kron(f.A, f.G), rtol=1e-12)


# ---------------------------------------------------------------- damped_inverse


def test_diagonal_damped_inverse_times_damped_matrix_is_identity(x64):
    params = _params(0)
    omega = _positive(1, params)
    s, d = 3.0, 0.2
    inv = damped_inverse(diagonal(omega), strength=s, damping=d)
    assert isinstance(inv, Diagonal)
    c = np.diag(_flat(omega))
    np.testing.assert_allclose(np.diag(_flat(inv.values)) @ (s * c + d * np.eye(len(c))),
                               np.eye(len(c)), atol=1e-13)


def test_kfac_damped_inverse_is_the_factored_tikhonov_form(x64):
    """(√s A + π√d I)⁻¹ ⊗ (√s G + √d/π I)⁻¹ (Martens & Grosse 2015, §6.3), other = 1/(s·o + d)."""
    params, v = _params(0), _params(1)
    fac = _factors(3)
    s, d, o = 2.0, 0.3, 0.4
    inv = damped_inverse(kronecker_factored(params, fac, other=o), strength=s, damping=d)
    assert isinstance(inv, KroneckerFactored)
    np.testing.assert_allclose(inv.other, 1 / (s * o + d), rtol=1e-14)
    blocks = {}
    for n in LAYERS:
        a, g = np.asarray(fac[n].A), np.asarray(fac[n].G)
        pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
        a_d = np.sqrt(s) * a + pi * np.sqrt(d) * np.eye(len(a))
        g_d = np.sqrt(s) * g + np.sqrt(d) / pi * np.eye(len(g))
        np.testing.assert_allclose(inv.factors[n].A, np.linalg.inv(a_d), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(inv.factors[n].G, np.linalg.inv(g_d), rtol=1e-10, atol=1e-12)
        # the inverse times the factored damped matrix is the identity
        np.testing.assert_allclose(np.kron(inv.factors[n].A, inv.factors[n].G) @ np.kron(a_d, g_d),
                                   np.eye(len(a) * len(g)), atol=1e-10)
        blocks[n] = KFACFactors(a_d, g_d)
    # matvec of the inverse solves the dense factored system
    lam = _dense_kfac(blocks, s * o + d)
    assert_trees_close(matvec(inv, v), _from_vec(np.linalg.solve(lam, _to_vec(v)), v),
                       rtol=1e-9, atol=1e-12)
    # a task's K-FAC curvature (other = 0) gets 1/d outside the layers
    np.testing.assert_allclose(damped_inverse(kronecker_factored(params, fac), strength=s,
                                              damping=d).other, 1 / d, rtol=1e-15)


# ---------------------------------------------------------------- jit, vmap


def test_jit_equals_eager_and_vmap_over_strength():
    params, v = _params(0, jnp.float32), _params(1, jnp.float32)
    fac = _factors(1, jnp.float32)
    omega = _positive(2, params)
    for curv in (diagonal(omega), kronecker_factored(params, fac)):
        new = combine(curv, curv, mode="replace")
        fns = {"matvec": lambda c, x: matvec(c, x),
               "quadratic_form": lambda c, x: quadratic_form(c, x),
               "combine": lambda c, x: combine(c, new, mode="online", decay=0.7),
               "damped_inverse": lambda c, x: damped_inverse(c, strength=2.0, damping=0.5)}
        for name, fn in fns.items():
            assert_trees_close(jax.jit(fn)(curv, v), fn(curv, v), rtol=2e-6, atol=1e-7,
                               err_msg=name)
        lams = jnp.array([0.0, 1.0, 10.0])
        batched = jax.jit(jax.vmap(lambda s: damped_inverse(curv, strength=s, damping=0.5)))(lams)
        for k, lam in enumerate(lams):
            assert_trees_close(jax.tree.map(lambda x: x[k], batched),
                               damped_inverse(curv, strength=float(lam), damping=0.5),
                               rtol=2e-5, atol=1e-6)
        decays = jnp.array([0.25, 1.0])
        both = jax.vmap(lambda g: combine(curv, new, mode="online", decay=g))(decays)
        for k, g in enumerate(decays):
            assert_trees_close(jax.tree.map(lambda x: x[k], both),
                               combine(curv, new, mode="online", decay=float(g)), rtol=1e-6)


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_naming_the_argument():
    params = _params(0, jnp.float32)
    fac = _factors(1, jnp.float32)
    diag, kfac = zeros(params), kronecker_factored(params, fac)
    with pytest.raises(ValueError, match="mode"):
        combine(diag, diag, mode="multi_task")
    with pytest.raises(ValueError, match="mode"):
        combine(kfac, kfac, mode="exact")
    with pytest.raises(ValueError, match="decay"):
        combine(diag, diag, mode="sum", decay=0.5)
    with pytest.raises(ValueError, match="decay"):
        combine(kfac, kfac, mode="online", decay=1.5)
    with pytest.raises(TypeError, match="new must be a Diagonal"):
        combine(diag, kfac, mode="sum")
    with pytest.raises(TypeError, match="old must be a Diagonal or a KroneckerFactored"):
        combine(params, diag, mode="sum")
    with pytest.raises(ValueError, match="new.values"):
        combine(diag, Diagonal({"Dense_0": params["Dense_0"]}), mode="sum")
    with pytest.raises(ValueError, match="new.factors"):
        combine(kfac, kronecker_factored(params, {"Dense_0": fac["Dense_0"]}, layers=["Dense_0"]),
                mode="sum")
    bad_shape = KroneckerFactored({**kfac.factors, "Dense_0": KFACFactors(jnp.eye(3), jnp.eye(2))},
                                  kfac.other)
    with pytest.raises(ValueError, match=r"new.factors\['Dense_0'\]"):
        combine(kfac, bad_shape, mode="sum")
    with pytest.raises(ValueError, match=r"tree"):
        matvec(diag, {"Dense_0": params["Dense_0"]})
    with pytest.raises(ValueError, match=r"tree\['Conv_0'\]"):
        matvec(kfac, {**params, "Conv_0": {"kernel": jnp.ones((3, 3))}})
    with pytest.raises(ValueError, match="tree has no layer"):
        quadratic_form(kfac, {"LayerNorm_0": params["LayerNorm_0"]})
    with pytest.raises(TypeError, match="curvature"):
        matvec(params, params)
    with pytest.raises(ValueError, match="curvature.other"):
        matvec(KroneckerFactored(kfac.factors, jnp.zeros(2)), params)
    for damping in (0.0, -0.1):
        with pytest.raises(ValueError, match="damping must be > 0"):
            damped_inverse(diag, strength=1.0, damping=damping)
        with pytest.raises(ValueError, match="damping must be > 0"):
            damped_inverse(kfac, strength=1.0, damping=damping)
    with pytest.raises(ValueError, match="strength must be >= 0"):
        damped_inverse(kfac, strength=-1.0, damping=1.0)
    with pytest.raises(ValueError, match="strength must be a scalar"):
        damped_inverse(diag, strength=jnp.ones(3), damping=1.0)
    with pytest.raises(ValueError, match="Dense_9"):
        kronecker_factored(params, {"Dense_9": fac["Dense_0"]})
    with pytest.raises(ValueError, match=r"factors\['Dense_0'\]"):
        kronecker_factored(params, {"Dense_0": KFACFactors(jnp.eye(2), jnp.eye(2))})
    with pytest.raises(TypeError, match="factors"):
        kronecker_factored(params, [fac["Dense_0"]])
    with pytest.raises(FloatingPointError, match=r"factors\['Conv_0'\]"):
        kronecker_factored(params, {"Conv_0": KFACFactors(fac["Conv_0"].A * np.nan,
                                                          fac["Conv_0"].G)})
    with pytest.raises(ValueError, match="other"):
        kronecker_factored(params, fac, other=-1.0)
    with pytest.raises(ValueError, match="layers"):
        kronecker_factored(params, fac, layers=["Dense_9"])
    with pytest.raises(ValueError, match=r"values\['LayerNorm_0'\]\['scale'\] has negative"):
        diagonal({**jax.tree.map(jnp.abs, params), "LayerNorm_0": {"scale": -jnp.ones(2)}})
    with pytest.raises(FloatingPointError, match="values"):
        diagonal(jax.tree.map(lambda x: x * np.inf, params))
    with pytest.raises(ValueError, match="kind"):
        zeros(params, "full")
    with pytest.raises(ValueError, match="layers"):
        identity(params, "diagonal", layers=["Dense_0"])


# ---------------------------------------------------------------- scale, matvec_sum


def test_matvec_scale_and_stacked_matvec_sum_match_dense_sums(x64):
    params, v = _params(0), _params(1)
    facs = [_factors(s) for s in (1, 2, 3)]
    others = [0.0, 0.3, 0.6]
    centers = [_params(10 + s) for s in range(3)]
    for t in range(3):
        curv = kronecker_factored(params, facs[t], other=others[t])
        # scale: s·C v, the same as scaling the product afterwards (bit for bit)
        scaled = matvec(curv, v, scale=2.5)
        for a, b in zip(jax.tree.leaves(scaled), jax.tree.leaves(matvec(curv, v))):
            np.testing.assert_array_equal(a, 2.5 * b)
    stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
    curvs = stack([kronecker_factored(params, f, other=o) for f, o in zip(facs, others)])
    diags = stack([diagonal(_positive(20 + s, params)) for s in range(3)])
    cs = stack(centers)
    run = jax.jit(lambda c, n: matvec_sum(c, v, cs, count=n, scale=0.5))
    for count in (0, 2, 3, 5):
        want = sum((_dense_kfac(facs[s], others[s]) @ (_to_vec(v) - _to_vec(centers[s]))
                    for s in range(min(count, 3))), np.zeros(len(_to_vec(v))))
        assert_trees_close(run(curvs, count), _from_vec(0.5 * want, v), rtol=1e-12, atol=1e-14)
        want_d = sum((_flat(jax.tree.map(lambda x: x[s], diags.values))
                      * (_flat(v) - _flat(centers[s])) for s in range(min(count, 3))),
                     np.zeros(len(_flat(v))))
        np.testing.assert_allclose(_flat(run(diags, count)), 0.5 * want_d, rtol=1e-12,
                                   atol=1e-14)
    assert run._cache_size() == 2    # one trace per curvature type: count is traced
    with pytest.raises(ValueError, match="leading slot axis"):
        matvec_sum(curvs, v, jax.tree.map(lambda x: x[:2], cs), count=1)
    with pytest.raises(ValueError, match="tree"):
        matvec_sum(curvs, {"Dense_0": v["Dense_0"]}, cs, count=1)
