"""cljax.chunking on one device: the layout, the sum against a brute-force loop, the index and
validity the body sees, and the sharding arguments. The multi-device layout (each device's own
chunks, no collective inside the loop) is checked on 4 forced devices by
``sharding_checks.py`` (``chunked_data_parallel``, run from ``tests/test_sharding.py``)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cljax import chunking
from cljax import sharding as shd


@pytest.mark.parametrize("n,chunk,shards", [(10, 3, 1), (10, None, 1), (2500, 2000, 1),
                                            (1001, 100, 4), (7, 100, 1), (12, 4, 3), (5, 1, 2)])
def test_layout_is_the_fewest_equal_chunks_of_at_most_chunk_size(n, chunk, shards):
    m, c, num = chunking.chunk_layout(n, chunk, shards)
    assert m == -(-n // shards)
    limit = m if chunk is None else chunk
    assert c <= limit and num * c >= m
    # brute force: the fewest chunks of at most `limit` rows, then the smallest equal size
    fewest = min(k for k in range(1, m + 1) if k * limit >= m)
    assert num == fewest and c == min(s for s in range(1, m + 1) if s * num >= m)
    assert num * c - m < num                     # less than one padding row per chunk


@jax.enable_x64(True)
def test_chunked_sum_equals_a_loop_over_examples_for_every_chunk_size():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(23, 3)))
    want = np.asarray([np.sum(np.asarray(x) ** 2, 0), np.sum(np.arange(23) ** 2)], dtype=object)

    def body(chunk, valid, index):
        v = valid.astype(chunk["x"].dtype)
        return {"sq": jnp.sum(v[:, None] * chunk["x"] ** 2, 0),
                "idx2": jnp.sum(jnp.where(valid, index ** 2, 0)),
                "count": jnp.sum(valid, dtype=jnp.int32)}

    for chunk in (None, 1, 4, 5, 22, 23, 100):
        got = jax.jit(lambda t, c=chunk: chunking.chunked_sum(body, t, chunk_size=c))({"x": x})
        np.testing.assert_allclose(got["sq"], want[0], rtol=1e-12)
        assert int(got["idx2"]) == want[1] and int(got["count"]) == 23


def test_chunked_sum_pads_with_a_real_example_marked_invalid():
    seen = []

    def body(chunk, valid, index):
        seen.append(chunk.shape)
        return jnp.sum(jnp.where(valid, 0.0, chunk)), jnp.sum(jnp.where(valid, 0, 1))

    pad_sum, pads = chunking.chunked_sum(body, jnp.arange(1.0, 8.0), chunk_size=3)
    assert seen[-1] == (3,)
    assert int(pads) == 2 and float(pad_sum) == 2.0   # two copies of example 0 (value 1.0)


def test_sharding_arguments():
    assert chunking.shard_count(None) == 1
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), shd.AXES)
    one = NamedSharding(mesh, PartitionSpec(shd.AXES))
    assert chunking.shard_count(one) == 1
    assert chunking.shard_count(NamedSharding(mesh, PartitionSpec())) == 1
    assert chunking.resolve_sharding(jnp.ones(4), one) is None        # one block: one device
    assert chunking.examples_sharding_of(np.ones(4)) is None            # host arrays
    assert chunking.examples_sharding_of(jnp.ones(4)) is None           # one device
    with pytest.raises(TypeError, match="sharding must be None or a jax.sharding.NamedSharding"):
        chunking.check_sharding("batch")
    with pytest.raises(ValueError, match="at least one example"):
        chunking.chunked_sum(lambda c, v, i: jnp.sum(c), jnp.ones((0,)), chunk_size=2)


@jax.enable_x64(True)
def test_estimators_and_products_take_a_sharding_argument():
    from importance_helpers import mlp_problem

    from cljax import curvature as cv
    from cljax import importance as imp

    model, params, batch = mlp_problem(n=9)
    with pytest.raises(TypeError, match="sharding must be None"):
        imp.empirical_fisher_diagonal(model.logits_fn, params, batch, sharding="batch")
    with pytest.raises(TypeError, match="sharding must be None"):
        cv.task_hvp(model.logits_fn, params, batch, params, sharding=3)
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), shd.AXES)
    one = shd.examples_sharding(mesh)
    a = imp.exact_fisher_diagonal(model.logits_fn, params, batch, chunk_size=4, sharding=one)
    b = imp.exact_fisher_diagonal(model.logits_fn, params, batch, chunk_size=4)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
