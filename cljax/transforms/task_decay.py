"""A learning rate decayed per task: the updates of task t (0-based) scaled by max(γ^t, floor).

Mirzadeh et al. 2020 ("Understanding the role of training regimes in continual learning",
NeurIPS; code imirzadeh/stable-continual-learning, ``stable_sgd/main.py``) train task t with
``lr_t = max(lr · γ^t, 5e-5)`` and a new optimizer for every task. Chained after a base
optimizer whose last link scales by the learning rate (every optax alias: ``sgd``, ``adam``,
…), :func:`scale_by_task_decay` multiplies its update by ``max(γ^t, min_scale)`` — the base
optimizer at the learning rate ``max(lr·γ^t, lr·min_scale)``.

The task is an optax extra argument (``task=``, which the trainer hands every update; int,
0-based), not a count in the optimizer state: so re-initialising the optimizer at every task
(``reset_optimizer``, their new optimizer per task) keeps the decay, which a schedule of the
optimizer's step count would restart at every task.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from cljax.transforms.common import stateless_with_extra_args
from cljax.types import Array, Params
from cljax.validation import check_in_unit_interval, check_nonnegative


def task_decay_scale(task: Array | int, decay: float, min_scale: float = 0.0) -> Array:
    """``max(decay ** task, min_scale)`` as float32: the learning-rate factor of task ``task``
    (0-based)."""
    return jnp.maximum(jnp.asarray(decay, jnp.float32) ** jnp.asarray(task, jnp.float32),
                       jnp.asarray(min_scale, jnp.float32))


def scale_by_task_decay(decay: float, *, min_scale: float = 0.0
                        ) -> optax.GradientTransformationExtraArgs:
    """Scale the updates by ``max(decay ** task, min_scale)``; ``task`` (int, 0-based) is an
    extra argument of ``update`` (Mirzadeh et al. 2020's per-task decay; module docstring).

    Args:
      decay: γ in (0, 1].
      min_scale: the factor's floor (≥ 0): a minimum learning rate ``lr_min`` is
        ``min_scale = lr_min / lr``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> tx = optax.chain(optax.sgd(0.1), scale_by_task_decay(0.5))
        >>> g = {"w": jnp.ones(2)}
        >>> u, _ = tx.update(g, tx.init(g), task=2)
        >>> [round(float(x), 6) for x in u["w"]]
        [-0.025, -0.025]
    """
    check_in_unit_interval(decay, name="decay")
    check_nonnegative(min_scale, name="min_scale")

    def scale(updates: Any, params: Params | None, *, task: Any) -> Any:
        del params
        factor = task_decay_scale(task, decay, min_scale)
        return optax.tree.scale(factor, updates)

    return stateless_with_extra_args(scale, name="scale_by_task_decay",
                                     required={"task": "the current task (int, 0-based)"})


__all__ = ["scale_by_task_decay", "task_decay_scale"]
