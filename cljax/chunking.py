"""Sums over a task's examples in chunks, data-parallel over the devices the examples are split on.

Every whole-task reduction in cljax — the estimators of :mod:`cljax.importance`, the whole-task
loss, gradient, Hessian- and GGN-vector products of :mod:`cljax.curvature` and everything built
on them (Lanczos, Hutchinson, Hutch++, the GGN-split trace, the spectral density) — is a sum
over examples ``Σ_n f_n``, taken in chunks of ``chunk_size`` examples by a ``lax.scan`` inside
one compiled program so that memory is bounded by one chunk. :func:`chunked_sum` is that loop.

**One device** (``sharding=None``): the N examples are cut into ``[num_chunks, c]`` — the fewest
chunks of at most ``chunk_size`` examples, of equal size ``c`` (:func:`chunk_layout`) — the last
chunk padded with copies of example 0 marked invalid.

**Examples split over D devices** (``sharding`` a :class:`~jax.sharding.NamedSharding` of the
leading axis, e.g. :func:`cljax.sharding.examples_sharding`): cutting the global axis into
``[num_chunks, chunk_size]`` would split the *chunk* axis over the devices, and XLA would
all-gather the examples so that every device computes every chunk (4.2× the one-chunk time on 4
devices, BENCHMARKS.md). Instead each device's own block of ``m = N / D`` rows is cut into
chunks where it lies: ``[D, m] → [D, num_chunks, c] → [num_chunks, D, c]`` (padding added inside
each block), the body runs ``vmap``-ped over the D blocks, and the carry is ``[D, ...]``
partial sums kept on their devices (sharding constraints on the chunks and the carry). The loop
holds no collective; the one all-reduce is the sum over D at the end. When N is not a multiple
of D the examples are first padded to one (a one-time reshuffle; pad them yourself with
:func:`cljax.sharding.pad_batch` and pass weights where a function takes them to avoid it).

The order of the additions differs between the two layouts (per device, then across devices),
so results agree to rounding, not bit for bit. Example ``n`` keeps its global index whatever
the layout (``index`` below): randomness keyed by it (the true Fisher's sampled labels) is the
same on any number of devices.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from cljax.types import Array

Body = Callable[[Any, Array, Array], Any]


def shard_count(sharding: NamedSharding | None) -> int:
    """How many blocks ``sharding`` cuts the leading axis into (1 for ``None`` or replicated)."""
    if sharding is None:
        return 1
    spec = tuple(sharding.spec)
    if not spec or spec[0] is None:
        return 1
    names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    sizes = dict(sharding.mesh.shape)
    return int(math.prod(sizes[a] for a in names))


def check_sharding(sharding: Any, *, name: str = "sharding") -> NamedSharding | None:
    """``sharding`` if it is ``None`` or a :class:`~jax.sharding.NamedSharding` (its leading
    axis the examples), else a ``TypeError`` naming the argument."""
    if sharding is not None and not isinstance(sharding, NamedSharding):
        raise TypeError(f"{name} must be None or a jax.sharding.NamedSharding of the examples' "
                        f"leading axis (cljax.sharding.examples_sharding(mesh)); got "
                        f"{type(sharding).__name__}")
    return sharding


def examples_sharding_of(tree: Any) -> NamedSharding | None:
    """The sharding of ``tree``'s examples when its arrays are concrete and split along their
    leading axis over more than one device (the first array's
    :class:`~jax.sharding.NamedSharding`); ``None``
    for host arrays, tracers (inside ``jit``: pass ``sharding=`` explicitly), one device or a
    replicated placement."""
    leaves = jax.tree.leaves(tree)
    if not leaves or not isinstance(leaves[0], jax.Array) or isinstance(leaves[0], jax.core.Tracer):
        return None
    sharding = getattr(leaves[0], "sharding", None)
    if isinstance(sharding, NamedSharding) and shard_count(sharding) > 1:
        return NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))
    return None


def resolve_sharding(tree: Any, sharding: Any, *, name: str = "sharding") -> NamedSharding | None:
    """``sharding`` checked, or when it is ``None`` the sharding :func:`examples_sharding_of`
    finds on ``tree``; one-block shardings become ``None`` (the one-device layout)."""
    sharding = check_sharding(sharding, name=name)
    if sharding is None:
        sharding = examples_sharding_of(tree)
    if sharding is not None and shard_count(sharding) == 1:
        return None
    return sharding


def chunk_layout(n: int, chunk_size: int | None, shards: int = 1) -> tuple[int, int, int]:
    """``(rows_per_shard, chunk, num_chunks)`` for ``n`` examples over ``shards`` devices: each
    device's ``m = ⌈n / shards⌉`` rows cut into the fewest chunks of at most ``chunk_size``
    (``None``: one chunk), all of the same size ``⌈m / num_chunks⌉`` — so padding is less than
    one row per chunk (chunks of 2000 on 2500 rows are two chunks of 1250, not 2000 + 500 and
    1500 rows of padding)."""
    m = -(-int(n) // int(shards))
    num = 1 if chunk_size is None else -(-m // int(chunk_size))
    return m, -(-m // num), num


def _blocks_sharding(sharding: NamedSharding, axis: int) -> NamedSharding:
    """``sharding``'s example axes on dimension ``axis`` (the D blocks), the rest replicated."""
    return NamedSharding(sharding.mesh, PartitionSpec(*([None] * axis), sharding.spec[0]))


