"""Tests for cljax.transforms.kfac_gradient (K-FAC preconditioning inside the backward pass)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close

from cljax.layers import param_layers
from cljax.transforms import kfac_gradient, kfac_preconditioned_value_and_grad
from cljax.types import KFACFactors


class Net(nn.Module):
    """Conv (preconditioned afterwards), LayerNorm (not a factor layer), a Dense on [B, T, in]
    inputs, a Dense called twice (shared weights), a bias-free Dense."""

    @nn.compact
    def __call__(self, x):
        b = x.shape[0]
        h = nn.relu(nn.Conv(3, (3, 3), name="conv")(x)).reshape(b, 2, -1)     # [B, 2, 54]
        h = jnp.tanh(nn.Dense(8, name="seq")(h)).reshape(b, -1)              # [B, 16]
        h = nn.LayerNorm(name="norm")(h)
        h = jnp.tanh(nn.Dense(5, name="wide")(h))
        shared = nn.Dense(5, name="shared")
        h = jnp.tanh(shared(jnp.tanh(shared(h))))
        return nn.Dense(4, use_bias=False, name="head")(h)


_NET = Net()
_INIT = jax.jit(_NET.init)  # one compilation per input dtype for the whole module


def _setup(batch=6):
    net = _NET
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (batch, 6, 6, 1))
    y = jax.random.randint(ky, (batch,), 0, 4)
    params = _INIT(kp, x)["params"]

    def loss(p, x, y):
        logits = net.apply({"params": p}, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    rng = np.random.default_rng(0)
    inverses = {}
    for name, (n, m, _) in param_layers(params).items():
        a, g = rng.normal(size=(n, n)), rng.normal(size=(m, m))
        # not symmetric on purpose: the result must be A⁻¹ ∇W̄ G⁻¹, not a transpose of it
        inverses[name] = KFACFactors(
            jnp.asarray(a @ a.T / n + 0.3 * np.eye(n) + 0.05 * a, jnp.float32),
            jnp.asarray(g @ g.T / m + 0.3 * np.eye(m) + 0.05 * g, jnp.float32))
    return loss, params, inverses, x, y


def _oracle(loss, params, inverses, x, y, other):
    """Each layer's flattened [W; b] gradient times the dense Kronecker matrix A⁻¹ ⊗ G⁻¹ᵀ
    (row-major vec: vec(A W G) = (A ⊗ Gᵀ) vec(W)); other parameters times ``other``."""
    value, grads = jax.value_and_grad(loss)(params, x, y)
    out = jax.tree.map(lambda g: other * g, grads)
    for name, (a_inv, g_inv) in inverses.items():
        node = grads[name]
        k = node["kernel"]
        w = k.reshape(-1, k.shape[-1])
        if "bias" in node:
            w = jnp.concatenate([w, node["bias"][None]], 0)
        pre = (jnp.kron(a_inv, g_inv.T) @ w.reshape(-1)).reshape(w.shape)
        new = {"kernel": pre[:w.shape[0] - ("bias" in node)].reshape(k.shape)}
        if "bias" in node:
            new["bias"] = pre[-1]
        out = {**out, name: new}
    return value, out


@pytest.mark.parametrize("form", ["auto", "rank", "dense"])
def test_matches_dense_kronecker_oracle(x64, monkeypatch, form):
    if form != "auto":
        monkeypatch.setattr(kfac_gradient, "_rank_form_is_cheaper", lambda *a: form == "rank")
    loss, params, inverses, x, y = _setup()
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    inverses = jax.tree.map(lambda p: p.astype(jnp.float64), inverses)
    x = x.astype(jnp.float64)
    calls = []
    dense = kfac_gradient._dense
    monkeypatch.setattr(kfac_gradient, "_dense", lambda *a: calls.append(a[1].shape) or dense(*a))
    value, got = jax.jit(lambda p, inv: kfac_preconditioned_value_and_grad(
        loss, p, inv, x, y, other_scale=0.7))(params, inverses)
    # every Dense call went through the custom VJP (the shared layer twice); the conv did not
    assert sorted(calls) == sorted([(54, 8), (16, 5), (5, 5), (5, 5), (5, 4)])
    ref_value, ref = jax.jit(lambda p, inv: _oracle(loss, p, inv, x, y, 0.7))(params, inverses)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    assert_trees_close(got, ref, rtol=1e-9, atol=1e-12)


def test_subset_of_layers_and_identity_is_plain_gradient():
    loss, params, inverses, x, y = _setup()
    plain = jax.jit(jax.grad(loss))(params, x, y)
    eye = {k: KFACFactors(jnp.eye(a.shape[0]), jnp.eye(g.shape[0])) for k, (a, g) in
           inverses.items()}
    fused = jax.jit(lambda inv, s: kfac_preconditioned_value_and_grad(
        loss, params, inv, x, y, other_scale=s)[1])
    assert_trees_close(fused(eye, 1.0), plain, rtol=1e-5, atol=1e-6)
    sub = {"wide": inverses["wide"]}
    got = fused(sub, 2.0)
    _, ref = jax.jit(lambda inv: _oracle(loss, params, inv, x, y, 2.0))(sub)
    assert_trees_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_jit_and_vmap_equal_eager_and_loop():
    loss, params, inverses, x, y = _setup()
    eager = kfac_preconditioned_value_and_grad(loss, params, inverses, x, y, other_scale=0.5)
    jitted = jax.jit(lambda p, inv, s: kfac_preconditioned_value_and_grad(
        loss, p, inv, x, y, other_scale=s))(params, inverses, 0.5)
    assert_trees_close(jitted, eager, rtol=1e-5, atol=1e-6)
    scales = jnp.array([0.5, 2.0])
    invs = jax.tree.map(lambda a: jnp.stack([a, 2.0 * a]), inverses)
    batched = jax.vmap(lambda inv, s: kfac_preconditioned_value_and_grad(
        loss, params, inv, x, y, other_scale=s))(invs, scales)
    for r in range(2):
        alone = kfac_preconditioned_value_and_grad(
            loss, params, jax.tree.map(lambda a: a[r], invs), x, y, other_scale=scales[r])
        assert_trees_close(jax.tree.map(lambda a: a[r], batched), alone, rtol=1e-5, atol=1e-6)


def test_has_aux_returns_value_and_aux_and_the_same_gradient():
    loss, params, inverses, x, y = _setup()

    def loss_aux(p, x, y):
        # the aux calls the model again: that forward gets no cotangent, so no contribution
        return loss(p, x, y), {"logits": _NET.apply({"params": p}, x), "y": y}

    @jax.jit
    def run(p, inv):
        return (kfac_preconditioned_value_and_grad(loss, p, inv, x, y, other_scale=0.7),
                kfac_preconditioned_value_and_grad(loss_aux, p, inv, x, y, other_scale=0.7,
                                                   has_aux=True))

    (value, grads), ((value_aux, aux), grads_aux) = run(params, inverses)
    np.testing.assert_allclose(value_aux, value, rtol=1e-6)
    np.testing.assert_allclose(value, loss(params, x, y), rtol=1e-5)
    assert_trees_close(grads_aux, grads, rtol=1e-6, atol=1e-7)
    assert_trees_close(aux["logits"], _NET.apply({"params": params}, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(aux["y"], y)
    with pytest.raises(ValueError, match=r"float scalar loss \(and aux\)"):
        kfac_preconditioned_value_and_grad(lambda p, x, y: (jnp.ones(3) * loss(p, x, y), {}),
                                           params, inverses, x, y, has_aux=True)


def test_rank_form_choice_follows_multiply_adds():
    # 784→400 layer (n = 785): the rank form is cheaper up to R ≈ 479 rows
    assert kfac_gradient._rank_form_is_cheaper(128, 785, 400)
    assert not kfac_gradient._rank_form_is_cheaper(600, 785, 400)
    assert not kfac_gradient._rank_form_is_cheaper(128, 401, 10)  # output layer: dense product


def test_bad_inputs_raise():
    loss, params, inverses, x, y = _setup()
    with pytest.raises(ValueError, match="not tracked factor layers"):
        kfac_preconditioned_value_and_grad(loss, params, {"nope": inverses["wide"]}, x, y)
    with pytest.raises(ValueError, match=r"factors\['wide'\] must have A"):
        kfac_preconditioned_value_and_grad(loss, params, {"wide": inverses["shared"]}, x, y)
    with pytest.raises(ValueError, match="float scalar loss"):
        kfac_preconditioned_value_and_grad(lambda p, x, y: jnp.ones(3) * loss(p, x, y), params,
                                           inverses, x, y)
    with pytest.raises(ValueError, match="other_scale"):
        kfac_preconditioned_value_and_grad(loss, params, inverses, x, y, other_scale=jnp.ones(2))
    with pytest.raises(TypeError, match="callable"):
        kfac_preconditioned_value_and_grad("loss", params, inverses, x, y)
