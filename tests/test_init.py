"""cljax.nn.init: kernel initialisers by name, against their variance formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.nn import CNN, MLP, AlexNet, ResNet18, kernel_initializer
from cljax.nn.init import bias_initializer

FAN_IN, FAN_OUT = 400, 600
VARIANCE = {"lecun_normal": 1 / FAN_IN, "lecun_uniform": 1 / FAN_IN,
            "xavier_normal": 2 / (FAN_IN + FAN_OUT), "xavier_uniform": 2 / (FAN_IN + FAN_OUT),
            "kaiming_normal": 2 / FAN_IN, "kaiming_uniform": 2 / FAN_IN,
            "pytorch": 1 / (3 * FAN_IN)}


@pytest.mark.parametrize("name", sorted(VARIANCE))
def test_each_initialiser_has_its_variance(name):
    w = np.asarray(kernel_initializer(name)(jax.random.key(0), (FAN_IN, FAN_OUT)), np.float64)
    assert abs(w.mean()) < 3 * np.sqrt(VARIANCE[name] / w.size)
    assert w.var() == pytest.approx(VARIANCE[name], rel=0.03)
    if name.endswith("uniform") or name == "pytorch":      # bounded by √(3·variance)
        assert np.abs(w).max() <= np.sqrt(3 * VARIANCE[name]) * (1 + 1e-6)


def test_orthogonal_and_aliases():
    w = np.asarray(kernel_initializer("orthogonal")(jax.random.key(1), (60, 90)))
    np.testing.assert_allclose(w @ w.T, np.eye(60), atol=1e-5)
    for alias, name in (("glorot_uniform", "xavier_uniform"), ("he_normal", "kaiming_normal")):
        np.testing.assert_array_equal(kernel_initializer(alias)(jax.random.key(2), (8, 8)),
                                      kernel_initializer(name)(jax.random.key(2), (8, 8)))
    with pytest.raises(ValueError, match="kernel_init must be one of"):
        kernel_initializer("zeros")


@pytest.mark.parametrize("module, shape", [
    (MLP((16,), 3), (2, 8)), (CNN(3, channels=(4,), hidden=8), (2, 8, 8, 1)),
    (AlexNet(3, channels=(4,), kernels=(3,), conv_dropout=(0.0,), hidden=(8,)), (2, 8, 8, 3)),
    (ResNet18(3, nf=2, num_blocks=(1, 1)), (2, 8, 8, 3))])
def test_every_model_takes_a_named_initialiser(module, shape):
    x = jnp.ones(shape)
    default = module.init(jax.random.key(0), x)["params"]
    same = module.clone(kernel_init="lecun_normal").init(jax.random.key(0), x)["params"]
    other = module.clone(kernel_init="orthogonal").init(jax.random.key(0), x)["params"]
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(same)):
        np.testing.assert_array_equal(a, b)                 # the default is flax's, unchanged
    kernels = [(a, b) for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(default),
                                              jax.tree.leaves(other))
               if "kernel" in jax.tree_util.keystr(path)]
    assert kernels and all(not np.array_equal(a, b) for a, b in kernels)
    with pytest.raises(ValueError, match="kernel_init must be one of"):
        module.clone(kernel_init="normal")


def test_pytorch_biases_are_uniform_on_each_layers_fan_in():
    """PyTorch's nn.Linear: b ~ U(−1/√fan_in, 1/√fan_in), the fan-in of each layer."""
    x = jnp.ones((2, FAN_IN))
    p = MLP((3000,), 2000, bias_init="pytorch").init(jax.random.key(0), x)["params"]
    for name, fan_in in (("Dense_0", FAN_IN), ("Dense_1", 3000)):
        b = np.asarray(p[name]["bias"], np.float64)
        bound = fan_in ** -0.5
        assert np.abs(b).max() <= bound * (1 + 1e-6)
        assert b.var() == pytest.approx(bound ** 2 / 3, rel=0.1)
    # the weights are still the kernel_init's; a constant stays a constant
    same = MLP((3000,), 2000).init(jax.random.key(0), x)["params"]
    np.testing.assert_array_equal(p["Dense_0"]["kernel"], same["Dense_0"]["kernel"])
    np.testing.assert_array_equal(bias_initializer(0.5, 7)(jax.random.key(1), (3,)),
                                  np.full(3, 0.5, np.float32))
    with pytest.raises(ValueError, match="bias_init must be a finite float or one of"):
        bias_initializer("torch", 7)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="fan_in must be a positive int"):
            bias_initializer("pytorch", bad)
    with pytest.raises(ValueError, match="MLP bias_init must be a finite float or one of"):
        MLP((4,), 2, bias_init="uniform")


def test_mlp_refuses_two_initialisers():
    with pytest.raises(ValueError, match="kernel_stddev .* and kernel_init='orthogonal'"):
        MLP((4,), 2, kernel_stddev=0.1, kernel_init="orthogonal")


def test_a_config_names_the_initialiser():
    from cljax.config import load_config
    from cljax.experiment import validate_config

    cfg = load_config("split_mnist")
    cfg["model"] = {**cfg["model"], "kernel_init": "pytorch"}
    assert validate_config(cfg)["model"]["kernel_init"] == "pytorch"
    cfg["model"]["bias_init"] = "pytorch"
    assert validate_config(cfg)["model"]["bias_init"] == "pytorch"
    cfg["model"]["kernel_init"] = "zeros"
    with pytest.raises(ValueError, match="kernel_init must be one of"):
        validate_config(cfg)
