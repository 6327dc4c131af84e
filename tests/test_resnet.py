"""Reduced ResNet-18 (GEM) and BatchStatNorm: structure, BN semantics, training under jit and vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.nn import BatchStatNorm, ResNet18, as_model


def test_structure_matches_gem_reduced_resnet18():
    model = as_model(ResNet18(100))
    params = jax.eval_shape(model.init, jax.random.key(0), {"x": jnp.zeros((1, 32, 32, 3))})
    leaves = jax.tree_util.tree_leaves_with_path(params)
    convs = [p for path, p in leaves if "Conv" in jax.tree_util.keystr(path)]
    # 1 stem + 16 block convs + 3 projection shortcuts, none with a bias
    assert len(convs) == 20 and all(c.ndim == 4 for c in convs)
    widths = sorted({c.shape[-1] for c in convs})
    assert widths == [20, 40, 80, 160]
    assert params["Dense_0"]["kernel"].shape == (160, 100)
    # GEM's figure for 100 classes (nf=20): 1.09 M parameters (BN affine included)
    n = sum(p.size for p in jax.tree.leaves(params))
    assert 1.0e6 < n < 1.2e6


def test_batch_stat_norm_uses_the_batch_statistics(x64):
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5), jnp.float64) * 3 + 2
    m = BatchStatNorm()
    p = m.init(jax.random.key(1), x)
    assert set(p) == {"params"} and set(p["params"]) == {"scale", "bias"}
    y = m.apply(p, x)
    np.testing.assert_allclose(jnp.mean(y, (0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(jnp.var(y, (0, 1, 2)), 1, rtol=1e-4)
    # train and test mode alike: the same batch gives the same output, any other batch its own
    np.testing.assert_allclose(m.apply(p, x[:2])[0], ((x[:2] - x[:2].mean((0, 1, 2)))
                                                     / jnp.sqrt(x[:2].var((0, 1, 2)) + 1e-5))[0],
                               rtol=1e-10)
    with pytest.raises(ValueError, match="BatchStatNorm"):
        m.apply(p, jnp.ones(3))


def _train(model, params, batch, steps):
    opt = optax.adam(1e-2)

    def loss(p):
        logits = model.train_logits_fn(p, batch, jax.random.key(0))
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]))

    def step(carry, _):
        p, s = carry
        val, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), val

    (p, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return p, losses


def _check_trains(model, image, compare_single):
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(4, image, image, 3)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 3, 4)), "task": jnp.asarray(rng.integers(0, 2, 4))}

    def run(key):
        return _train(model, model.init(key, batch), batch, steps=4)

    keys = jax.random.split(jax.random.key(0), 2)
    params, losses = jax.jit(jax.vmap(run))(keys)
    assert losses.shape == (2, 4) and np.all(np.isfinite(losses))
    assert np.all(losses[:, -1] < losses[:, 0])             # it learns the tiny batch
    if compare_single:
        one, one_losses = jax.jit(run)(keys[1])
        # vmap = one run, up to float32 rounding amplified by 6 Adam steps at lr 1e-2
        np.testing.assert_allclose(one_losses, losses[1], rtol=1e-2, atol=1e-3)


@pytest.mark.slow     # ≈ 7 s cold; the structure and batch-statistics tests run by default
def test_trains_under_jit_and_vmap():
    """A two-stage ResNet18 (stem, a block, a strided block with projection shortcut)."""
    _check_trains(as_model(ResNet18(3, num_heads=2, nf=4, num_blocks=(1, 1))), 8, False)


@pytest.mark.slow
def test_full_reduced_resnet18_trains_under_jit_and_vmap():
    _check_trains(as_model(ResNet18(3, num_heads=2)), 32, True)
