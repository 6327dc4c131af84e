"""RWalk's running Fisher (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning",
eq. 10 as A-GEM's code cites it) and the min–max normalisation its authors' code applies before EWC's penalty.

The running Fisher is kept *during* training instead of estimated at the task's end: every step
adds the square of its minibatch gradient (the gradient of the batch's mean loss at the step's
parameters) to a window sum, and every ``window`` steps the window's mean is folded into an
exponential moving average,

    F ← (1 − α)·F + α·(Σ_window g²) / window,    then the window sum ← 0.

As in the code of A-GEM (Chaudhry et al. 2019, facebookresearch/agem ``model.py``: ``tmp_fisher``,
``running_fisher``, ``FISHER_UPDATE_AFTER`` 50, ``FISHER_EMA_DECAY`` α = 0.9), the fold comes
*before* the step's own square is added at the task's steps ``window − 1, 2·window − 1, …``
(their ``(iters + 1) % fisher_update_after == 0``); at a task boundary their code empties the
window sum (``reset_tmp_fisher``: :func:`restart_window`, the caller's part) and keeps the average, which carries across
tasks (by α's weight, the last window dominates). Their EWC then takes the Fisher at the task's
end, rescaled to [0, 1] over all parameters together (:func:`minmax_normalize`).

Scale: a squared *minibatch-mean* gradient, not a per-example Fisher (its scale falls with the
batch size); after :func:`minmax_normalize` only the relative values remain.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import validation
from cljax.types import Array, Importance, Params

MINMAX_EPSILON = 1e-32
"""The ε of :func:`minmax_normalize`'s denominator (A-GEM's code: ``EPSILON``)."""


class RunningFisherState(NamedTuple):
    """The window's sum of squared minibatch gradients and the running average (params-shaped)."""

    window_sum: Params
    running: Params


def init_running_fisher(params: Params) -> RunningFisherState:
    """Both sums zero with ``params``' structure, shapes and dtypes (before the first task)."""
    zeros = optax.tree_utils.tree_zeros_like(params)
    return RunningFisherState(zeros, zeros)


def update_running_fisher(state: RunningFisherState, grads: Params, task_step: int | Array, *,
                          window: int = 50, decay: float | Array = 0.9,
                          reset_window: bool = True) -> RunningFisherState:
    """One training step of the running Fisher (RWalk eq. 10, as A-GEM's code orders it).

    Args:
      state: the running Fisher so far (:func:`init_running_fisher`).
      grads: the step's minibatch gradient of the task loss at the step's parameters,
        params-shaped.
      task_step: the step's index within its task (0-based; may be traced): when
        ``(task_step + 1) % window == 0`` the window's mean is folded into the average first.
      window: steps per fold (a positive Python int).
      decay: α ∈ (0, 1], the weight of the newest window in the average.
      reset_window: empty the window sum at each fold (EWC in A-GEM's code); False keeps summing
        over the whole task, each fold then taking (Σ since the task's start)/``window`` (their
        RWalk branch never resets it within a task: the caller empties it at the boundary).

    Returns:
      The new state, in the state's dtypes.
    """
    validation.check_instance(state, RunningFisherState, name="state",
                              hint="init_running_fisher(params)")
    validation.check_in_unit_interval(decay, name="decay")
    validation.check_same_structure(grads, state.window_sum, name="grads",
                                    reference_name="state.window_sum")
    fold = is_fold_step(task_step, window)

    def fold_in(s, f):
        a = jnp.asarray(decay, f.dtype)
        return jnp.where(fold, (1 - a) * f + a * s.astype(f.dtype) / window, f).astype(f.dtype)

    def add_square(s, g):
        kept = jnp.where(fold, jnp.zeros_like(s), s) if reset_window else s
        return (kept + jnp.square(g.astype(s.dtype))).astype(s.dtype)

    running = jax.tree.map(fold_in, state.window_sum, state.running)
    window_sum = jax.tree.map(add_square, state.window_sum, grads)
    return RunningFisherState(window_sum, running)


def is_fold_step(task_step: int | Array, window: int) -> Array:
    """Whether the window folds before the task's step ``task_step`` (0-based; may be traced):
    ``(task_step + 1) % window == 0``, their ``(iters + 1) % fisher_update_after == 0``."""
    validation.check_positive_int(window, name="window")
    return (jnp.asarray(task_step) + 1) % window == 0


def restart_window(state: RunningFisherState) -> RunningFisherState:
    """The state at a task boundary in their code: the window sum emptied
    (``reset_tmp_fisher``), the running average kept."""
    validation.check_instance(state, RunningFisherState, name="state",
                              hint="init_running_fisher(params)")
    return state._replace(window_sum=optax.tree_utils.tree_zeros_like(state.window_sum))


def minmax_normalize(importance: Importance) -> Importance:
    """(Ω − min Ω) / (max Ω − min Ω + ε), the minimum and maximum over every leaf together, as
    A-GEM's and RWalk's code rescale the Fisher before EWC's penalty (ε = 1e-32); every value then
    lies in [0, 1]."""
    leaves = jax.tree.leaves(importance)
    if not leaves:
        raise ValueError("importance: an empty pytree has no minimum or maximum")
    validation.check_finite(importance, name="importance")
    dtype = jnp.result_type(*leaves)        # float64 leaves keep their precision
    low = jnp.min(jnp.stack([jnp.min(x).astype(dtype) for x in leaves]))
    high = jnp.max(jnp.stack([jnp.max(x).astype(dtype) for x in leaves]))
    scale = high - low + MINMAX_EPSILON
    return jax.tree.map(lambda x: ((x.astype(dtype) - low) / scale).astype(x.dtype), importance)


__all__ = ["RunningFisherState", "init_running_fisher", "update_running_fisher", "is_fold_step",
           "restart_window", "minmax_normalize", "MINMAX_EPSILON"]
