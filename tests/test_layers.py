"""Tests for cljax.layers: finding layers in params, reading / writing them, packing [W; b]."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.layers import (LayerShape, check_factors, get_layer, pack, param_layers, set_layer,
                          unpack)
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
