"""cljax.training.sampling: keyed permutations and shuffled epochs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.training.sampling import epoch_indices as _epoch_indices
from cljax.training.sampling import keyed_permutation

epoch_indices = jax.jit(_epoch_indices, static_argnums=2, static_argnames="drop_last")


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 100, 1000, 4097])
def test_keyed_permutation_is_a_bijection_of_range_n(n):
    for seed in range(3):
        out = np.asarray(keyed_permutation(jnp.arange(n), n, jax.random.key(seed)))
        assert out.dtype == np.int32
        np.testing.assert_array_equal(np.sort(out), np.arange(n))
    a = keyed_permutation(jnp.arange(n), n, jax.random.key(0))
    b = keyed_permutation(jnp.arange(n), n, jax.random.key(1))
    assert n < 4 or not np.array_equal(a, b)              # another key, another order


def test_keyed_permutation_is_pointwise_and_jit_and_traced_n_agree():
    key = jax.random.key(5)
    full = np.asarray(keyed_permutation(jnp.arange(300), 300, key))
    np.testing.assert_array_equal(keyed_permutation(jnp.array([299, 0, 17]), 300, key),
                                  full[[299, 0, 17]])
    jitted = jax.jit(keyed_permutation)(jnp.arange(300), jnp.int32(300), key)
    np.testing.assert_array_equal(jitted, full)


def test_first_position_is_close_to_uniform_over_keys():
    n, draws = 8, 4000
    firsts = jax.vmap(lambda k: keyed_permutation(jnp.zeros((), jnp.int32), n, k))(
        jax.random.split(jax.random.key(0), draws))
    counts = np.bincount(np.asarray(firsts), minlength=n)
    expected = draws / n
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts


@pytest.mark.parametrize("n, batch", [(10, 10), (23, 5), (7, 3)])
def test_every_epoch_sees_each_example_exactly_once(n, batch):
    key = jax.random.key(3)
    steps = 4 * n                                    # 4·batch epochs, batch straddling them
    seen = np.concatenate([np.asarray(epoch_indices(key, s, batch, n)) for s in range(steps)])
    for e in range(steps * batch // n):
        np.testing.assert_array_equal(np.sort(seen[e * n:(e + 1) * n]), np.arange(n))
    epochs = [tuple(seen[e * n:(e + 1) * n]) for e in range(3)]
    assert n < 4 or len(set(epochs)) == 3             # reshuffled each epoch


def test_drop_last_leaves_the_remainder_of_each_epoch_out():
    key, n, batch = jax.random.key(4), 23, 5        # 4 batches of 5 per epoch, 3 left out
    for e in range(3):
        got = np.concatenate([np.asarray(epoch_indices(key, 4 * e + s, batch, n,
                                                       drop_last=True)) for s in range(4)])
        assert len(set(got.tolist())) == 20 and got.max() < n
        perm = np.asarray(keyed_permutation(jnp.arange(n), n, jax.random.fold_in(key, e)))
        np.testing.assert_array_equal(got, perm[:20])  # the first 20 of the epoch's order
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        _epoch_indices(key, 0, 0, n)
