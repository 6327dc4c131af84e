"""What the RGO experiments share: a task's training batches and every layer's rows on them.

``experiments/rgo_conv_rows.py`` and ``experiments/rgo_drift.py`` both read, for some parameters
and a task, the rows each layer multiplies its W̄ = [W; b] with (:func:`cljax.layers.all_rows`:
inputs, im2col patches for a conv, a 1 for a bias) over a few random training batches.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cljax.layers import all_rows, capture_rows
from cljax.training import make_batch


def task_batch(data, batch_size: int) -> Callable:
    """``batch_at(key, task)``: ``batch_size`` training examples of ``task`` drawn with ``key``
    (traceable: ``task`` may be a traced int)."""
    def batch_at(key, task):
        idx = jax.random.randint(key, (batch_size,), 0, data.train.n[task])
        return make_batch(data, data.train, jnp.full((batch_size,), task, jnp.int32), idx)
    return batch_at


def layer_rows(model, layers: list[str], batch_at: Callable) -> Callable:
    """``rows(params, task, keys)`` → ``{layer: [n, dim]}``: every named layer's rows over one
    batch per key, stacked (one jitted ``lax.map`` over the batches, compiled once for all
    parameters and tasks)."""
    @jax.jit
    def rows(params, task, keys):
        def one(key):
            _, captured = capture_rows(model.logits_fn, params, batch_at(key, task),
                                       layers=layers)
            return all_rows(captured)
        probe = jax.lax.map(one, keys)
        return {n: x.reshape(-1, x.shape[-1]) for n, x in probe.items()}
    return rows
