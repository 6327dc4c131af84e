"""GPM's 5-layer AlexNet: shapes, no biases, dropout only in training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.nn import AlexNet, as_model


def test_gpm_alexnet_structure():
    model = as_model(AlexNet(10, num_heads=10))
    params = jax.eval_shape(model.init, jax.random.key(0), {"x": jnp.zeros((1, 32, 32, 3)),
                                                            "task": jnp.zeros((1,), jnp.int32)})
    kernels = {k: v["kernel"].shape for k, v in params.items() if "kernel" in v}
    assert kernels == {"Conv_0": (4, 4, 3, 64), "Conv_1": (3, 3, 64, 128),
                       "Conv_2": (2, 2, 128, 256), "Dense_0": (1024, 2048),
                       "Dense_1": (2048, 2048), "Dense_2": (2048, 100)}
    assert not any("bias" in v for k, v in params.items() if k.startswith(("Conv", "Dense")))
    assert sum(1 for k in params if k.startswith("BatchStatNorm")) == 5


@pytest.mark.slow
def test_dropout_only_in_training_and_heads():
    model = as_model(AlexNet(3, num_heads=2, channels=(4, 4, 8), hidden=(16, 16)))
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32),
             "task": jnp.asarray([0, 1, 0, 1])}
    params = model.init(jax.random.key(0), batch)
    a = jax.jit(model.logits_fn)(params, batch)
    assert a.shape == (4, 3)
    train = jax.jit(model.train_logits_fn)
    t1 = train(params, batch, jax.random.key(1))
    t2 = train(params, batch, jax.random.key(2))
    assert not np.allclose(t1, t2)
