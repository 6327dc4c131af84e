"""Quadratic-penalty methods: EWC, online EWC, SI, MAS and L2 as recipes for ``run_stream``.

All five add ``λ·Ω⊙(θ − θ*)`` to the loss gradient *before* the base optimizer
(:func:`cljax.transforms.quadratic_penalty` first in the chain over a diagonal curvature, as the
papers add the penalty to the loss; ``kfac_ewc`` in :mod:`cljax.methods.natural` is the same
transform over K-FAC factors) and differ only in the importance Ω and how a task boundary folds
it in:

==========  =====================================================  ===============================
method      Ω_t at the end of task t                                 boundary (``consolidate``)
==========  =====================================================  ===============================
ewc         diagonal Fisher on task t's data (Kirkpatrick 2017)     one penalty per task (exact fold)
online_ewc  diagonal Fisher (Schwarz et al. 2018)                   Ω ← γΩ + Ω_t, anchor θ*_t
si          ω/(Δθ² + ξ), path integral (Zenke et al. 2017)          Ω ← Ω + Ω_t (clipped at 0)
mas         mean :math:`|∂‖f(x)‖²/∂θ|` (Aljundi et al. 2018)        Ω ← Ω + Ω_t
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

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import importance as imp
from cljax import transforms
from cljax.methods.base import BoundaryContext, Method, StepInfo, get_hparam
from cljax.transforms.penalty import ConsolidateMode
from cljax.types import Params
from cljax.validation import check_choice, check_in_unit_interval, check_positive_int

FISHERS = ("exact", "true", "empirical", "argmax")


def check_estimator_options(fisher: str, num_examples: int, chunk_size: int,
                            fishers: tuple[str, ...] = FISHERS) -> None:
    """The static options shared by the methods that estimate a curvature at a boundary."""
    check_choice(fisher, fishers, name="fisher")
    check_positive_int(num_examples, name="num_examples")
    check_positive_int(chunk_size, name="chunk_size")


def fisher_on_task(ctx: BoundaryContext, *, fisher: str, num_examples: int,
                   chunk_size: int) -> Params:
    """Diagonal Fisher of the model at ``ctx.params`` on ``num_examples`` examples of ``ctx.task``."""
    k_data, k_labels = jax.random.split(ctx.key)
    batch = ctx.sample_batch(ctx.task, k_data, num_examples)
    opts: dict[str, Any] = dict(chunk_size=chunk_size, sharding=ctx.examples_sharding)
    if fisher == "exact":
        return imp.exact_fisher_diagonal(ctx.logits_fn, ctx.params, batch, **opts)
    if fisher == "true":
        return imp.true_fisher_diagonal(ctx.logits_fn, ctx.params, batch, k_labels, **opts)
    if fisher == "argmax":
        return imp.argmax_fisher_diagonal(ctx.logits_fn, ctx.params, batch, **opts)
    return imp.empirical_fisher_diagonal(ctx.logits_fn, ctx.params, batch, **opts)


def _penalty_optimizer(name: str):
    def make_optimizer(hparams, base):
        return optax.chain(transforms.quadratic_penalty(
            strength=get_hparam(hparams, "strength", name)), base)
    return make_optimizer


def _penalty_field_args(params, batch, mstate, ctx):
    """The penalty of a method state that keeps it in a ``penalty`` field (SI, running-Fisher
    EWC, RWalk), handed to the chain's ``quadratic_penalty``."""
    del params, batch, ctx
    return {"penalty_state": mstate.penalty}


def _penalty_state(params, key, hparams, spec):
    del key, hparams, spec
    return transforms.init_penalty(params)


def _penalty_args(params, batch, mstate, ctx):
    del params, batch, ctx
    return {"penalty_state": mstate}


