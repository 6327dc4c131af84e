"""Tests for cljax.layers: finding layers in params, reading / writing them, packing [W; b]."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.layers import (
    LayerShape,
    check_factors,
    get_layer,
    leaf_paths,
    pack,
    param_layers,
    path_name,
    set_layer,
    unpack,
)
from cljax.types import KFACFactors


def _params():
    k = jax.random.split(jax.random.key(0), 4)
    return {"Dense_0": {"kernel": jax.random.normal(k[0], (3, 2)), "bias": jnp.arange(2.0)},
            "Conv_0": {"kernel": jax.random.normal(k[1], (2, 2, 1, 3))},
            "LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
            "Block_0": {"Dense_1": {"kernel": jax.random.normal(k[2], (2, 2)),
                                    "bias": jnp.zeros(2)}},
            "odd": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(3)}}   # bias not [out]: no layer


def test_param_layers_names_shapes_and_selection():
    found = param_layers(_params())
    assert found == {"Dense_0": LayerShape(4, 2, True), "Conv_0": LayerShape(4, 3, False),
                     "Block_0/Dense_1": LayerShape(3, 2, True)}
    assert list(param_layers(_params(), "Conv_0")) == ["Conv_0"]
    with pytest.raises(ValueError, match="not dense/conv layers"):
        param_layers(_params(), ["Dense_9"])


def test_pack_unpack_get_set_round_trip():
    p = _params()
    for name in param_layers(p):
        node = get_layer(p, name)
        w = pack(node)
        k = node["kernel"]
        np.testing.assert_array_equal(w[:k.size // k.shape[-1]], k.reshape(-1, k.shape[-1]))
        if "bias" in node:
            np.testing.assert_array_equal(w[-1], node["bias"])
        back = unpack(w, node)
        for key in node:
            np.testing.assert_array_equal(back[key], node[key])
        q = set_layer(p, name, {"kernel": jnp.zeros_like(k)})
        assert float(jnp.abs(get_layer(q, name)["kernel"]).sum()) == 0
        assert float(jnp.abs(get_layer(p, name)["kernel"]).sum()) > 0          # p untouched
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), get_layer(p, "Dense_0"))
    np.testing.assert_array_equal(pack(stacked, 1)[1], 2 * pack(get_layer(p, "Dense_0")))


def test_check_factors():
    shapes = {k: (v.rows, v.out) for k, v in param_layers(_params()).items()}
    check_factors({"Dense_0": KFACFactors(jnp.eye(4), jnp.eye(2))}, shapes)
    with pytest.raises(ValueError, match="not tracked"):
        check_factors({"Dense_7": KFACFactors(jnp.eye(4), jnp.eye(2))}, shapes)
    with pytest.raises(ValueError, match=r"A: \(4, 4\)"):
        check_factors({"Dense_0": KFACFactors(jnp.eye(3), jnp.eye(2))}, shapes)
    with pytest.raises(TypeError, match="dict"):
        check_factors([jnp.eye(4)], shapes)


# --------------------------------------------------------------------------------------------
# Capturing rows and output cotangents
# --------------------------------------------------------------------------------------------

import flax.linen as nn  # noqa: E402

from cljax.layers import (  # noqa: E402
    capture,
    capture_rows,
    describe_call,
    intercept_layer_calls,
    layer_rows,
    mean_rows,
    weight_gradients,
    with_weight_offsets,
)
from cljax.nn.conv import Conv as FastConv  # noqa: E402


class _Net(nn.Module):
    """Every case of the capture: a strided SAME conv with bias, a bias-free dilated VALID
    cljax.nn.Conv, an input-dilated conv with explicit padding, a grouped conv (not recognised),
    a Dense over middle axes, a Dense called twice, a bias-free head."""

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Conv(4, (3, 3), strides=2, padding="SAME", name="conv_a")(x))
        h = jnp.tanh(FastConv(4, (2, 2), padding="VALID", kernel_dilation=2, use_bias=False,
                              name="conv_b")(h))
        h = jnp.tanh(nn.Conv(4, (2, 2), input_dilation=2, padding=((1, 0), (0, 1)),
                             name="conv_c")(h))
        h = nn.Conv(4, (1, 1), feature_group_count=2, name="grouped")(h)
        t = jnp.tanh(nn.Dense(3, name="tokens")(h.reshape(h.shape[0], -1, h.shape[-1])))
        z = jnp.tanh(nn.Dense(5, name="pre")(t.reshape(t.shape[0], -1)))
        shared = nn.Dense(5, name="shared")
        z = jnp.tanh(shared(jnp.tanh(shared(z))))
        return nn.Dense(3, use_bias=False, name="head")(z)


def _net_problem():
    x = jax.random.normal(jax.random.key(1), (3, 7, 7, 2), jnp.float64)
    net = _Net()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(jax.random.key(2), x)["params"])
    ct = jax.random.normal(jax.random.key(3), (3, 3), jnp.float64)
    return net, params, x, ct


def test_captured_rows_and_cotangents_reproduce_jax_grad_per_layer(x64):
    net, params, x, ct = _net_problem()
    fn = lambda p, xx: net.apply({"params": p}, xx)
    cap = capture(fn, params, x)
    np.testing.assert_allclose(cap.output, fn(params, x), rtol=1e-12)
    assert sorted(cap.rows) == ["conv_a", "conv_b", "conv_c", "head", "pre", "shared", "tokens"]
    assert len(cap.rows["shared"]) == 2 and len(cap.rows["pre"]) == 1     # one entry per call
    grads = jax.grad(lambda p: jnp.sum(fn(p, x) * ct))(params)
    got = weight_gradients(cap.rows, cap.cotangents(ct))
    for name, w in got.items():
        want = pack(grads[name])
        assert w.shape == want.shape == (param_layers(params)[name].rows,
                                         param_layers(params)[name].out)
        np.testing.assert_allclose(w, want, rtol=1e-10, atol=1e-12, err_msg=name)
        back = unpack(w, params[name])
        assert set(back) == set(params[name])


def test_capture_vjp_gives_param_gradients_in_the_same_pass_and_keeps_aux(x64):
    net, params, x, ct = _net_problem()
    fn = lambda p, xx: (net.apply({"params": p}, xx), {"mean": jnp.mean(xx)})
    cap = capture(fn, params, x, argnums=(0,), has_aux=True)
    np.testing.assert_allclose(cap.aux["mean"], jnp.mean(x), rtol=1e-12)
    cots, (param_grads,) = cap.vjp(ct)
    want = jax.grad(lambda p: jnp.sum(fn(p, x)[0] * ct))(params)
    for a, b in zip(jax.tree.leaves(param_grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for name in cots:
        for a, b in zip(cots[name], cap.cotangents(ct)[name]):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError, match="argnums"):
        capture(fn, params, x, argnums=(2,), has_aux=True)
    with pytest.raises(ValueError, match="pair"):
        capture(lambda p, xx: net.apply({"params": p}, xx), params, x, has_aux=True)


def test_leaf_paths_name_every_leaf():
    p = _params()
    names = list(leaf_paths(p))
    assert names == [path_name(k) for k, _ in jax.tree_util.tree_leaves_with_path(p)]
    assert "Block_0/Dense_1/kernel" in names and "LayerNorm_0/scale" in names
    assert leaf_paths({"a": [jnp.ones(1), jnp.zeros(2)]}).keys() == {"a/0", "a/1"}


@pytest.mark.slow   # CI time; the captured rows' oracle against jax.grad runs by default
def test_capture_rows_equals_capture_and_runs_in_jit(x64):
    net, params, x, _ = _net_problem()
    fn = lambda p, xx: net.apply({"params": p}, xx)
    _, rows = capture_rows(fn, params, x)
    cap = capture(fn, params, x)
    assert sorted(rows) == sorted(cap.rows)
    for name in rows:
        for a, b in zip(rows[name], cap.rows[name]):
            np.testing.assert_array_equal(a, b)
    jitted = jax.jit(lambda p, xx: mean_rows(capture_rows(fn, p, xx)[1]))(params, x)
    for name, r in mean_rows(rows).items():
        np.testing.assert_allclose(jitted[name], r, rtol=1e-12)
    # a conv's rows are its im2col patches: rows @ W̄ is the conv's output (before tanh)
    conv_out = {}
    intercept_layer_calls(fn, params, x)  # does not raise without perturbations
    out, records = intercept_layer_calls(fn, params, x)
    for r in records:
        if r.call is not None and r.call.name not in conv_out:
            conv_out[r.call.name] = (layer_rows(r.inputs, r.call), r.output.shape)
    a, shape = conv_out["conv_c"]
    y = (a @ pack(params["conv_c"])).reshape(shape)
    want = nn.Conv(4, (2, 2), input_dilation=2, padding=((1, 0), (0, 1))).apply(
        {"params": params["conv_c"]}, records[2].inputs)
    np.testing.assert_allclose(y, want, rtol=1e-10)
    _, only = capture_rows(fn, params, x, layers=["head"])
    assert list(only) == ["head"] and only["head"][0].shape == (3, 1, 5)


def test_describe_call_refuses_what_is_not_a_plain_product(x64):
    x = jnp.ones((2, 4, 4, 4))

    def call_of(module):
        p = module.init(jax.random.key(0), x)
        _, recs = intercept_layer_calls(lambda: module.apply(p, x))
        return recs[0].call

    assert call_of(nn.Conv(4, (3, 3))).kind == "conv"
    assert call_of(nn.Conv(4, (3, 3), feature_group_count=2)) is None
    assert call_of(nn.Dense(3, dot_general=lambda *a, **k: jax.lax.dot_general(*a, **k))) is None
    assert call_of(nn.Dense(3)).shape == LayerShape(5, 3, True)
    assert describe_call(nn.Dense(3), x, x) is None      # unbound module: nothing to read


def test_capture_cotangents_ignore_unrequested_layers(x64):
    net, params, x, ct = _net_problem()
    fn = lambda p, xx: net.apply({"params": p}, xx)
    cap = capture(fn, params, x, layers=["shared", "conv_b"])
    assert sorted(cap.cotangents(ct)) == ["conv_b", "shared"]
    with pytest.raises(ValueError, match="same layers"):
        weight_gradients(cap.rows, {"shared": cap.cotangents(ct)["shared"]})


def test_weight_offsets_compute_with_the_offset_weights_and_their_gradients(x64):
    """f(rows) = rows @ ΔW̄ added to each call of a layer (conv, a Dense called twice, a bias-free
    head) is the model at W̄ + ΔW̄: outputs, captured cotangents and parameter gradients."""
    net, params, x, ct = _net_problem()
    fn = lambda p, xx: net.apply({"params": p}, xx)
    shapes = param_layers(params)
    keys = jax.random.split(jax.random.key(7), 3)
    deltas = {n: 0.3 * jax.random.normal(k, (shapes[n].rows, shapes[n].out), jnp.float64)
              for n, k in zip(("conv_a", "shared", "head"), keys)}
    offsets = {n: (lambda d: lambda rows: rows @ d)(d) for n, d in deltas.items()}
    moved = dict(params)
    for n, d in deltas.items():
        moved[n] = unpack(pack(params[n]) + d, params[n])
    np.testing.assert_allclose(with_weight_offsets(fn, params, x, weight_offsets=offsets),
                               fn(moved, x), rtol=1e-10)
    cap = capture(fn, params, x, argnums=(0,), weight_offsets=offsets)
    cots, (grads,) = cap.vjp(ct)
    want = jax.grad(lambda p: jnp.sum(fn(p, x) * ct))(moved)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    got = weight_gradients(cap.rows, cots)
    np.testing.assert_allclose(got["shared"], pack(want["shared"]), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=r"\['nowhere'\] that fn never calls"):
        with_weight_offsets(fn, params, x, weight_offsets={"nowhere": lambda r: r})
    with pytest.raises(TypeError, match="weight_offsets must be a dict"):
        with_weight_offsets(fn, params, x, weight_offsets={"head": 3.0})