def _constrain(tree: Any, sharding: NamedSharding, axis: int) -> Any:
    s = _blocks_sharding(sharding, axis)
    return jax.tree.map(lambda v: jax.lax.with_sharding_constraint(v, s), tree)


def _take_rows(tree: Any, idx: Array, axis: int) -> Any:
    return jax.tree.map(lambda v: jnp.take(v, idx, axis=axis), tree)


def _sum_chunks(body: Callable[[Any], Any], chunks: Any, init_shape_of: Any,
                after: Callable[[Any], Any]) -> Any:
    """``Σ_j body(chunks[j])`` over the leading axis (no loop for one chunk); ``after`` is applied
    to each new carry (a sharding constraint)."""
    num = jax.tree.leaves(chunks)[0].shape[0]
    if num == 1:
        return body(jax.tree.map(lambda v: v[0], chunks))
    shapes = jax.eval_shape(body, init_shape_of)
    init = after(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

    def step(carry, xs):
        new = jax.tree.map(jnp.add, carry, body(xs))
        return after(new), None

    total, _ = jax.lax.scan(step, init, chunks)
    return total


def chunked_sum(body: Body, xs: Any, *, chunk_size: int | None,
                sharding: NamedSharding | None = None) -> Any:
    """``Σ_chunks body(chunk, valid, index)`` over the examples of ``xs``, in chunks.

    Args:
      body: ``body(chunk, valid, index) -> pytree of sums over the chunk's examples``; ``chunk``
        is ``xs`` cut to one chunk (leading axis ``c``), ``valid`` a ``bool [c]`` mask that is
        False on padding rows (copies of a real example: ``body`` must make them count for
        nothing), ``index`` the ``int32 [c]`` global position of each row in ``xs``.
      xs: a pytree of arrays with a common leading axis of N examples (N static).
      chunk_size: at most this many examples per chunk (per device when sharded; chunks of
        equal size, :func:`chunk_layout`); ``None``: one chunk.
      sharding: the examples' sharding (:func:`resolve_sharding`); ``None`` or one block: the
        one-device layout.
    Returns:
      The sum over all chunks, shaped like one call of ``body``.
    """
    leaves = jax.tree.leaves(xs)
    n = int(leaves[0].shape[0])
    if n == 0:
        raise ValueError("xs must hold at least one example; got 0")
    d = shard_count(sharding)
    m, c, nc = chunk_layout(n, chunk_size, d)
    if d == 1:
        n_pad = nc * c
        rows = xs if n_pad == n else _take_rows(
            xs, jnp.concatenate([jnp.arange(n), jnp.zeros(n_pad - n, jnp.int32)]), 0)
        index = jnp.arange(n_pad, dtype=jnp.int32)
        chunks = jax.tree.map(lambda v: v.reshape((nc, c) + v.shape[1:]),
                              (rows, index < n, index))
        return _sum_chunks(lambda a: body(*a), chunks, jax.tree.map(
            lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), chunks), lambda t: t)

    assert sharding is not None                # d > 1, and shard_count(None) is 1
    n_d = m * d                                # a multiple of D: the blocks are equal
    if n_d != n:
        xs = _take_rows(xs, jnp.concatenate([jnp.arange(n), jnp.zeros(n_d - n, jnp.int32)]), 0)
    blocks = _constrain(jax.tree.map(lambda v: v.reshape((d, m) + v.shape[1:]), xs), sharding, 0)
    local = jnp.arange(nc * c, dtype=jnp.int32)
    if nc * c != m:                            # pad inside each block: no data moves
        blocks = _take_rows(blocks, jnp.where(local < m, local, 0), 1)
    index = jnp.arange(d, dtype=jnp.int32)[:, None] * m + local[None, :]          # [D, nc·c]
    valid = (local[None, :] < m) & (index < n)
    chunks = jax.tree.map(lambda v: jnp.moveaxis(v.reshape((d, nc, c) + v.shape[2:]), 1, 0),
                          (blocks, valid, index))                                  # [nc, D, c]
    chunks = _constrain(chunks, sharding, 1)
    per_block = jax.vmap(lambda a: body(*a))
    partial = _sum_chunks(per_block, chunks, jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), chunks),
        lambda t: _constrain(t, sharding, 0))
    return jax.tree.map(lambda t: jnp.sum(t, axis=0), partial)


__all__ = ["chunk_layout", "shard_count", "check_sharding", "examples_sharding_of",
           "resolve_sharding", "chunked_sum"]
