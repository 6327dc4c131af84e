"""cljax.training.sampling: shuffled epochs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.permutation import keyed_permutation
from cljax.training.sampling import epoch_indices

jitted_indices = jax.jit(epoch_indices, static_argnums=2, static_argnames="drop_last")


@pytest.mark.parametrize("n, batch", [(10, 10), (23, 5), (7, 3)])
def test_every_epoch_sees_each_example_exactly_once(n, batch):
    key = jax.random.key(3)
    steps = 4 * n                                    # 4·batch epochs, batch straddling them
    seen = np.concatenate([np.asarray(jitted_indices(key, s, batch, n)) for s in range(steps)])
    for e in range(steps * batch // n):
        np.testing.assert_array_equal(np.sort(seen[e * n:(e + 1) * n]), np.arange(n))
    epochs = [tuple(seen[e * n:(e + 1) * n]) for e in range(3)]
    assert n < 4 or len(set(epochs)) == 3             # reshuffled each epoch


def test_drop_last_leaves_the_remainder_of_each_epoch_out():
    key, n, batch = jax.random.key(4), 23, 5        # 4 batches of 5 per epoch, 3 left out
    for e in range(3):
        got = np.concatenate([np.asarray(jitted_indices(key, 4 * e + s, batch, n,
                                                       drop_last=True)) for s in range(4)])
        assert len(set(got.tolist())) == 20 and got.max() < n
        perm = np.asarray(keyed_permutation(jnp.arange(n), n, jax.random.fold_in(key, e)))
        np.testing.assert_array_equal(got, perm[:20])  # the first 20 of the epoch's order
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        epoch_indices(key, 0, 0, n)
