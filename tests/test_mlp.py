"""cljax.nn.mlp: the MLP's initialisation knob (A-GEM's truncated normal 0.1 / bias 0.1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.methods.pnn import ProgressiveMLP, progressive_model
from cljax.nn import MLP, as_model

X = jnp.zeros((2, 784))


def _params(module, **kw):
    return module.init(jax.random.key(0), X, jnp.zeros((2,), jnp.int32), **kw)["params"]


def test_default_initialisation_is_unchanged_by_the_knob():
    a = _params(MLP((256, 256), 10))
    b = _params(MLP((256, 256), 10, kernel_stddev=None, bias_init=0.0))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # flax's LeCun normal: std ≈ 1/sqrt(fan_in)
    assert abs(float(jnp.std(a["Dense_0"]["kernel"])) - 784 ** -0.5) < 2e-3


def test_truncated_normal_and_constant_bias_as_in_agems_code():
    p = _params(MLP((256, 256), 10, kernel_stddev=0.1, bias_init=0.1))
    for name in ("Dense_0", "Dense_1", "Dense_2"):
        k = np.asarray(p[name]["kernel"])
        assert np.abs(k).max() <= 0.2 + 1e-6                 # truncated at 2σ of the normal
        # std of a N(0, σ²) truncated at ±2σ: 0.8796 σ
        assert abs(k.std() - 0.08796) < 0.004, (name, k.std())
        np.testing.assert_array_equal(p[name]["bias"], np.full(k.shape[-1], 0.1, np.float32))


def test_progressive_columns_take_the_base_initialisation():
    base = as_model(MLP((16, 16), 3, kernel_stddev=0.1, bias_init=0.1))
    net = progressive_model(base, 4).module
    assert (net.kernel_stddev, net.bias_init) == (0.1, 0.1)
    p = net.init(jax.random.key(1), X, jnp.zeros((2,), jnp.int32))["params"]
    assert np.abs(np.asarray(p["W_0"])).max() <= 0.2 + 1e-6
    assert abs(float(np.asarray(p["W_0"]).std()) - 0.08796) < 0.005
    np.testing.assert_array_equal(p["b_1"], np.full((4, 16), 0.1, np.float32))
    assert np.abs(np.asarray(p["U_1"])).max() <= 0.2 + 1e-6


@pytest.mark.parametrize("kw", [{"kernel_init": "pytorch"}, {"bias_init": "pytorch"}])
def test_progressive_columns_refuse_an_initialisation_they_would_not_carry(kw):
    with pytest.raises(ValueError, match="would not be carried"):
        progressive_model(as_model(MLP((16, 16), 3, **kw)), 4)
    with pytest.raises(ValueError, match="ProgressiveMLP bias_init must be a float"):
        ProgressiveMLP((4,), 2, 3, bias_init="pytorch")


@pytest.mark.parametrize("kw,match", [
    ({"kernel_stddev": 0.0}, "MLP kernel_stddev must be None"),
    ({"kernel_stddev": float("nan")}, "MLP kernel_stddev must be None"),
    ({"kernel_stddev": True}, "MLP kernel_stddev must be None"),
    ({"bias_init": float("inf")}, "MLP bias_init must be a finite float"),
    ({"bias_init": "0.1"}, "MLP bias_init must be a finite float"),
])
def test_bad_initialisation_is_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        MLP((4,), 2, **kw)
    with pytest.raises(ValueError, match=match.replace("MLP", "ProgressiveMLP")):
        ProgressiveMLP((4,), 2, 3, **kw)
