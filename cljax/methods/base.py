"""What a continual-learning method is to the trainer: a few pure functions, no class hierarchy.

A :class:`Method` supplies

* ``make_optimizer(hparams, base)``: the whole optax update rule built around the base optimizer,
  usually ``optax.chain(penalty, base)`` (a transform chained *before* the base optimizer acts on
  the loss gradient, as EWC / SI / MAS penalties do in their papers; SI wraps the chain to see
  the task gradient and the applied update). ``hparams`` is a dict of scalar arrays carried in
  the training state, so λ-like hyperparameters can be a vmapped axis and changing them never
  recompiles;
* ``sample_tasks(key, task, batch_size)``: which task each training example is drawn from
  (the current task for fine-tuning; every task seen so far for joint training / replay);
* ``extra_loss(params, batch, opt_state, hparams, key)``: a loss term added to the task loss
  (distillation, replay), or None;
* ``end_task(ctx)``: the task-boundary update, a pure function of a :class:`BoundaryContext`
  returning the new optimizer state (estimate importance, consolidate, update bases);
* ``value_and_grad(loss, opt_state, params)``: how the step's loss and the gradient handed to the
  optimizer are computed, or None for ``jax.value_and_grad(loss)(params)`` (NCL K-FAC
  preconditions inside the backward pass: :func:`cljax.transforms.ncl_kfac_value_and_grad`).

The trainer never branches on a method's name.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.types import Array, Batch, LogitsFn, Params, PRNGKey


class BoundaryContext(NamedTuple):
    """Everything a task-boundary function may use.

    ``sample_batch(task, key, size)`` draws ``size`` training examples of ``task`` (a traced int)
    as a model-ready batch; ``size`` must be a Python int.
    """

    params: Params
    opt_state: Any
    hparams: Mapping[str, Array]
    task: Array
    key: PRNGKey
    logits_fn: LogitsFn
    sample_batch: Callable[[Array, PRNGKey, int], Batch]


class Method(NamedTuple):
    name: str
    make_optimizer: Callable[[Mapping[str, Array], optax.GradientTransformation],
                             optax.GradientTransformation]
    sample_tasks: Callable[[PRNGKey, Array, int], Array]
    end_task: Callable[[BoundaryContext], Any]
    extra_loss: Callable[..., Array] | None = None
    default_hparams: Mapping[str, float] = {}
    value_and_grad: Callable[[Callable[[Params], Array], Any, Params],
                             tuple[Array, Params]] | None = None


def current_task_only(key: PRNGKey, task: Array, batch_size: int) -> Array:
    """Every example from the current task (sequential fine-tuning)."""
    del key
    return jnp.full((batch_size,), task, dtype=jnp.int32)


def all_tasks_so_far(key: PRNGKey, task: Array, batch_size: int) -> Array:
    """Each example from a task drawn uniformly among 0..task (joint training on the tasks seen)."""
    return jax.random.randint(key, (batch_size,), 0, task + 1, dtype=jnp.int32)


def base_only(hparams: Mapping[str, Array],
              base: optax.GradientTransformation) -> optax.GradientTransformation:
    """The base optimizer alone (no CL transform)."""
    del hparams
    return base


def keep_state(ctx: BoundaryContext) -> Any:
    """A task boundary that changes nothing."""
    return ctx.opt_state


def get_hparam(hparams: Mapping[str, Array], name: str, method: str) -> Array:
    """``hparams[name]`` with an error naming the method when it is missing."""
    if name not in hparams:
        raise KeyError(f"method {method!r} needs the hyperparameter {name!r}; got "
                       f"{sorted(hparams)} (set it in the config's 'hparams' or with --sweep)")
    return hparams[name]


__all__ = ["BoundaryContext", "Method", "current_task_only", "all_tasks_so_far", "base_only",
           "keep_state", "get_hparam"]
