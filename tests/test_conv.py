"""cljax.nn.Conv against flax's nn.Conv (float64 oracles), and the loop-safety guard on the HLO."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

from cljax import importance as imp
from cljax.nn import CNN, Conv, as_model, canonical_conv
from cljax.nn import conv as conv_mod

CASES = [  # kernel, stride, padding, cin, cout, bias, size
    ((1, 1), 2, "VALID", 5, 2, False, 6),
    ((3, 3), 1, "SAME", 3, 8, True, 7),
    ((3, 3), 2, "SAME", 4, 5, False, 8),
    ((4, 4), 1, "SAME", 1, 64, True, 6),
    ((4, 4), 2, "VALID", 2, 4, True, 10),
    ((3, 3), 2, ((1, 0), (2, 1)), 64, 4, True, 5),   # explicit, asymmetric
]


def _pair(case):
    ks, s, pad, cin, cout, bias, size = case
    kw = dict(strides=s, padding=pad, use_bias=bias, param_dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(size * 7 + cin), (1, size, size, cin), jnp.float64)
    return nn.Conv(cout, ks, **kw), Conv(cout, ks, **kw), x


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}-s{c[1]}-{c[2]}-"
                                                     f"{c[3]}to{c[4]}-b{int(c[5])}")
def test_equals_flax_conv_outputs_and_gradients(x64, case):
    ref, fast, x = _pair(case)
    p_ref = ref.init(jax.random.key(1), x)
    p_fast = fast.init(jax.random.key(1), x)
    assert_trees_close(p_fast, p_ref, rtol=0, atol=0)     # same names, shapes, initialisation
    np.testing.assert_allclose(fast.apply(p_ref, x), ref.apply(p_ref, x), rtol=0, atol=1e-10)

    def loss(m, p, x):
        return jnp.sum(jnp.sin(m.apply(p, x)))

    v = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)), p_ref)

    @jax.jit
    def derivatives(p, x, v):
        out = []
        for m in (ref, fast):
            g = jax.grad(lambda p, x: loss(m, p, x), (0, 1))(p, x)
            # second order: Hessian-vector product by jvp(grad), through the custom transposes
            hv = jax.jvp(jax.grad(lambda q: loss(m, q, x)), (p,), (v,))[1]
            out.append((g, hv))
        return out

    want, got = derivatives(p_ref, x, v)
    assert_trees_close(got, want, rtol=0, atol=1e-10)


def test_vmap_over_params_and_inputs_and_linear_transpose(x64):
    ref, fast, x = _pair(((3, 3), 2, "SAME", 4, 5, False, 8))
    p = ref.init(jax.random.key(2), x)
    ps = jax.tree.map(lambda a: jnp.stack([a, -2 * a, a + 1]), p)
    xs = jnp.stack([x, x + 1, 2 * x])

    def grads(m):
        return jax.vmap(jax.grad(lambda p, x: jnp.sum(m.apply(p, x) ** 3), (0, 1)))(ps, xs)

    assert_trees_close(grads(fast), grads(ref), rtol=1e-12, atol=1e-10)
    # only the inputs batched (per-example), only the params batched
    f = lambda m: jax.vmap(lambda xi: m.apply(p, xi[None])[0])(xs[:, 0])
    np.testing.assert_allclose(f(fast), f(ref), atol=1e-10)
    g = lambda m: jax.vmap(lambda pi: m.apply(pi, x))(ps)
    np.testing.assert_allclose(g(fast), g(ref), atol=1e-10)
    # GGN-style: linearize then transpose
    lin = jax.linearize(lambda q: fast.apply(q, x), p)[1]
    u = jnp.ones(fast.apply(p, x).shape)
    lin_ref = jax.linearize(lambda q: ref.apply(q, x), p)[1]
    assert_trees_close(jax.linear_transpose(lin, p)(u), jax.linear_transpose(lin_ref, p)(u),
                       rtol=0, atol=1e-10)


def test_im2col_matmul_is_the_convolution(x64):
    x = jax.random.normal(jax.random.key(3), (2, 9, 8, 3), jnp.float64)
    w = jax.random.normal(jax.random.key(4), (3, 2, 3, 5), jnp.float64)
    strides, pads, dil = (2, 3), ((0, 2), (1, 0)), (2, 1)

    @jax.jit
    def both(x, w):
        p = conv_mod.im2col(x, (3, 2), strides=strides, padding=pads, kernel_dilation=dil)
        return p @ w.reshape(-1, 5), jax.lax.conv_general_dilated(
            x, w, strides, pads, rhs_dilation=dil, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    got, want = both(x, w)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_canonical_conv_validation():
    x = jnp.zeros((1, 5, 5, 3))
    with pytest.raises(ValueError, match="kernel in-features"):
        canonical_conv(x, jnp.zeros((3, 3, 2, 4)))
    with pytest.raises(ValueError, match="kernel must be"):
        canonical_conv(x, jnp.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="strides"):
        canonical_conv(x, jnp.zeros((3, 3, 3, 4)), strides=(0, 1))
    with pytest.raises(ValueError, match="padding"):
        canonical_conv(x, jnp.zeros((3, 3, 3, 4)), padding="CIRCULAR")
    with pytest.raises(ValueError, match="x must be"):
        canonical_conv(jnp.zeros((5, 3)), jnp.zeros((3, 3)))


def test_backend_choice_falls_back_to_xla(monkeypatch):
    m = Conv(4, (3, 3))
    x = jnp.ones((2, 6, 6, 3))
    p = m.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(lambda p: m.apply(p, x))(p))
    assert "cljax_canonical_conv" in jaxpr
    monkeypatch.setattr(conv_mod, "use_canonical_conv", lambda: False)
    jaxpr = str(jax.make_jaxpr(lambda p: m.apply(p, x))(p))
    assert "cljax_canonical_conv" not in jaxpr and "conv_general_dilated" in jaxpr
    # grouped convolutions always take lax's path
    g = Conv(4, (3, 3), feature_group_count=1)
    assert g.apply(p, x).shape == (2, 6, 6, 4)


def _scanned_vmapped_step_hlo(module):
    """HLO of what run_stream compiles: jit(vmap(scan over steps of grad + Adam))."""
    model = as_model(module)
    x = jnp.ones((4, 8, 8, 3))
    y = jnp.zeros((4,), jnp.int32)
    opt = optax.adam(1e-3)

    def fit(key):
        params = model.init(key, {"x": x})

        def step(carry, _):
            p, s = carry
            g = jax.grad(lambda q: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
                model.logits_fn(q, {"x": x}), y)))(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (params, opt.init(params)), None, length=2)[0][0]

    keys = jax.random.split(jax.random.key(0), 2)
    return jax.jit(jax.vmap(fit)).lower(keys).compile().as_text()


def test_no_slow_convolution_inside_the_scanned_vmapped_step():
    """Guard against the slow path coming back: every convolution of the compiled, scanned and
    vmapped CNN training step must be canonical (XLA's CPU library kernel); flax's nn.Conv is
    the positive control."""
    if not conv_mod.use_canonical_conv():
        pytest.skip("the canonical path is CPU-only")
    hlo = _scanned_vmapped_step_hlo(CNN(10, channels=(2,), hidden=4))
    assert "convolution(" in hlo
    assert conv_mod.noncanonical_convolutions(hlo) == []

    class FlaxCNN(nn.Module):
        @nn.compact
        def __call__(self, x, task=None, *, train=False):
            x = nn.relu(nn.Conv(2, (3, 3))(x))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    assert conv_mod.noncanonical_convolutions(_scanned_vmapped_step_hlo(FlaxCNN())) != []


def test_estimators_recognise_conv_and_match_vmap_oracle(x64):
    model = as_model(CNN(3, num_heads=2, channels=(2,), hidden=4))
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(4, 4, 4, 3))), "y": jnp.asarray(rng.integers(0, 3, 4)),
             "task": jnp.asarray(rng.integers(0, 2, 4))}
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(0), batch))
    from cljax.importance import estimation
    plan = estimation.discover(model.logits_fn, params,
                            jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), batch),
                            "auto")
    assert [s.kind for s in plan.layers] == ["conv", "conv", "dense", "dense"]
    assert plan.fallback_indices == ()
    # exact Fisher: the C classes batched through the conv layers (the other estimators on this
    # CNN are checked against the oracle in test_fisher.py / test_mas.py)
    fast = imp.exact_fisher_diagonal(model.logits_fn, params, batch, chunk_size=3)
    slow = imp.exact_fisher_diagonal(model.logits_fn, params, batch, chunk_size=3,
                                     implementation="vmap")
    assert_trees_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_no_slow_convolution_in_estimator_hvp_and_evaluation_loops():
    """The other loops a conv runs in: estimator chunks, HVP / GGN chunks, evaluation chunks."""
    if not conv_mod.use_canonical_conv():
        pytest.skip("the canonical path is CPU-only")
    from cljax import curvature as cv
    from cljax.importance import estimation

    model = as_model(CNN(3, channels=(2,), hidden=4))
    batch = {"x": jnp.ones((8, 6, 6, 3)), "y": jnp.zeros((8,), jnp.int32)}
    params = model.init(jax.random.key(0), batch)
    lf = model.logits_fn
    programs = {
        "exact_fisher": estimation.estimate_jit.lower(lf, params, batch, None, kind="exact",
                                                    num_samples=1, chunk_size=4,
                                                    implementation="auto"),
        "hvp": jax.jit(lambda p, v: cv.task_hvp(lf, p, batch, v, chunk_size=4)).lower(params,
                                                                                    params),
        "ggn": jax.jit(lambda p, v: cv.task_ggn_vp(lf, p, batch, v, chunk_size=4)).lower(params,
                                                                                       params),
        "evaluate": jax.jit(lambda p: jax.lax.map(
            lambda x: jnp.argmax(lf(p, {"x": x}), -1),
            batch["x"].reshape(2, 4, 6, 6, 3))).lower(params),
    }
    for name, lowered in programs.items():
        hlo = lowered.compile().as_text()
        assert "convolution(" in hlo, name
        assert conv_mod.noncanonical_convolutions(hlo) == [], name


def test_max_pool_equals_flax_max_pool(x64):
    x = jax.random.normal(jax.random.key(5), (2, 9, 8, 3), jnp.float64)
    for k in (1, 2, 3):
        np.testing.assert_array_equal(conv_mod.max_pool(x, k),
                                      nn.max_pool(x, (k, k), strides=(k, k)))
    # no ties: the same gradient
    g = [jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x) for f in
         (lambda x: conv_mod.max_pool(x, 2), lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))]
    np.testing.assert_allclose(g[0], g[1], atol=1e-12)
    with pytest.raises(ValueError, match="window"):
        conv_mod.max_pool(x, 0)
