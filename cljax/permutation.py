"""A keyed pseudo-random permutation of ``[0, n)``, evaluated pointwise.

``keyed_permutation(x, n, key)`` is ``π(x)`` for a bijection ``π`` of ``[0, n)`` chosen by
``key``: a 4-round balanced Feistel network on the smallest even-bit power of two ≥ n (at most
4n), cycle-walked back into ``[0, n)`` (a point that lands outside steps on along its cycle
until it is inside: the walk restricted to ``[0, n)`` is again a bijection). Nothing of size n is
built, so drawing k distinct elements costs O(k) whatever n — shuffled epochs over a task
(:mod:`cljax.training.sampling`) and draws without replacement from a memory
(:func:`cljax.memory.sample_memory`) both use it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.types import Array, PRNGKey

_ROUNDS = 4


def _mix(x: Array) -> Array:
    """A 32-bit integer hash (the "lowbias32" finaliser of Chris Wellons' hash prospector)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _feistel(x: Array, round_keys: Array, half_bits: Array) -> Array:
    """A balanced Feistel network on ``2 · half_bits``-bit integers: a bijection of
    ``[0, 4^half_bits)`` for any round function (``round_keys`` ``uint32 [..., R]``)."""
    mask = (jnp.uint32(1) << half_bits) - jnp.uint32(1)
    left, right = (x >> half_bits) & mask, x & mask
    for r in range(_ROUNDS):
        left, right = right, left ^ (_mix(right ^ round_keys[..., r]) & mask)
    return (left << half_bits) | right


def keyed_permutation(x: Array, n: Array | int, key: PRNGKey) -> Array:
    """``π(x)`` for a bijection ``π`` of ``[0, n)`` drawn by ``key`` (``x`` int ``[...]`` with
    every entry in ``[0, n)``; ``n`` ≥ 1 may be traced). A different ``key`` gives another
    permutation; the same key, the same one on every call and device (module docstring)."""
    n = jnp.asarray(n, jnp.uint32)
    bits = jnp.ceil(jnp.log2(jnp.maximum(n, 2).astype(jnp.float32))).astype(jnp.uint32)
    half = jnp.maximum((bits + 1) // 2, 1)                # the domain 4^half ≥ n, < 4n
    keys = jax.random.bits(key, (_ROUNDS,), jnp.uint32)
    x = jnp.asarray(x).astype(jnp.uint32)
    y = _feistel(x, keys, half)

    def outside(y):
        return jnp.any(y >= n)

    def walk(y):           # cycle walking: a point outside [0, n) steps on along its cycle
        return jnp.where(y >= n, _feistel(y, keys, half), y)

    return jax.lax.while_loop(outside, walk, y).astype(jnp.int32)


__all__ = ["keyed_permutation"]
