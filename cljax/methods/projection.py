"""Gradient-projection methods — RGO, RGO-2, GPM, OGD — as recipes on the method protocol.

Each keeps its per-layer (RGO, GPM) or parameter-space (OGD) matrices in the method state with
shapes fixed for the stream and hands them to its optax transform (first in the chain, before the
base optimizer: plain SGD in their papers) as an extra argument:

* :func:`rgo` (Liu & Liu 2022): per-step mean layer inputs update H̄⁻¹ recursively (in
  ``after_step``), the projection P = dim/tr(H̄⁻¹)·H̄⁻¹ is frozen at each boundary and multiplies
  the weight gradients inside the backward pass; the model gets RGO's feature encoding layer
  (``Method.model``: :class:`cljax.nn.fel.FeatureEncoding` after each hidden layer);
  :func:`rgo2` is the same without it. See :mod:`cljax.transforms.rgo` for our reading.
* :func:`gpm` (Saha et al. 2021): at each boundary the layer inputs of ``num_examples`` examples
  of the task grow per-layer bases (energy thresholds per layer, + ``threshold_increment`` per
  task); gradients lose their component in the bases' span.
* :func:`ogd` (Farajtabar et al. 2020, OGD-GTL): at each boundary the gradients of the true
  class's logit at ``per_task`` examples join a store (Dense layers factored as rows ⊗
  cotangents, :mod:`cljax.transforms.ogd`); gradients lose their component in its span (under
  plain SGD, ``deferred=True`` keeps that component as coefficients folded in at boundaries).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.layers import capture_rows, with_weight_offsets
from cljax.methods.base import ConfigPlan, Method, base_model, cross_entropy, get_hparam, task_loss
from cljax.nn.model import rebuild
from cljax.transforms.gpm import (
    FIRST_TASK_RANKS,
    gpm_consolidate,
    gpm_projection,
    gpm_value_and_grad,
    init_gpm,
)
from cljax.transforms.ogd import (
    OGDState,
    ground_truth_gradients,
    init_ogd,
    ogd_consolidate,
    ogd_deferred_value_and_grad,
    ogd_fold,
    ogd_projection,
    ogd_value_and_grad,
    ogd_weight_offsets,
    update_scale,
)
from cljax.transforms.rgo import (
    OTHER_PARAMS,
    ROWS,
    SCALES,
    init_rgo,
    rgo_accumulate,
    rgo_consolidate,
    rgo_projection,
    rgo_value_and_grad,
    step_rows,
)
from cljax.types import Array
from cljax.validation import check_choice, check_in_unit_interval, check_positive_int


def _loss_with_rows(rows: str):
    """Fine-tuning's loss (same key use) and each layer's rows of the forward pass
    (``rows``: :data:`cljax.transforms.rgo.ROWS`)."""
    def loss(params, batch, mstate, ctx):
        del mstate
        k_drop, _ = jax.random.split(ctx.key)
        logits, captured = capture_rows(ctx.model.train_logits_fn, params, batch, k_drop)
        return cross_entropy(logits, batch["y"]), {"rows": step_rows(captured, rows)}

    return loss


def rgo(*, feature_encoding: bool = True, fused_gradient: bool = True, rows: str = "step",
        other_params: str = "train", scale: str = "trace") -> Method:
    """RGO (Liu & Liu 2022, ICLR): recursive gradient optimisation, hyperparameter ``alpha``
    (α of H̄ = Σ H + αI, 1 in the paper). ``fused_gradient`` (default) forms P∇W̄ inside the
    backward pass (:func:`cljax.transforms.rgo_value_and_grad`); False projects the finished
    gradient (:func:`cljax.transforms.rgo_projection`), the same step to rounding. ``rows``
    (:data:`cljax.transforms.rgo.ROWS`): what a step adds to H̄, its mean layer input
    (``"step"``, appendix B.1), each example's (``"example"``) or the step's input second
    moment (``"moment"``, the K-FAC A factor); ``other_params``
    (:data:`cljax.transforms.rgo.OTHER_PARAMS`): whether the parameters outside the projected
    layers (BatchNorm's) keep training after the first task (``"train"``) or stop
    (``"freeze"``, GPM's code); ``scale`` (:data:`cljax.transforms.rgo.SCALES`): P = dim/tr(Q)·Q
    (``"trace"``, eq. 10) or α Q (``"alpha"``, OWM's projector, no learning rate handed from
    the shut directions to the others)."""
    if not isinstance(fused_gradient, bool) or not isinstance(feature_encoding, bool):
        raise TypeError("feature_encoding and fused_gradient must be bools")
    check_choice(rows, ROWS, name="rows")
    check_choice(other_params, OTHER_PARAMS, name="other_params")
    check_choice(scale, SCALES, name="scale")
    name = "rgo" if feature_encoding else "rgo2"

    def init(params, key, hparams, spec):
        del key, spec
        return init_rgo(params, alpha=get_hparam(hparams, "alpha", name),
                        moment=rows == "moment")

    def value_and_grad(loss, params, mstate, ctx):
        del ctx   # the fused path captures the rows itself (its interceptor runs first)
        (value, _), grads, step_rows = rgo_value_and_grad(
            loss, mstate, params, has_aux=True, rows=rows, other_params=other_params)
        return (value, {"rows": step_rows}), grads

    return Method(
        name,
        make_optimizer=(lambda h, base: base) if fused_gradient else
        (lambda h, base: optax.chain(rgo_projection(other_params=other_params), base)),
        init=init, loss=task_loss if fused_gradient else _loss_with_rows(rows),
        optimizer_args=(lambda p, b, m, c: {}) if fused_gradient else
        (lambda p, b, m, c: {"rgo_state": m}),
        after_step=lambda info: info.keep_params(rgo_accumulate(info.mstate, info.aux["rows"])),
        end_task=lambda ctx: (ctx.params, ctx.opt_state, rgo_consolidate(
            ctx.mstate, scale=scale, alpha=get_hparam(ctx.hparams, "alpha", name))),
        value_and_grad=value_and_grad if fused_gradient else None,
        default_hparams={"alpha": 1.0}, hparam_domains={"alpha": "positive"},
        model=(lambda base, spec: rebuild(base, feature_encoding=spec.num_tasks))
        if feature_encoding else base_model)


def rgo2(*, fused_gradient: bool = True, rows: str = "step", other_params: str = "train",
         scale: str = "trace") -> Method:
    """RGO-2: RGO without the feature encoding layer (Liu & Liu 2022)."""
    return rgo(feature_encoding=False, fused_gradient=fused_gradient, rows=rows,
               other_params=other_params, scale=scale)


def gpm(*, thresholds: Sequence[float] = (0.95, 0.99, 0.99), threshold_increment: float = 0.0,
        num_examples: int = 300, fused_gradient: bool = True,
        first_task_rank: str = "eq5") -> Method:
    """GPM (Saha et al. 2021): ``thresholds`` per layer in order (one value: every layer; the
    paper's permuted MNIST: 0.95, 0.99, 0.99), plus ``threshold_increment`` × task (their CIFAR
    schedule: 0.97 + 0.003·t), capped at 1; ``num_examples`` examples of each task build its
    representation matrices (300 for MNIST, 125 for CIFAR). ``fused_gradient`` (default): the
    projection inside the backward pass (:func:`cljax.transforms.gpm_value_and_grad`).
    ``first_task_rank``: ``"eq5"`` (the paper) or ``"code"`` (their code keeps one singular
    vector fewer per layer after the first task; :data:`cljax.transforms.gpm.FIRST_TASK_RANKS`)."""
    if not isinstance(fused_gradient, bool):
        raise TypeError(f"fused_gradient must be a bool; got {type(fused_gradient).__name__}")
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise TypeError(f"thresholds must be a list of energy thresholds in (0, 1], one per "
                        f"layer or one for every layer (e.g. thresholds=[{thresholds!r}]); got "
                        f"{thresholds!r} ({type(thresholds).__name__})")
    for i, t in enumerate(thresholds):
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            raise TypeError(f"thresholds[{i}] must be a number in (0, 1]; got {t!r}")
    thresholds = tuple(float(t) for t in thresholds)
    for i, t in enumerate(thresholds):
        check_in_unit_interval(t, name=f"thresholds[{i}]")
    if not thresholds:
        raise ValueError("thresholds must name at least one value")
    check_in_unit_interval(threshold_increment, name="threshold_increment", closed_left=True)
    check_positive_int(num_examples, name="num_examples")
    check_choice(first_task_rank, FIRST_TASK_RANKS, name="first_task_rank")

    def per_layer(names, task):
        if len(thresholds) not in (1, len(names)):
            raise ValueError(f"gpm has {len(thresholds)} thresholds for the model's "
                             f"{len(names)} layers {names}: give one, or one per layer")
        values = thresholds * len(names) if len(thresholds) == 1 else thresholds
        return {n: jnp.minimum(v + threshold_increment * task, 1.0) for n, v in zip(names, values)}

    def end_task(ctx):
        batch = ctx.sample_batch(ctx.task, ctx.key, num_examples)
        _, rows = capture_rows(ctx.model.logits_fn, ctx.params, batch)
        reps = {n: jnp.concatenate([r.reshape(-1, r.shape[-1]) for r in rs])
                for n, rs in rows.items() if n in ctx.mstate.bases}
        new = gpm_consolidate(ctx.mstate, reps, per_layer(list(ctx.mstate.bases), ctx.task),
                              first_task_rank=first_task_rank)
        return ctx.params, ctx.opt_state, new

    def value_and_grad(loss, params, mstate, ctx):
        del ctx
        return gpm_value_and_grad(loss, mstate, params, has_aux=True)

    return Method("gpm", make_optimizer=(lambda h, base: base) if fused_gradient else
                  (lambda h, base: optax.chain(gpm_projection(), base)),
                  init=lambda params, key, hparams, spec: init_gpm(params),
                  optimizer_args=(lambda p, b, m, c: {}) if fused_gradient else
                  (lambda p, b, m, c: {"gpm_state": m}), end_task=end_task,
                  value_and_grad=value_and_grad if fused_gradient else None)


class DeferredOGDState(NamedTuple):
    """:func:`ogd` with ``deferred=True``: the store, the deferred coefficients a (the weights
    are params + G_f a, :func:`cljax.transforms.ogd_fold`; zero after each boundary's fold) and
    the count of steps whose base update was not a multiple of the gradient (an error at the
    task's end)."""

    store: OGDState
    coefficients: Array
    not_sgd_steps: Array


def plain_sgd(optimizer: Mapping[str, Any]) -> bool:
    """Whether a config's ``optimizer`` entry is plain SGD: ``optax.sgd`` without momentum (a
    learning-rate schedule, ``task_decay``, is fine): the only base optimizer whose update is a
    multiple of the gradient."""
    return optimizer.get("name") == "sgd" and not optimizer.get("momentum")


def _check_deferred(plan: ConfigPlan) -> None:
    """``ogd(deferred=True)``'s ``Method.check``: the config's optimizer is plain SGD."""
    if not plain_sgd(plan.optimizer):
        options = {k: v for k, v in plan.optimizer.items() if k != "learning_rate"}
        raise ValueError(f"ogd(deferred=True) is OGD only under plain SGD (optax.sgd without "
                         f"momentum; a learning-rate schedule is fine); the config's optimizer "
                         f"is {options}: set optimizer.name='sgd' without momentum, or use "
                         f"deferred=False")


def _raise_if_not_sgd(count) -> None:
    if int(count) > 0:
        raise ValueError(f"ogd(deferred=True): {int(count)} steps of this task had a base "
                         f"optimizer update that is not a multiple of the gradient; the deferred "
                         f"update is OGD only under plain SGD (optax.sgd without momentum or "
                         f"weight decay, any learning-rate schedule): use deferred=False")


def ogd(*, per_task: int = 200, factored: bool = True, fused_gradient: bool = True,
        deferred: bool = False) -> Method:
    """OGD-GTL (Farajtabar et al. 2020): at each boundary the gradients of the true class's logit
    at ``per_task`` examples of the task (drawn uniformly) join the store of
    ``per_task × number of tasks`` directions (never exhausted), one block per task.
    ``factored`` keeps the Dense layers as per-example rows ⊗ cotangents
    (:mod:`cljax.transforms.ogd`); False stores every parameter densely (the same span, ≈ 75×
    the memory on an MLP). ``fused_gradient`` (default) forms the projection's dot products from
    the batch's layer rows and cotangents (:func:`cljax.transforms.ogd_value_and_grad`); False
    projects the finished gradient (:func:`cljax.transforms.ogd_projection`), the same step to
    rounding. ``deferred`` (plain SGD only, factored and fused): the factored layers' projection
    is kept as coefficients of the stored directions and written into the weights at each task's
    end (:func:`cljax.transforms.ogd_deferred_value_and_grad`): the same steps to rounding, at
    a fraction of the multiply-adds; evaluation and checkpoints mid-task see the same weights
    (``predict`` adds the deferred part). The learning rate is read from each step's update; a
    config whose optimizer is not plain SGD is refused before any data is loaded
    (``Method.check``), and a base optimizer whose update is not a multiple of its gradient
    fails at the task's end."""
    check_positive_int(per_task, name="per_task")
    if not all(isinstance(v, bool) for v in (factored, fused_gradient, deferred)):
        raise TypeError(f"factored, fused_gradient and deferred must be bools; got {factored!r}, "
                        f"{fused_gradient!r}, {deferred!r}")
    if deferred and not (factored and fused_gradient):
        raise ValueError("ogd(deferred=True) defers the factored layers' projection inside the "
                         "fused gradient: it needs factored=True and fused_gradient=True")
    if deferred:
        return _deferred_ogd(per_task)

    def init(params, key, hparams, spec):
        del key, hparams
        return init_ogd(params, capacity=per_task * spec.num_tasks, block=per_task,
                        factored_layers=None if factored else ())

    def end_task(ctx):
        batch = ctx.sample_batch(ctx.task, ctx.key, per_task)
        directions = ground_truth_gradients(ctx.model.logits_fn, ctx.params, batch, ctx.mstate)
        return ctx.params, ctx.opt_state, ogd_consolidate(ctx.mstate, directions)

    def value_and_grad(loss, params, mstate, ctx):
        del ctx
        return ogd_value_and_grad(loss, mstate, params, has_aux=True)

    if fused_gradient:
        return Method("ogd", make_optimizer=lambda h, base: base, init=init,
                      optimizer_args=lambda p, b, m, c: {}, end_task=end_task,
                      value_and_grad=value_and_grad)
    return Method("ogd", make_optimizer=lambda h, base: optax.chain(ogd_projection(), base),
                  init=init, optimizer_args=lambda p, b, m, c: {"ogd_state": m},
                  end_task=end_task)


def _deferred_ogd(per_task: int) -> Method:
    def init(params, key, hparams, spec):
        del key, hparams
        store = init_ogd(params, capacity=per_task * spec.num_tasks, block=per_task)
        return DeferredOGDState(store, jnp.zeros(store.pinv.shape[:1], store.pinv.dtype),
                                jnp.zeros((), jnp.int32))

    def value_and_grad(loss, params, mstate, ctx):
        del ctx
        (value, aux), grads, coef = ogd_deferred_value_and_grad(
            loss, mstate.store, mstate.coefficients, params, has_aux=True)
        return (value, {"loss_aux": aux, "coef": coef}), grads

    def after_step(info):
        m = info.mstate
        scale, ok = update_scale(info.grads, info.updates)   # SGD: updates = −η·grads
        coefficients = m.coefficients - scale.astype(m.coefficients.dtype) * info.aux["coef"]
        return info.keep_params(DeferredOGDState(m.store, coefficients,
                                                 m.not_sgd_steps + (~ok).astype(jnp.int32)))

    def end_task(ctx):
        m = ctx.mstate
        jax.debug.callback(_raise_if_not_sgd, m.not_sgd_steps)
        params = ogd_fold(ctx.params, m.store, m.coefficients)
        batch = ctx.sample_batch(ctx.task, ctx.key, per_task)
        store = ogd_consolidate(m.store, ground_truth_gradients(ctx.model.logits_fn, params,
                                                                batch, m.store))
        return params, ctx.opt_state, DeferredOGDState(store, jnp.zeros_like(m.coefficients),
                                                       m.not_sgd_steps)

    def predict(params, mstate, batch, ctx):
        return with_weight_offsets(ctx.model.logits_fn, params, batch, weight_offsets=
                                   ogd_weight_offsets(mstate.store, mstate.coefficients))

    return Method("ogd", init=init, value_and_grad=value_and_grad, after_step=after_step,
                  end_task=end_task, predict=predict, check=_check_deferred)


__all__ = ["rgo", "rgo2", "gpm", "ogd", "DeferredOGDState", "plain_sgd"]
