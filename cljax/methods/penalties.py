"""Quadratic-penalty methods: EWC, online EWC, SI, MAS and L2 as recipes for ``run_stream``.

All five add ``λ·Ω⊙(θ − θ*)`` to the loss gradient *before* the base optimizer
(:func:`cljax.transforms.quadratic_penalty` first in the chain, as the papers add the penalty to
the loss) and differ only in the importance Ω and how a task boundary folds it in:

==========  =====================================================  ===============================
method      Ω_t at the end of task t                                 boundary (``consolidate``)
==========  =====================================================  ===============================
ewc         diagonal Fisher on task t's data (Kirkpatrick 2017)     one penalty per task (exact fold)
online_ewc  diagonal Fisher (Schwarz et al. 2018)                   Ω ← γΩ + Ω_t, anchor θ*_t
si          ω/(Δθ² + ξ), path integral (Zenke et al. 2017)          Ω ← Ω + Ω_t (clipped at 0)
mas         mean |∂‖f(x)‖²/∂θ| (Aljundi et al. 2018)                Ω ← Ω + Ω_t
l2          1                                                        Ω ← 1, anchor θ*_t
==========  =====================================================  ===============================

Hyperparameters carried as arrays (vmappable, never recompiling): ``strength`` (λ, or SI's c)
for all, ``decay`` (γ) for online EWC, ``xi`` (ξ) for SI. Static options: which Fisher
(``"exact"`` — the closed-form expectation over classes, default; ``"true"`` — sampled labels;
``"empirical"`` — dataset labels), how many training examples of the finished task the estimate
uses (``num_examples``, drawn uniformly with replacement) and the estimator's ``chunk_size``.

Scale: every importance is a *mean over examples* (per-example Fisher), so λ here multiplies a
per-example quantity; the task loss is a mean over the batch.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import importance as imp
from cljax import transforms
from cljax.methods.base import (BoundaryContext, Method, base_only, current_task_only,
                                get_hparam)
from cljax.types import Array, Params
from cljax.validation import check_positive_int

FISHERS = ("exact", "true", "empirical")


def _check_options(fisher: str, num_examples: int, chunk_size: int) -> None:
    if fisher not in FISHERS:
        raise ValueError(f"fisher must be one of {FISHERS}; got {fisher!r}")
    check_positive_int(num_examples, name="num_examples")
    check_positive_int(chunk_size, name="chunk_size")


def fisher_on_task(ctx: BoundaryContext, *, fisher: str, num_examples: int,
                   chunk_size: int) -> Params:
    """Diagonal Fisher of the model at ``ctx.params`` on ``num_examples`` examples of ``ctx.task``."""
    k_data, k_labels = jax.random.split(ctx.key)
    batch = ctx.sample_batch(ctx.task, k_data, num_examples)
    if fisher == "exact":
        return imp.exact_fisher_diagonal(ctx.logits_fn, ctx.params, batch, chunk_size=chunk_size)
    if fisher == "true":
        return imp.true_fisher_diagonal(ctx.logits_fn, ctx.params, batch, k_labels,
                                        chunk_size=chunk_size)
    return imp.empirical_fisher_diagonal(ctx.logits_fn, ctx.params, batch, chunk_size=chunk_size)


def _with_penalty(hparams, base, name):
    return optax.chain(transforms.quadratic_penalty(strength=get_hparam(hparams, "strength", name)),
                       base)


def ewc(*, fisher: str = "exact", num_examples: int = 1024, chunk_size: int = 256) -> Method:
    """EWC (Kirkpatrick et al. 2017, eq. 3): (λ/2) Σ_{past j} Σ_i F_{j,i} (θ_i − θ*_{j,i})²."""
    _check_options(fisher, num_examples, chunk_size)

    def end_task(ctx):
        F = fisher_on_task(ctx, fisher=fisher, num_examples=num_examples, chunk_size=chunk_size)
        return transforms.consolidate(ctx.opt_state, ctx.params, F, mode="multi_task")

    return Method("ewc", lambda h, b: _with_penalty(h, b, "ewc"), current_task_only, end_task,
                  default_hparams={"strength": 1e4})


def online_ewc(*, fisher: str = "exact", num_examples: int = 1024,
               chunk_size: int = 256) -> Method:
    """Online EWC (Schwarz et al. 2018): F̂_t = γF̂_{t−1} + F_t, penalty anchored at θ*_{t}."""
    _check_options(fisher, num_examples, chunk_size)

    def end_task(ctx):
        F = fisher_on_task(ctx, fisher=fisher, num_examples=num_examples, chunk_size=chunk_size)
        return transforms.consolidate(ctx.opt_state, ctx.params, F, mode="online",
                                      decay=get_hparam(ctx.hparams, "decay", "online_ewc"))

    return Method("online_ewc", lambda h, b: _with_penalty(h, b, "online_ewc"), current_task_only,
                  end_task, default_hparams={"strength": 1e4, "decay": 1.0})


def mas(*, num_examples: int = 1024, chunk_size: int = 256) -> Method:
    """MAS (Aljundi et al. 2018, eq. 2–4), importances accumulated (summed) over tasks."""
    _check_options("exact", num_examples, chunk_size)

    def end_task(ctx):
        batch = ctx.sample_batch(ctx.task, ctx.key, num_examples)
        omega = imp.mas_importance(ctx.logits_fn, ctx.params, batch, chunk_size=chunk_size)
        return transforms.consolidate(ctx.opt_state, ctx.params, omega, mode="online")

    return Method("mas", lambda h, b: _with_penalty(h, b, "mas"), current_task_only, end_task,
                  default_hparams={"strength": 1.0})


def l2() -> Method:
    """L2 to the previous task's solution: Ω = 1 (the baseline of Hsu et al. 2018)."""

    def end_task(ctx):
        return transforms.consolidate(ctx.opt_state, ctx.params, None, mode="replace")

    return Method("l2", lambda h, b: _with_penalty(h, b, "l2"), current_task_only, end_task,
                  default_hparams={"strength": 1e-2})


