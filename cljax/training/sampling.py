"""How a step draws the current task's examples: i.i.d., or shuffled passes (epochs).

``"iid"`` (the default): every example uniformly with replacement, as van de Ven's and most
JAX training loops do. ``"shuffled"``: an epoch is one shuffled pass over the task's own
examples, each seen exactly once per epoch; the epochs follow each other without a gap, so a
batch that straddles two epochs takes the tail of one and the head of the next (a single pass
with ``steps · batch = n`` sees every example exactly once). ``"shuffled_drop_last"``: each
epoch is ``floor(n / batch)`` whole batches, the ``n mod batch`` examples left at the end of its
order sit that epoch out (PyTorch's ``drop_last=True``).

No permutation is stored: the ``p``-th example of epoch ``e`` is ``π_e(p)``, a keyed bijection
of ``[0, n)`` (:func:`cljax.permutation.keyed_permutation`), computed for the batch's positions
alone — O(batch) per step, whatever the task's size, and the same on every device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.permutation import keyed_permutation
from cljax.types import Array, PRNGKey

SAMPLINGS = ("iid", "shuffled", "shuffled_drop_last")
"""The ways a step draws the current task's examples (module docstring)."""

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


__all__ = ["SAMPLINGS", "epoch_indices"]
