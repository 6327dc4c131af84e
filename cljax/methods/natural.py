"""K-FAC Laplace (Ritter et al. 2018) and NCL (Kao et al. 2021) as recipes for ``run_stream``.

* ``kfac_ewc``: the K-FAC Laplace penalty (λ/2) Σ_layers tr(ΔW̄ᵀ A ΔW̄ G) — the quadratic
  penalty :func:`cljax.transforms.quadratic_penalty` over a Kronecker-factored curvature —
  chained before the base optimizer; at each boundary the task's factors (exact Fisher by
  default: every class weighted by its probability) are combined with the earlier ones by
  :func:`cljax.transforms.consolidate` (``mode``: ``"online"`` nearest Kronecker product of
  γ·A⊗G + A_t⊗G_t, ``"sum"`` of factors, or ``"multi_task"`` exact per-task slots).
* ``ncl`` / ``ncl_kfac``: the NCL preconditioner Λ⁻¹∇ℓ + (θ − μ) followed by SGD (Adam would
  undo the preconditioning), Λ = s·ΣF + d·I with a diagonal Fisher or K-FAC factors (one
  transform, :func:`cljax.transforms.ncl`, over a diagonal or K-FAC prior); the base
  optimizer of the config is *replaced* by SGD with hyperparameter ``learning_rate`` (and static
  ``momentum``). Inverses are formed once per boundary, inside ``end_task``.

Hyperparameters (arrays, vmappable): ``strength``, ``decay`` (kfac_ewc), ``damping`` and
``learning_rate`` (NCL).
"""
from __future__ import annotations

from typing import Literal

import jax
import optax

from cljax import importance as imp
from cljax import transforms
from cljax.methods.base import Method, get_hparam
from cljax.methods.penalties import check_estimator_options, fisher_on_task

KFAC_FISHERS = ("exact", "true", "empirical")


def _kfac_on_task(ctx, fisher, num_examples, chunk_size):
    k_data, k_labels = jax.random.split(ctx.key)
    batch = ctx.sample_batch(ctx.task, k_data, num_examples)
    return imp.kfac_factors(ctx.logits_fn, ctx.params, batch, k_labels, fisher=fisher,
                            chunk_size=chunk_size, sharding=ctx.examples_sharding)


def kfac_ewc(*, mode: Literal["online", "sum", "multi_task"] = "online",
             num_slots: int | None = None, fisher: str = "exact", num_examples: int = 1024,
             chunk_size: int = 256) -> Method:
    """K-FAC Laplace penalty (Ritter et al. 2018) before the base optimizer.

    ``mode`` is how the tasks' factors are combined (:func:`cljax.transforms.consolidate`):
    ``"online"`` (nearest Kronecker product of the decayed sum, one slot), ``"sum"`` (factor
    sums, one slot) or ``"multi_task"`` (one exact slot per past task; ``num_slots`` = the
    number of tasks that will be consolidated, i.e. the stream's length, is then required).
    ``fisher`` selects the factors' labels (:func:`cljax.importance.kfac_factors`): ``"exact"``
    (default, every class weighted by p(y|x), like EWC's diagonal) or ``"true"`` (one sampled
    label per example: on a confident model G then rests on the few examples whose sampled label
    was wrong, and the penalty varies from run to run).
    """
    check_estimator_options(fisher, num_examples, chunk_size, KFAC_FISHERS)
    if mode not in ("online", "sum", "multi_task"):
        raise ValueError(f"mode must be 'online', 'sum' or 'multi_task'; got {mode!r}")
    if mode == "multi_task":
        if not isinstance(num_slots, int) or isinstance(num_slots, bool) or num_slots < 1:
            raise ValueError("mode='multi_task' keeps one slot per task: num_slots must be a "
                             f"positive int (the number of tasks); got {num_slots!r}")
    elif num_slots not in (None, 1):
        raise ValueError(f"mode={mode!r} keeps one set of factors; num_slots must be None or 1, "
                         f"got {num_slots!r}")
    slots = num_slots if mode == "multi_task" and num_slots is not None else 1   # an int there

    def make_optimizer(hparams, base):
        return optax.chain(transforms.quadratic_penalty(
            strength=get_hparam(hparams, "strength", "kfac_ewc")), base)

    def end_task(ctx):
        factors = _kfac_on_task(ctx, fisher, num_examples, chunk_size)
        decay = get_hparam(ctx.hparams, "decay", "kfac_ewc") if mode == "online" else 1.0
        return ctx.params, ctx.opt_state, transforms.consolidate(
            ctx.mstate, ctx.params, factors, mode=mode, decay=decay)

    return Method("kfac_ewc", make_optimizer=make_optimizer,
                  init=lambda params, key, hparams, spec: transforms.init_penalty(
                      params, curvature="kfac", num_slots=slots),
                  optimizer_args=lambda p, b, m, c: {"penalty_state": m},
                  end_task=end_task,
                  default_hparams={"strength": 1e5, "decay": 1.0},  # Split MNIST Task-IL best
                  hparam_domains={"decay": "unit_interval"})