def penalty_method(name: str, importance_fn: Callable[[BoundaryContext], Any], *,
                   mode: ConsolidateMode,
                   defaults: dict, decay: str | None = None) -> Method:
    """A quadratic-penalty method: ``λ Ω ⊙ (θ − θ*)`` before the base optimizer, the penalty in
    the method state, and at each boundary ``consolidate(penalty, θ*_t, importance_fn(ctx),
    mode=mode, decay=hparams[decay] or 1)`` (:func:`cljax.transforms.consolidate`)."""

    def end_task(ctx):
        gamma = get_hparam(ctx.hparams, decay, name) if decay else 1.0
        penalty = transforms.consolidate(ctx.mstate, ctx.params, importance_fn(ctx), mode=mode,
                                         decay=gamma)
        return ctx.params, ctx.opt_state, penalty

    return Method(name, make_optimizer=_penalty_optimizer(name), init=_penalty_state,
                  optimizer_args=_penalty_args, end_task=end_task, default_hparams=defaults,
                  hparam_domains={decay: "unit_interval"} if decay else {})


EWC_FISHERS = FISHERS + ("running",)
"""EWC's Fisher estimators: :data:`FISHERS` at the task's end, or ``"running"``, RWalk's running
Fisher kept during training (:mod:`cljax.importance.running_fisher`)."""

EWC_ACCUMULATIONS: dict[str, ConsolidateMode] = {"per_task": "multi_task", "latest": "replace"}
"""How EWC keeps the tasks' penalties: ``"per_task"``, one penalty per finished task (the paper,
eq. 3); ``"latest"``, only the last task's Fisher and anchor (A-GEM's code replaces its Fisher
and θ* at every task)."""

FISHER_NORMALIZATIONS = ("none", "minmax")
"""``"minmax"``: each task's Fisher rescaled to [0, 1] over all parameters together
(:func:`cljax.importance.minmax_normalize`, A-GEM's and RWalk's code) before it joins the
penalty."""


def ewc(*, fisher: str = "exact", num_examples: int = 1024, chunk_size: int = 256,
        accumulate: str = "per_task", normalize: str = "none", fisher_window: int = 50,
        fisher_decay: float = 0.9) -> Method:
    """EWC (Kirkpatrick et al. 2017, eq. 3): (λ/2) Σ_{past j} Σ_i F_{j,i} (θ_i − θ*_{j,i})².

    ``fisher`` picks the estimator (:data:`EWC_FISHERS`): at the task's end on ``num_examples``
    of its examples, or ``"running"`` — the squared minibatch gradients of training in windows
    of ``fisher_window`` steps folded into an average of weight ``fisher_decay``
    (:func:`cljax.importance.update_running_fisher`). ``accumulate`` (:data:`EWC_ACCUMULATIONS`)
    and ``normalize`` (:data:`FISHER_NORMALIZATIONS`) as named. With ``fisher="running"``,
    ``accumulate="latest"``, ``normalize="minmax"`` and strength 2λ: EWC as A-GEM's code runs it
    (Chaudhry et al. 2019, facebookresearch/agem ``model.py``: penalty λ Σ F̂ Δθ², window 50,
    decay 0.9).
    """
    check_choice(fisher, EWC_FISHERS, name="fisher")
    check_estimator_options("exact" if fisher == "running" else fisher, num_examples,
                            chunk_size)
    check_choice(accumulate, sorted(EWC_ACCUMULATIONS), name="accumulate")
    check_choice(normalize, FISHER_NORMALIZATIONS, name="normalize")
    check_positive_int(fisher_window, name="fisher_window")
    check_in_unit_interval(fisher_decay, name="fisher_decay", scalar=True)
    scale = imp.minmax_normalize if normalize == "minmax" else (lambda f: f)
    mode = EWC_ACCUMULATIONS[accumulate]
    if fisher == "running":
        return _running_fisher_ewc(mode, scale, fisher_window, fisher_decay)
    return penalty_method("ewc", lambda ctx: scale(fisher_on_task(
        ctx, fisher=fisher, num_examples=num_examples, chunk_size=chunk_size)),
        mode=mode, defaults={"strength": 1e4})


