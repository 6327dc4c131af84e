"""How a step draws the current task's examples: i.i.d., or shuffled passes (epochs).

``"iid"`` (the default): every example uniformly with replacement, as van de Ven's and most
JAX training loops do. ``"shuffled"``: an epoch is one shuffled pass over the task's own
examples, each seen exactly once per epoch; the epochs follow each other without a gap, so a
batch that straddles two epochs takes the tail of one and the head of the next (a single pass
with ``steps · batch = n`` sees every example exactly once). ``"shuffled_drop_last"``: each
epoch is ``floor(n / batch)`` whole batches, the ``n mod batch`` examples left at the end of its
order sit that epoch out (PyTorch's ``drop_last=True``).

No permutation is stored: the ``p``-th example of epoch ``e`` is ``π_e(p)``, a keyed bijection
of ``[0, n)`` (:func:`keyed_permutation`: a 4-round Feistel network on the smallest
even-bit power of two ≥ n, cycle-walked back into ``[0, n)``), computed for the batch's
positions alone — O(batch) per step, whatever the task's size, and the same on every device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.types import Array, PRNGKey

SAMPLINGS = ("iid", "shuffled", "shuffled_drop_last")
"""The ways a step draws the current task's examples (module docstring)."""

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
    permutation; the same key, the same one on every call and device."""
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


def epoch_indices(key: PRNGKey, task_step: Array | int, batch_size: int, n: Array | int, *,
                  drop_last: bool = False) -> Array:
    """The example indices (``int32 [batch_size]``, in ``[0, n)``) of step ``task_step`` of a
    task of ``n`` examples drawn in shuffled epochs (module docstring); epoch ``e``'s order is
    :func:`keyed_permutation` under ``fold_in(key, e)``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    step = jnp.asarray(task_step, jnp.int32)
    n = jnp.asarray(n, jnp.int32)
    lane = jnp.arange(batch_size, dtype=jnp.int32)
    if drop_last:
        per_epoch = jnp.maximum(n // batch_size, 1)
        epoch = jnp.broadcast_to(step // per_epoch, lane.shape)
        pos = (step % per_epoch) * batch_size + lane
    else:
        flat = step * batch_size + lane
        epoch, pos = flat // n, flat % n

    def one(e: Array, p: Array) -> Array:
        return keyed_permutation(p, n, jax.random.fold_in(key, e))

    return jax.vmap(one)(epoch, pos)


__all__ = ["SAMPLINGS", "keyed_permutation", "epoch_indices"]