NCL_DOMAINS = {"damping": "positive", "learning_rate": "positive"}
"""d > 0 (:func:`cljax.transforms.ncl_consolidate`: d = 0 gives directions without curvature an
infinite step) and η > 0."""


def _ncl_hparams(hparams, name):
    return dict(strength=get_hparam(hparams, "strength", name),
                damping=get_hparam(hparams, "damping", name))


def ncl(*, fisher: str = "exact", num_examples: int = 1024, chunk_size: int = 256,
        momentum: float | None = 0.9) -> Method:
    """Diagonal NCL (Kao et al. 2021): θ ← θ − η[Λ⁻¹∇ℓ_t + (θ − μ)], Λ = s·ΣF + d·I, with SGD."""
    check_estimator_options(fisher, num_examples, chunk_size)

    def make_optimizer(hparams, base):
        del base
        return transforms.ncl(get_hparam(hparams, "learning_rate", "ncl"), momentum=momentum)

    def end_task(ctx):
        F = fisher_on_task(ctx, fisher=fisher, num_examples=num_examples, chunk_size=chunk_size)
        return ctx.params, ctx.opt_state, transforms.ncl_consolidate(
            ctx.mstate, ctx.params, F, **_ncl_hparams(ctx.hparams, "ncl"))

    return Method("ncl", make_optimizer=make_optimizer,
                  init=lambda params, key, hparams, spec: transforms.init_ncl(params),
                  optimizer_args=lambda p, b, m, c: {"ncl_state": m}, end_task=end_task,
                  default_hparams={"strength": 1e3, "damping": 1.0, "learning_rate": 0.05},
                  hparam_domains=NCL_DOMAINS)


def ncl_kfac(*, fisher: str = "exact", num_examples: int = 1024, chunk_size: int = 256,
             momentum: float | None = 0.9, fused_gradient: bool = True) -> Method:
    """K-FAC NCL (Kao et al. 2021): Λ per layer from K-FAC factors (``fisher`` as in
    :func:`kfac_ewc`), then SGD.

    ``fused_gradient`` (default): Λ⁻¹∇ℓ is formed inside the backward pass from each dense
    layer's inputs and output cotangents (:func:`cljax.transforms.ncl_kfac_value_and_grad`),
    ≈ 2× faster than preconditioning the finished gradient (False; same step to rounding).
    """
    check_estimator_options(fisher, num_examples, chunk_size, KFAC_FISHERS)
    if not isinstance(fused_gradient, bool):
        raise TypeError(f"fused_gradient must be a bool; got {type(fused_gradient).__name__}")

    def make_optimizer(hparams, base):
        del base
        return transforms.ncl(get_hparam(hparams, "learning_rate", "ncl_kfac"),
                              momentum=momentum, preconditioned_gradients=fused_gradient)

    def end_task(ctx):
        factors = _kfac_on_task(ctx, fisher, num_examples, chunk_size)
        return ctx.params, ctx.opt_state, transforms.ncl_consolidate(
            ctx.mstate, ctx.params, factors, **_ncl_hparams(ctx.hparams, "ncl_kfac"))

    def value_and_grad(loss, params, mstate, ctx):
        del ctx
        return transforms.ncl_kfac_value_and_grad(loss, mstate, params, has_aux=True)

    return Method("ncl_kfac", make_optimizer=make_optimizer,
                  init=lambda params, key, hparams, spec: transforms.init_ncl(
                      params, curvature="kfac"),
                  optimizer_args=lambda p, b, m, c: {"ncl_state": m}, end_task=end_task,
                  default_hparams={"strength": 1e3, "damping": 1.0, "learning_rate": 0.05},
                  hparam_domains=NCL_DOMAINS,
                  value_and_grad=value_and_grad if fused_gradient else None)


__all__ = ["kfac_ewc", "ncl", "ncl_kfac"]
