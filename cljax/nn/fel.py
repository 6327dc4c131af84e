"""RGO's Feature Encoding Layer (Liu & Liu 2022, ICLR): a fixed, task-seeded feature permutation.

After each real layer, the features of an example of task t are permuted by a permutation drawn
once from ``fold_in(key(seed), t)``: no parameters, a bijection per task, the same at every call
for a task and different across tasks. Consecutive tasks' representations are thereby
decorrelated layer by layer, the condition under which RGO's per-layer projections stand for the
whole network's (their Theorem 3). The permutation is gathered per example, so a batch may mix
tasks; the task id is needed at test time too (as for Task-IL heads).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cljax.types import Array


def task_permutations(num_tasks: int, features: int, *, seed: int = 0) -> Array:
    """``int32 [num_tasks, features]``: row t is the permutation drawn from ``fold_in(key(seed), t)``."""
    if not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
    base = jax.random.key(seed)
    return jnp.stack([jax.random.permutation(jax.random.fold_in(base, t), features)
                      for t in range(num_tasks)]).astype(jnp.int32)


class FeatureEncoding(nn.Module):
    """Permute the last axis of ``x [B, ..., F]`` by each example's task permutation."""

    num_tasks: int
    seed: int = 0

    @nn.compact
    def __call__(self, x: Array, task: Array | None) -> Array:
        if task is None:
            raise ValueError("FeatureEncoding needs batch['task'] (one task id per example)")
        perms = task_permutations(self.num_tasks, x.shape[-1], seed=self.seed)
        idx = perms[jnp.asarray(task, jnp.int32)]                  # [B, F]
        idx = idx.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],))
        return jnp.take_along_axis(x, jnp.broadcast_to(idx, x.shape), axis=-1)


__all__ = ["FeatureEncoding", "task_permutations"]
