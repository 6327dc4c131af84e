"""cljax.methods.feedback_vae: the classifier path is the configured MLP's (same parameters, same
logits), the gates multiply the decoder's hidden pre-activations by ``g @ M`` (a hand-written
decoder), the masks are fixed by their seed with the documented share of zeros, every part is
initialised, and argument errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.methods import StreamSpec
from cljax.methods.feedback_vae import (
    FeedbackVAE,
    feedback_network,
    feedback_pass,
    feedback_vae,
    gate_masks,
)
from cljax.nn import CNN, MLP, as_model


def _net(**kw):
    args = dict(num_outputs=3, num_heads=2, example_shape=(2, 3), latent=4, gate_rows=6,
                gate_prop=0.5, gate_seed=1)
    args.update(kw)
    return feedback_vae((5, 7), **args)


def test_every_part_is_initialised_and_shaped():
    net = _net()
    x = jnp.ones((2, 2, 3))
    params = net.init(jax.random.key(0), x, jnp.zeros(2, jnp.int32))["params"]
    assert params["encoder_0"]["kernel"].shape == (6, 5)
    assert params["classifier"]["kernel"].shape == (7, 6)            # 2 heads × 3
    assert params["to_mean"]["kernel"].shape == (7, 4)
    assert "bias" not in params["to_log_var"]
    assert params["decoder_0"]["kernel"].shape == (4, 7)
    assert params["decoder_1"]["kernel"].shape == (7, 5)
    assert params["to_data"]["kernel"].shape == (5, 6)
    assert params["mode_means"].shape == params["mode_log_vars"].shape == (6, 4)


def test_without_modes_and_with_a_log_variance_bias():
    """Replay through feedback's network: a standard normal prior (no mode parameters) and a
    bias on the log-variance layer."""
    net = _net(conditional=False, log_var_bias=True, gate_rows=0)
    x = jnp.ones((2, 2, 3))
    params = net.init(jax.random.key(0), x, jnp.zeros(2, jnp.int32))["params"]
    assert net.num_modes == 0
    assert "mode_means" not in params and "mode_log_vars" not in params
    assert params["to_log_var"]["bias"].shape == (4,)
    with pytest.raises(ValueError, match="no prior modes"):
        net.apply({"params": params}, method="modes")


def test_classification_is_the_mlp_on_the_same_parameters():
    net = _net()
    x = jax.random.normal(jax.random.key(1), (4, 2, 3))
    task = jnp.array([0, 1, 1, 0])
    params = net.init(jax.random.key(0), x, task)["params"]
    mlp = as_model(MLP((5, 7), num_outputs=3, num_heads=2))
    mlp_params = {"Dense_0": params["encoder_0"], "Dense_1": params["encoder_1"],
                  "Dense_2": params["classifier"]}
    batch = {"x": x, "task": task}
    np.testing.assert_allclose(as_model(net).logits_fn(params, batch),
                               mlp.logits_fn(mlp_params, batch), rtol=1e-6)
    logits, mean, log_var = net.apply({"params": params}, x.reshape(4, -1), method="encode")
    np.testing.assert_allclose(logits.reshape(4, 2, 3),
                               as_model(net).all_heads_fn(params, batch), rtol=1e-6)


def test_gates_multiply_the_hidden_pre_activations():
    net = _net()
    params = net.init(jax.random.key(0), jnp.ones((1, 6)), jnp.zeros(1, jnp.int32))["params"]
    masks = gate_masks((5, 7), 6, 0.5, 1)
    z = np.asarray(jax.random.normal(jax.random.key(2), (3, 4)))
    g = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(3), (3, 6))))
    p = jax.tree.map(np.asarray, params)
    h = np.maximum((z @ p["decoder_0"]["kernel"] + p["decoder_0"]["bias"]) * (g @ masks[0]), 0)
    h = np.maximum((h @ p["decoder_1"]["kernel"] + p["decoder_1"]["bias"]) * (g @ masks[1]), 0)
    want = h @ p["to_data"]["kernel"] + p["to_data"]["bias"]
    got = net.apply({"params": params}, jnp.asarray(z), jnp.asarray(g), method="decode")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # no gates: the plain decoder (gate None)
    plain = _net(gate_rows=0, gate_prop=0.0)
    h = np.maximum(z @ p["decoder_0"]["kernel"] + p["decoder_0"]["bias"], 0)
    h = np.maximum(h @ p["decoder_1"]["kernel"] + p["decoder_1"]["bias"], 0)
    np.testing.assert_allclose(plain.apply({"params": params}, jnp.asarray(z), None,
                                           method="decode"),
                               h @ p["to_data"]["kernel"] + p["to_data"]["bias"], rtol=1e-5,
                               atol=1e-6)


def test_masks_are_fixed_by_their_seed_with_the_share_of_zeros():
    a = gate_masks((300, 200), 50, 0.7, 3)
    assert [m.shape for m in a] == [(50, 200), (50, 300)]      # the decoder's reversed widths
    np.testing.assert_array_equal(a[0], gate_masks((300, 200), 50, 0.7, 3)[0])
    assert not np.array_equal(a[0], gate_masks((300, 200), 50, 0.7, 4)[0])
    assert set(np.unique(a[0])) <= {0.0, 1.0}
    assert abs(np.mean(a[1] == 0) - 0.7) < 0.01
    assert gate_masks((3,), 0, 0.5, 0) == []


def test_feedback_network_is_the_configured_mlp_rebuilt():
    spec = StreamSpec((2, 3), jnp.float32, 2, 3, 3, 2, jnp.zeros((2, 3), jnp.int32), (5, 5))
    model = feedback_network("X", as_model(MLP((5, 7), 3, num_heads=2)), spec, latent=4,
                             conditional=False)
    net = model.module
    assert isinstance(net, FeedbackVAE)
    assert (net.widths, net.num_outputs, net.num_heads, net.data_dim, net.latent,
            net.num_modes) == ((5, 7), 3, 2, 6, 4, 0)
    with pytest.raises(ValueError, match="X builds its network from the configured MLP.*CNN"):
        feedback_network("X", as_model(CNN(num_outputs=3)), spec)
    for kw in ({"dropout": 0.5}, {"kernel_init": "pytorch"}, {"bias_init": 0.1},
               {"kernel_stddev": 0.1}, {"use_bias": False}):
        with pytest.raises(ValueError, match=f"X builds its network with flax's default layers"
                                             f".*{next(iter(kw))}.*would not be carried"):
            feedback_network("X", as_model(MLP((5, 7), 3, num_heads=2, **kw)), spec)


def test_feedback_pass_encodes_draws_one_z_and_decodes():
    """Against the pieces applied by hand: z = μ + exp(½ log σ²) ⊙ ε with ε from the key."""
    net = _net()
    x = jax.random.uniform(jax.random.key(1), (3, 2, 3))
    params = net.init(jax.random.key(0), x, jnp.zeros(3, jnp.int32))["params"]
    gate = jax.nn.one_hot(jnp.array([0, 5, 2]), 6)
    key = jax.random.key(7)
    p = jax.jit(feedback_pass, static_argnums=0)(net, params, x, key, gate)
    flat = x.reshape(3, 6)
    logits, mu, lv = net.apply({"params": params}, flat, method="encode")
    eps = np.asarray(jax.random.normal(key, mu.shape))
    z = np.asarray(mu) + np.exp(0.5 * np.asarray(lv)) * eps
    np.testing.assert_allclose(p.z, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.decoded, net.apply({"params": params}, jnp.asarray(z), gate,
                                                    method="decode"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.heads, np.asarray(logits).reshape(3, 2, 3), rtol=1e-6)
    np.testing.assert_array_equal(p.inputs, flat)
    np.testing.assert_array_equal(p.mean, mu)
    np.testing.assert_array_equal(p.log_var, lv)
    with pytest.raises(ValueError, match="x has 5 features per example; the network takes 6"):
        feedback_pass(net, params, jnp.ones((3, 5)), key, gate)
    with pytest.raises(TypeError, match="module must be a FeedbackVAE.*MLP"):
        feedback_pass(MLP((5,), 3), params, x, key, gate)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="gate_prop"):
        _net(gate_prop=1.0)
    with pytest.raises(ValueError, match="widths"):
        FeedbackVAE((), 2, 1, 4, 2)
    with pytest.raises(ValueError, match="latent"):
        _net(latent=0)
    with pytest.raises(ValueError, match="num_modes"):
        FeedbackVAE((5,), 2, 1, 4, -1)
    with pytest.raises(ValueError, match="log_var_bias"):
        FeedbackVAE((5,), 2, 1, 4, 2, log_var_bias=1)
