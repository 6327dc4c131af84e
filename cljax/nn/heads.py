"""Output heads: one shared head, or one head per task (task-incremental learning).

A multi-head output of ``num_heads`` heads with ``C`` classes each is a single Dense layer with
``num_heads * C`` outputs whose logits are reshaped to ``[B, num_heads, C]`` and indexed by each
example's task id. This is exactly "a separate output layer per task" (van de Ven & Tolias 2019):
inactive heads get zero gradient and never enter the loss or any importance estimate.
"""
from __future__ import annotations

import jax.numpy as jnp

from cljax.types import Array


def select_head(logits: Array, task: Array | None, num_heads: int) -> Array:
    """Pick each example's head from ``logits[B, num_heads * C]`` → ``[B, C]``.

    ``task`` is an int array ``[B]`` with values in ``[0, num_heads)``; it is required when
    ``num_heads > 1`` and ignored when ``num_heads == 1``.
    """
    if num_heads == 1:
        return logits
    if task is None:
        raise ValueError(
            f"batch['task'] is required for a multi-head model ({num_heads} heads); got none")
    if logits.shape[-1] % num_heads:
        raise ValueError(
            f"logits width {logits.shape[-1]} is not divisible by num_heads={num_heads}")
    task = jnp.asarray(task)
    if task.shape != logits.shape[:1]:
        raise ValueError(
            f"batch['task'] must have shape {logits.shape[:1]} (one id per example); got {task.shape}")
    per_head = logits.reshape(logits.shape[0], num_heads, -1)
    return jnp.take_along_axis(per_head, task[:, None, None].astype(jnp.int32), axis=1)[:, 0]


def head_output(logits: Array, task: Array | None, num_heads: int, output: str = "logits"
                ) -> Array:
    """The model output ``output`` from the output layer's ``logits[B, num_heads * C]``:
    ``"logits"`` (each example's head, :func:`select_head`) or ``"all_heads"``
    (``[B, num_heads, C]``, every head's logits)."""
    if output == "logits":
        return select_head(logits, task, num_heads)
    if output == "all_heads":
        if logits.shape[-1] % num_heads:
            raise ValueError(
                f"logits width {logits.shape[-1]} is not divisible by num_heads={num_heads}")
        return logits.reshape(logits.shape[0], num_heads, -1)
    raise ValueError(f"output must be 'logits', 'all_heads' or 'features'; got {output!r}")