class RunningFisherEWCState(NamedTuple):
    """EWC's method state with a running Fisher: the penalty and the running Fisher
    (:class:`cljax.importance.RunningFisherState`), whose average no task boundary resets (its
    window sum restarts with each task)."""

    penalty: transforms.QuadraticPenaltyState
    fisher: imp.RunningFisherState


def _running_fisher_ewc(mode: ConsolidateMode, scale: Callable[[Params], Params], window: int,
                        decay: float) -> Method:
    """EWC whose Fisher is RWalk's running Fisher of the training steps (:func:`ewc`)."""

    def init(params, key, hparams, spec):
        del key, hparams, spec
        return RunningFisherEWCState(transforms.init_penalty(params),
                                     imp.init_running_fisher(params))

    def after_step(info: StepInfo):
        s: RunningFisherEWCState = info.mstate
        fisher = imp.update_running_fisher(s.fisher, info.grads, info.clock.task_step,
                                           window=window, decay=decay)
        return info.keep_params(s._replace(fisher=fisher))

    def end_task(ctx):      # the window restarts with the task (their reset_tmp_fisher)
        s: RunningFisherEWCState = ctx.mstate
        penalty = transforms.consolidate(s.penalty, ctx.params, scale(s.fisher.running), mode=mode)
        return ctx.params, ctx.opt_state, RunningFisherEWCState(penalty,
                                                                imp.restart_window(s.fisher))

    return Method("ewc", make_optimizer=_penalty_optimizer("ewc"), init=init,
                  optimizer_args=_penalty_field_args,
                  after_step=after_step, end_task=end_task, default_hparams={"strength": 1e4})


class RWalkState(NamedTuple):
    """RWalk's method state: the penalty, the running Fisher, the task's score
    (:class:`cljax.importance.RWalkScoreState`) and the importance S kept over tasks."""

    penalty: transforms.QuadraticPenaltyState
    fisher: imp.RunningFisherState
    score: imp.RWalkScoreState
    importance: Params


def rwalk(*, fisher_window: int = 50, fisher_decay: float = 0.9,
          importance_fold: str = "agem_code") -> Method:
    """RWalk (Chaudhry et al. 2018) as A-GEM's code runs it: (λ/2) Σ_i (F̂_i + Ŝ_i)(θ_i − θ*_i)²
    with F̂ the running Fisher (:func:`cljax.importance.update_running_fisher`, its window sum
    kept over the task) and Ŝ the kept RWalk score (:mod:`cljax.importance.rwalk`), each
    min–max rescaled to [0, 1], anchored at the last task's end. Every ``fisher_window`` steps,
    before the step, the window's path integral joins the task's score over the running Fisher
    and the Fisher folds; at a boundary the score joins S (``importance_fold``,
    :data:`cljax.importance.RWALK_IMPORTANCE_FOLDS`). Hyperparameters ``strength`` (their
    λ Σ (F̂ + Ŝ) Δθ² is strength 2λ) and ``xi`` (ξ, their 1e-3)."""
    check_positive_int(fisher_window, name="fisher_window")
    check_in_unit_interval(fisher_decay, name="fisher_decay", scalar=True)
    check_choice(importance_fold, imp.RWALK_IMPORTANCE_FOLDS, name="importance_fold")

    def init(params, key, hparams, spec):
        del key, hparams, spec
        return RWalkState(transforms.init_penalty(params), imp.init_running_fisher(params),
                          imp.init_rwalk_score(params),
                          optax.tree_utils.tree_zeros_like(params))

    def after_step(info: StepInfo):
        s: RWalkState = info.mstate
        before = jax.tree.map(jnp.subtract, info.params, info.updates)
        fold = imp.is_fold_step(info.clock.task_step, fisher_window)
        folded = imp.fold_rwalk_score(s.score, s.fisher.running, before,
                                      xi=get_hparam(info.hparams, "xi", "rwalk"))
        score = jax.tree.map(lambda a, b: jnp.where(fold, a, b), folded, s.score)
        fisher = imp.update_running_fisher(s.fisher, info.grads, info.clock.task_step,
                                           window=fisher_window, decay=fisher_decay,
                                           reset_window=False)
        score = score._replace(omega=imp.accumulate_path_integral(score.omega, info.grads,
                                                                  info.updates))
        return info.keep_params(s._replace(fisher=fisher, score=score))

    def end_task(ctx):
        s: RWalkState = ctx.mstate
        importance = imp.fold_rwalk_importance(s.importance, s.score.score, ctx.task == 0,
                                               fold=importance_fold)
        omega = jax.tree.map(jnp.add, imp.minmax_normalize(s.fisher.running),
                             imp.minmax_normalize(importance))
        penalty = transforms.consolidate(s.penalty, ctx.params, omega, mode="replace")
        return ctx.params, ctx.opt_state, RWalkState(penalty, imp.restart_window(s.fisher),
                                                     imp.init_rwalk_score(ctx.params), importance)

    return Method("rwalk", make_optimizer=_penalty_optimizer("rwalk"), init=init,
                  optimizer_args=_penalty_field_args,
                  after_step=after_step, end_task=end_task,
                  default_hparams={"strength": 2.0, "xi": 1e-3},
                  hparam_domains={"xi": "positive"})