class TaskStartState(NamedTuple):
    """θ at the start of the current task (SI's Δθ reference)."""

    params: Params


def _remember_start() -> optax.GradientTransformation:
    """A pass-through transform whose state holds the parameters at the start of the task."""
    return optax.GradientTransformation(lambda params: TaskStartState(params),
                                        lambda updates, state, params=None: (updates, state))


def si(*, clip_negative: bool = True) -> Method:
    """SI (Zenke et al. 2017, eq. 4–5) with the path integral accumulated inside the jitted step.

    The optimizer is ``with_path_integral(chain(quadratic_penalty, base))`` plus the task-start
    parameters: ω receives the *unregularised task gradient* (the gradient entering the chain,
    as in the authors' code) and the update actually applied (after the penalty and Adam). At a
    boundary Ω ← Ω + max(ω/(Δθ² + ξ), 0), ω ← 0 (see :func:`cljax.importance.si_importance`).
    """

    def make_optimizer(hparams, base):
        inner = optax.chain(transforms.quadratic_penalty(
            strength=get_hparam(hparams, "strength", "si")), base)
        return optax.chain(_remember_start(), imp.with_path_integral(inner))

    def end_task(ctx):
        start, wrapped = ctx.opt_state
        omega = imp.get_path_integral(wrapped)
        delta = jax.tree.map(jnp.subtract, ctx.params, start.params)
        contribution = imp.si_importance(omega, delta, xi=get_hparam(ctx.hparams, "xi", "si"),
                                         clip_negative=clip_negative)
        wrapped = transforms.consolidate(wrapped, ctx.params, contribution, mode="online")
        return (TaskStartState(ctx.params), imp.reset_path_integral(wrapped))

    return Method("si", make_optimizer, current_task_only, end_task,
                  default_hparams={"strength": 1.0, "xi": 0.1})


__all__ = ["FISHERS", "fisher_on_task", "ewc", "online_ewc", "mas", "l2", "si", "TaskStartState"]
