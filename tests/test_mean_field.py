"""cljax.methods.mean_field: the closed-form KL against a loop and a Monte Carlo estimate; local
reparameterisation against sampling the weights themselves (the output moments); the model's
parts and errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.methods import mean_field as mf
from cljax.nn import MLP, as_model


def _gaussians(seed=0, shapes=((3, 4), (4,))):
    rng = np.random.default_rng(seed)
    tree = lambda scale, shift: {f"l{i}": jnp.asarray(shift + scale * rng.normal(size=s))
                                 for i, s in enumerate(shapes)}
    return tree(1.0, 0.0), tree(0.5, -1.0), tree(1.0, 0.3), tree(0.5, -0.5)


@jax.enable_x64(True)
def test_kl_equals_the_closed_form_written_out_per_entry():
    qm, qv, pm, pv = _gaussians()
    want = 0.0
    for k in qm:
        for a, b, c, d in zip(*(np.asarray(t[k]).ravel() for t in (qm, qv, pm, pv))):
            sq, sp = np.exp(b), np.exp(d)      # variances
            want += 0.5 * (np.log(sp / sq) + (sq + (a - c) ** 2) / sp - 1)
    np.testing.assert_allclose(mf.gaussian_kl(qm, qv, pm, pv), want, rtol=1e-12)
    assert float(mf.gaussian_kl(qm, qv, qm, qv)) == 0.0
    mask = jax.tree.map(lambda v: (jnp.arange(v.size).reshape(v.shape) % 2).astype(v.dtype), qm)
    half = mf.gaussian_kl(qm, qv, pm, pv, mask)
    rest = mf.gaussian_kl(qm, qv, pm, pv, jax.tree.map(lambda m: 1 - m, mask))
    np.testing.assert_allclose(half + rest, want, rtol=1e-12)


@jax.enable_x64(True)
def test_kl_matches_a_monte_carlo_estimate():
    qm, qv, pm, pv = _gaussians(seed=1, shapes=((5,),))
    n = 400_000
    eps = jax.random.normal(jax.random.key(0), (n, 5), jnp.float64)
    w = qm["l0"] + jnp.exp(0.5 * qv["l0"]) * eps

    def log_normal(x, m, v):
        return -0.5 * (jnp.log(2 * jnp.pi) + v + (x - m) ** 2 / jnp.exp(v))

    terms = jnp.sum(log_normal(w, qm["l0"], qv["l0"]) - log_normal(w, pm["l0"], pv["l0"]), 1)
    estimate, stderr = float(jnp.mean(terms)), float(jnp.std(terms) / np.sqrt(n))
    assert abs(float(mf.gaussian_kl(qm, qv, pm, pv)) - estimate) < 4 * stderr


def _problem(seed=0, conv=False):
    from cljax.nn import CNN
    base = as_model(CNN(3, channels=(2,), hidden=4) if conv else MLP((6,), 3))
    rng = np.random.default_rng(seed)
    shape = (2, 5, 5, 2) if conv else (2, 4)
    batch = {"x": jnp.asarray(rng.normal(size=shape), jnp.float32)}
    mean = base.init(jax.random.key(seed), batch)
    params = {"mean": mean, "log_var": jax.tree.map(
        lambda p: jnp.asarray(rng.uniform(-4, -1, size=p.shape), p.dtype), mean)}
    return base, params, batch


@pytest.mark.parametrize("conv", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["mlp", "cnn"])   # the conv case: -m slow (CI time)
def test_local_reparameterisation_has_the_output_distribution_of_sampled_weights(conv):
    """Per example, sampling each layer's pre-activations (local reparameterisation) is sampling
    the weights independently per example: each output's mean and variance match those of the
    network with its weights drawn from q (10,000 draws each, within 5 standard errors); Dense
    and Conv layers."""
    base, params, batch = _problem(conv=conv)
    n = 10_000
    local = jax.jit(jax.vmap(lambda k: mf.sampled_logits(base, params, batch, k)))(
        jax.random.split(jax.random.key(1), n))

    def with_weights(k):
        leaves, treedef = jax.tree.flatten(params["mean"])
        keys = jax.random.split(k, len(leaves))
        w = [m + jnp.exp(0.5 * v) * jax.random.normal(kk, m.shape) for m, v, kk in
             zip(leaves, jax.tree.leaves(params["log_var"]), keys)]
        return base.logits_fn(jax.tree.unflatten(treedef, w), batch)

    weights = jax.jit(jax.vmap(with_weights))(jax.random.split(jax.random.key(2), n))
    for a, b in ((local, weights),):
        ma, mb = a.mean(0), b.mean(0)
        sa, sb = a.std(0), b.std(0)
        assert np.all(np.abs(ma - mb) < 5 * np.sqrt((sa ** 2 + sb ** 2) / n)), (ma, mb)
        # the standard error of a standard deviation is about s / √(2n) (Gaussian-like outputs)
        assert np.all(np.abs(sa - sb) < 5 * np.sqrt((sa ** 2 + sb ** 2) / (2 * n)) + 1e-3)
    assert float(jnp.min(local.std(0))) > 0.01           # the noise is there


def test_model_parts_jit_and_errors():
    base, params, batch = _problem()
    model = mf.mean_field_model(base, init_log_var=-5.0)
    p = model.init(jax.random.key(0), batch)
    assert jax.tree.structure(p["mean"]) == jax.tree.structure(p["log_var"])
    assert all(float(v.min()) == float(v.max()) == -5.0 for v in jax.tree.leaves(p["log_var"]))
    np.testing.assert_array_equal(model.logits_fn(p, batch), base.logits_fn(p["mean"], batch))
    key = jax.random.key(3)
    np.testing.assert_allclose(jax.jit(model.train_logits_fn)(params, batch, key),
                               model.train_logits_fn(params, batch, key), rtol=1e-5, atol=1e-6)
    small = {"mean": params["mean"], "log_var": jax.tree.map(lambda v: v - 60.0,
                                                             params["log_var"])}
    np.testing.assert_allclose(model.train_logits_fn(small, batch, key),
                               base.logits_fn(params["mean"], batch), atol=1e-5)

    class FreeParam(nn.Module):
        @nn.compact
        def __call__(self, x, task=None, *, train=False):
            return nn.Dense(2)(x) * self.param("scale", nn.initializers.ones, (2,))

    with pytest.raises(ValueError, match="scale"):
        mf.mean_field_model(as_model(FreeParam())).init(jax.random.key(0), batch)
    with pytest.raises(ValueError, match="'mean': μ, 'log_var'"):
        mf.check_mean_field({"mean": params["mean"]})
