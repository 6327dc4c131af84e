"""cljax.permutation: a keyed bijection of [0, n), evaluated pointwise."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.permutation import keyed_permutation


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
