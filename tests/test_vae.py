"""cljax.methods.vae: the negative ELBO against a hand computation on a tiny network with set
weights (both likelihoods), the closed-form KL against a Monte Carlo estimate, the architecture
(no bias on the log-variance layer), generation, a few Adam steps lowering the loss, and argument
errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.methods.vae import (
    VAE,
    gaussian_kl_standard,
    generate,
    init_vae,
    make_vae,
    negative_elbo,
    reconstruction_nll,
)


def _set_weights(vae, seed=0):
    """Parameters of ``vae`` drawn from a seeded normal (not flax's initialisers)."""
    params = init_vae(vae, jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.7, jnp.float32),
                        params)


def _hand_negative_elbo(p, x, eps, likelihood):
    """The negative ELBO / D of each row of x, written out in numpy with explicit sums."""
    p = jax.tree.map(np.asarray, p)
    relu = lambda a: np.maximum(a, 0.0)
    out = []
    for row, e in zip(np.asarray(x, np.float64), np.asarray(eps, np.float64)):
        h = relu(row @ p["encoder_0"]["kernel"] + p["encoder_0"]["bias"])
        mu = h @ p["to_mean"]["kernel"] + p["to_mean"]["bias"]
        log_var = h @ p["to_log_var"]["kernel"]
        z = mu + np.exp(0.5 * log_var) * e
        g = relu(z @ p["decoder_0"]["kernel"] + p["decoder_0"]["bias"])
        o = g @ p["to_data"]["kernel"] + p["to_data"]["bias"]
        if likelihood == "bernoulli":
            prob = 1.0 / (1.0 + np.exp(-o))
            nll = -sum(xi * np.log(pi) + (1 - xi) * np.log(1 - pi) for xi, pi in zip(row, prob))
        else:
            nll = sum(0.5 * (xi - oi) ** 2 for xi, oi in zip(row, o))
        kl = sum(0.5 * (np.exp(v) + m ** 2 - 1.0 - v) for m, v in zip(mu, log_var))
        out.append((nll + kl) / row.size)
    return np.array(out)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_negative_elbo_equals_a_hand_computation(likelihood):
    vae = VAE(data_dim=5, widths=(3,), latent=2)
    params = _set_weights(vae)
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(4, 5)).astype(np.float32)
    if likelihood == "gaussian":
        x = (3.0 * x - 1.5).astype(np.float32)
    key = jax.random.key(7)
    eps = jax.random.normal(key, (4, 2), jnp.float32)     # the draw negative_elbo documents
    got = negative_elbo(vae, params, jnp.asarray(x.reshape(4, 1, 5)), key,
                        likelihood=likelihood)
    np.testing.assert_allclose(got, _hand_negative_elbo(params, x, eps, likelihood),
                               rtol=2e-5, atol=1e-6)


def test_closed_form_kl_equals_a_monte_carlo_estimate():
    rng = np.random.default_rng(2)
    mean = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    log_var = jnp.asarray(rng.normal(size=(3, 4)) * 0.5, jnp.float32)
    n = 400_000
    eps = jax.random.normal(jax.random.key(3), (n, 3, 4))
    z = mean + jnp.exp(0.5 * log_var) * eps
    log_q = -0.5 * jnp.sum(jnp.square(eps) + log_var, axis=-1)      # constants cancel
    log_p = -0.5 * jnp.sum(jnp.square(z), axis=-1)
    mc = jnp.mean(log_q - log_p, axis=0)
    np.testing.assert_allclose(gaussian_kl_standard(mean, log_var), mc, rtol=2e-2, atol=2e-2)
    # zero at the prior itself
    np.testing.assert_allclose(gaussian_kl_standard(jnp.zeros(4), jnp.zeros(4)), 0.0)


def test_reconstruction_terms():
    out = jnp.array([[0.3, -2.0]])
    x = jnp.array([[1.0, 0.25]])
    p = jax.nn.sigmoid(out)
    bce = -(x * jnp.log(p) + (1 - x) * jnp.log(1 - p)).sum(-1)
    np.testing.assert_allclose(reconstruction_nll(out, x, "bernoulli"), bce, rtol=1e-6)
    np.testing.assert_allclose(reconstruction_nll(out, x, "gaussian"),
                               0.5 * ((x - out) ** 2).sum(-1), rtol=1e-6)


def test_architecture_and_generation():
    vae = make_vae((28, 28, 1))
    params = init_vae(vae, jax.random.key(0))
    assert vae.data_dim == 784
    assert "bias" not in params["to_log_var"]           # their log-variance layer has none
    assert params["encoder_0"]["kernel"].shape == (784, 400)
    assert params["to_mean"]["kernel"].shape == (400, 100)
    assert params["decoder_0"]["kernel"].shape == (100, 400)
    assert params["to_data"]["kernel"].shape == (400, 784)
    x = generate(vae, params, jax.random.key(1), 6)
    assert x.shape == (6, 784) and bool(jnp.all((x > 0) & (x < 1)))
    np.testing.assert_array_equal(x, generate(vae, params, jax.random.key(1), 6))
    assert not np.allclose(x, generate(vae, params, jax.random.key(2), 6))
    # the Gaussian mean is the decoder's output itself (no squashing)
    z = jax.random.normal(jax.random.key(1), (6, 100))
    np.testing.assert_allclose(generate(vae, params, jax.random.key(1), 6, likelihood="gaussian"),
                               vae.apply({"params": params}, z, method="decode"), rtol=1e-6)


@pytest.mark.slow
def test_adam_steps_lower_the_negative_elbo():
    vae = VAE(data_dim=16, widths=(32,), latent=4)
    params = init_vae(vae, jax.random.key(0))
    patterns = (jax.random.uniform(jax.random.key(1), (2, 16)) > 0.5).astype(jnp.float32)
    x = patterns[jnp.arange(64) % 2]      # two binary images: a VAE can learn them exactly
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(p, o, k):
        loss, g = jax.value_and_grad(lambda q: jnp.mean(negative_elbo(vae, q, x, k)))(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    losses = []
    for i in range(200):
        params, opt, loss = step(params, opt, jax.random.key(100 + i))
        losses.append(float(loss))
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:20])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="latent"):
        VAE(data_dim=4, latent=0)
    with pytest.raises(ValueError, match="widths"):
        VAE(data_dim=4, widths=())
    vae = VAE(data_dim=4, widths=(3,), latent=2)
    params = init_vae(vae, jax.random.key(0))
    with pytest.raises(ValueError, match="5 features per example; the VAE takes 4"):
        negative_elbo(vae, params, jnp.zeros((2, 5)), jax.random.key(0))
    with pytest.raises(ValueError, match="likelihood"):
        generate(vae, params, jax.random.key(0), 2, likelihood="poisson")
    with pytest.raises(ValueError, match="likelihood"):
        reconstruction_nll(jnp.zeros((1, 4)), jnp.zeros((1, 4)), "laplace")