def online_ewc(*, fisher: str = "exact", num_examples: int = 1024,
               chunk_size: int = 256) -> Method:
    """Online EWC (Schwarz et al. 2018): F̂_t = γF̂_{t−1} + F_t, penalty anchored at θ*_{t}."""
    check_estimator_options(fisher, num_examples, chunk_size)
    return penalty_method("online_ewc", lambda ctx: fisher_on_task(
        ctx, fisher=fisher, num_examples=num_examples, chunk_size=chunk_size),
        mode="online", decay="decay", defaults={"strength": 1e4, "decay": 1.0})


MAS_ACCUMULATIONS: dict[str, ConsolidateMode] = {"sum": "online", "latest": "replace"}
"""How MAS folds each task's importance into the penalty: ``"sum"``, Ω ← Ω + Ω_t (the paper);
``"latest"``, Ω ← Ω_t (A-GEM's code resets its importance at every task), each anchored at the
task's end."""


def mas(*, num_examples: int = 1024, chunk_size: int = 256, group_size: int = 1,
        accumulate: str = "sum") -> Method:
    """MAS (Aljundi et al. 2018, eq. 2–4): (λ/2) Σ_i Ω_i (θ_i − θ*_i)² with Ω the importance of
    :func:`cljax.importance.mas_importance` on ``num_examples`` examples of each task.
    ``group_size`` g > 1 takes the absolute value of each group of g examples' summed gradient
    and ``accumulate="latest"`` keeps only the last task's Ω (:data:`MAS_ACCUMULATIONS`): with
    g = 10, the task's training set and strength 2λ, MAS as A-GEM's code runs it (their
    penalty λ Σ Ω Δθ², Chaudhry et al. 2019, facebookresearch/agem ``model.py``)."""
    check_estimator_options("exact", num_examples, chunk_size)
    check_positive_int(group_size, name="group_size")
    if num_examples % group_size:
        raise ValueError(f"num_examples ({num_examples}) must be a multiple of group_size "
                         f"({group_size})")
    check_choice(accumulate, sorted(MAS_ACCUMULATIONS), name="accumulate")

    def omega(ctx):
        batch = ctx.sample_batch(ctx.task, ctx.key, num_examples)
        return imp.mas_importance(ctx.logits_fn, ctx.params, batch, chunk_size=chunk_size,
                                  sharding=ctx.examples_sharding, group_size=group_size)

    return penalty_method("mas", omega, mode=MAS_ACCUMULATIONS[accumulate],
                          defaults={"strength": 1.0})


def l2() -> Method:
    """L2 to the previous task's solution: Ω = 1 (the baseline of Hsu et al. 2018)."""
    return penalty_method("l2", lambda ctx: None, mode="replace", defaults={"strength": 1e-2})


class SIState(NamedTuple):
    """SI's method state: the penalty, the running path integral
    (:class:`cljax.importance.PathIntegralState`), θ at the task's start."""

    penalty: transforms.QuadraticPenaltyState
    path_integral: imp.PathIntegralState
    start: Params

    @property
    def omega(self) -> Params:
        """ω, the path integral's pytree."""
        return self.path_integral.omega


SI_PATH_GRADIENTS = ("task", "total")
"""The gradient SI's path integral ω ← ω − g·Δθ takes: ``"task"``, the unregularised task
gradient (Zenke et al.'s code); ``"total"``, the gradient of the whole loss, SI's own penalty
included (van de Ven & Tolias's code, which also keeps negative contributions:
``clip_negative=False``)."""


def si(*, clip_negative: bool = True, path_gradient: str = "task") -> Method:
    """SI (Zenke et al. 2017, eq. 4–5) with the path integral accumulated after every step.

    The optimizer is ``chain(quadratic_penalty, base)``; ω ← ω − g·Δθ receives the
    *unregularised task gradient* g (the gradient entering the chain, as in the authors' code;
    ``path_gradient="total"`` adds the penalty's gradient at the step's start, as van de Ven &
    Tolias's code, :data:`SI_PATH_GRADIENTS`) and the update actually applied Δθ (after the
    penalty and Adam). At a boundary Ω ← Ω + max(ω/(Δθ² + ξ), 0), ω ← 0 (see
    :func:`cljax.importance.si_importance`). Their penalty is c·Σ Ω(θ − θ*)² where ours is
    (λ/2)·Σ Ω(θ − θ*)²: their c is λ = 2c here.
    """
    check_choice(path_gradient, SI_PATH_GRADIENTS, name="path_gradient")

    def init(params, key, hparams, spec):
        del key, hparams, spec
        return SIState(transforms.init_penalty(params), imp.init_path_integral(params),
                       jax.tree.map(jnp.array, params))

    def after_step(info: StepInfo):
        s: SIState = info.mstate
        grads = info.grads
        if path_gradient == "total":     # + λ Ω ⊙ (θ − θ*) at θ before the step
            before = jax.tree.map(jnp.subtract, info.params, info.updates)
            tx = transforms.quadratic_penalty(strength=get_hparam(info.hparams, "strength", "si"))
            grads, _ = tx.update(grads, tx.init(before), before, penalty_state=s.penalty)
        return info.keep_params(s._replace(path_integral=imp.PathIntegralState(
            imp.accumulate_path_integral(s.omega, grads, info.updates))))

    def end_task(ctx):
        s = ctx.mstate
        delta = jax.tree.map(jnp.subtract, ctx.params, s.start)
        contribution = imp.si_importance(s.omega, delta, xi=get_hparam(ctx.hparams, "xi", "si"),
                                         clip_negative=clip_negative)
        penalty = transforms.consolidate(s.penalty, ctx.params, contribution, mode="online")
        return ctx.params, ctx.opt_state, SIState(penalty, imp.init_path_integral(s.omega),
                                                  ctx.params)

    return Method("si", make_optimizer=_penalty_optimizer("si"), init=init,
                  optimizer_args=_penalty_field_args,
                  after_step=after_step, end_task=end_task,
                  default_hparams={"strength": 1.0, "xi": 0.1}, hparam_domains={"xi": "positive"})


__all__ = ["FISHERS", "check_estimator_options", "fisher_on_task", "penalty_method", "ewc",
           "EWC_FISHERS", "EWC_ACCUMULATIONS", "FISHER_NORMALIZATIONS", "RunningFisherEWCState",
           "rwalk", "RWalkState", "online_ewc", "mas", "MAS_ACCUMULATIONS", "l2", "si", "SIState",
           "SI_PATH_GRADIENTS"]
