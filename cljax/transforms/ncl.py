"""Natural continual learning (NCL; Kao et al. 2021, NeurIPS) as an optax preconditioner.

NCL trains task t on the Laplace posterior of the previous tasks, N(μ, Λ⁻¹), with a trust-region
(natural-gradient) step preconditioned by the prior precision Λ (REFERENCES.md "NCL", seed 000
eq. 15-16)::

    θ ← θ − η [Λ⁻¹ ∇ℓ_t(θ) + (θ − μ)]

:func:`ncl_preconditioner` outputs the *direction* ``Λ⁻¹ ∇ℓ_t(θ) + (θ − μ)``; chain it before a
plain step, ``optax.chain(ncl_preconditioner(), optax.sgd(η))`` (:func:`ncl`). Putting Adam after
the preconditioner would rescale the direction per coordinate and undo the preconditioning, so
NCL is a (momentum-)SGD method.

**Precision.** Λ = s · Σ_t γ^{T-t} F_t + d · I, with F_t the task-t curvature (a *mean over
examples*, as cljax's estimators return), ``strength`` s (the Laplace precision of a task with N
examples is N·F_t, so s plays the role of N and is tuned like EWC's λ) and ``damping`` d, the
precision of the isotropic Gaussian prior (and the numerical damping). Both define the prior, so
they are arguments of the boundary function, which forms Λ⁻¹ once per task (they may be traced
arrays: nothing recompiles, and both can be ``vmap`` axes). The prior (:class:`NCLState`) is
data the caller holds beside the optimizer state and hands to the transform as the optax extra
argument ``ncl_state``::

    tx = ncl(lr, momentum=0.9)                                   # preconditioner, then SGD
    updates, opt_state = tx.update(grads, opt_state, params, ncl_state=prior)
    prior = ncl_consolidate(prior, params, fisher, strength=s, damping=d)   # task boundary

The precision and its inverse are structured curvatures (:mod:`cljax.curvature.structured`),
chosen by ``init_ncl(params, curvature=...)``; the preconditioner and the boundary are the same
for both:

* ``"diagonal"``: F_t = importance pytree (e.g. diagonal Fisher); Λ⁻¹ = 1 / (s Ω + d)
  elementwise, Ω = Σ_t γ^{T-t} F_t.
* ``"kfac"``: F_t,l ≈ A_t ⊗ G_t per layer (``KFACFactors`` layout of :mod:`cljax.types`). The
  past tasks' sum is kept as ONE Kronecker product per layer, the Frobenius-nearest one
  (Van Loan & Pitsianis 1993; :func:`cljax.curvature.combine`). Damping enters with the factored
  Tikhonov form of Martens & Grosse (2015, sec. 6.3; :func:`cljax.curvature.damped_inverse`)::

      Λ_l ≈ (√s A + π √d I) ⊗ (√s G + (√d / π) I),   π = √[(tr A / dim A) / (tr G / dim G)]

  so Λ_l⁻¹ = (√s A + π√d I)⁻¹ ⊗ (√s G + √d/π I)⁻¹ and the step for a layer with
  ΔW̄ = [∇W; ∇b] is ``A_d⁻¹ ∇W̄ G_d⁻¹``: two matmuls per layer per step. The exact eigen-based
  inverse (s A⊗G + d I)⁻¹ = (U_A ⊗ U_G) diag(1 / (s a_i g_j + d)) (U_A ⊗ U_G)ᵀ costs four matmuls
  per layer per step; we chose the factored form because Λ is already approximate (Kronecker
  blocks, nearest-Kronecker sum over tasks), the factored form is standard K-FAC practice, and it
  halves the per-step cost. It adds √(sd)(π A⊗I + I⊗G/π) to Λ, i.e. slightly more damping.
  Parameters not in any factor layer get the prior precision only: Λ = d I (the inverse's
  ``other`` = 1/d).
  **Faster path:** the two per-step matmuls cost Σ_l (in+1)²·out + (in+1)·out² whatever the
  batch; :func:`ncl_kfac_value_and_grad` instead forms A_d⁻¹∇W̄G_d⁻¹ = (āA_d⁻ᵀ)ᵀ(δG_d⁻¹) inside
  the backward pass from each Dense layer's inputs ā and output cotangents δ (B rows), which is
  cheaper for B below ≈ (in+1)·out·(in+1+out)/((in+1)² + out²); chain it with
  ``ncl(..., preconditioned_gradients=True)`` (the ``ncl_kfac`` method does by default).

**Boundaries.** :func:`ncl_consolidate` (pure) sets μ ← θ*_t, adds the task's curvature and
computes the inverse ONCE; ``update`` only multiplies. Before the first consolidation there is
no prior from past tasks and the direction is the plain gradient (Λ⁻¹ = I, no pull): task 1
trains with plain SGD. (To train task 1 under the isotropic prior N(θ_0, d⁻¹I) instead,
consolidate at the initial parameters with zero importance.)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.curvature.structured import (
    Curvature,
    Kind,
    KroneckerFactored,
    combine,
    damped_inverse,
    identity,
    matvec,
    zeros,
)
from cljax.transforms.common import (
    as_curvature,
    check_decay,
    require_state,
    stateless_with_extra_args,
)
from cljax.transforms.kfac_gradient import kfac_preconditioned_value_and_grad
from cljax.types import Array, Params
from cljax.validation import (
    check_finite,
    check_nonnegative,
    check_positive,
    check_same_structure,
    default_float_dtype,
    is_concrete,
)


class NCLState(NamedTuple):
    """The prior of :func:`ncl_preconditioner`.

    Attributes:
      mean: μ, the parameters at the end of the last consolidated task.
      precision: Ω = Σ_t γ^{T-t} F_t, the unscaled data precision: a
        :class:`~cljax.curvature.Diagonal` or :class:`~cljax.curvature.KroneckerFactored`
        (zero before the first consolidation).
      inverse: Λ⁻¹ ≈ (s Ω + d I)⁻¹ (:func:`cljax.curvature.damped_inverse`), of the same type;
        the identity before the first consolidation.
      count: int32 number of consolidations.
    """

    mean: Params
    precision: Curvature
    inverse: Curvature
    count: Array  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, on purpose


def init_ncl(params: Params, *, curvature: Kind = "diagonal", layers: Any = None) -> NCLState:
    """The empty NCL prior (no past task: the direction is the plain gradient).

    Args:
      curvature: ``"diagonal"`` (a diagonal Fisher) or ``"kfac"`` (K-FAC factors).
      layers: ``"kfac"`` only: names of the layers to precondition ("Dense_0", or "/"-joined
        paths for nested modules); default every params node holding a ``kernel`` of rank ≥ 2
        (dense, conv).
    """
    if curvature not in ("diagonal", "kfac"):
        raise ValueError(f"curvature must be 'diagonal' or 'kfac'; got {curvature!r}")
    return NCLState(jax.tree.map(jnp.array, params), zeros(params, curvature, layers=layers),
                    identity(params, curvature, layers=layers), jnp.zeros((), jnp.int32))


def ncl_preconditioner(*, preconditioned_gradients: bool = False
                       ) -> optax.GradientTransformationExtraArgs:
    """NCL direction ``Λ⁻¹ g + (θ − μ)`` (Kao et al. 2021): ``Λ⁻¹ g`` is the
    :func:`cljax.curvature.matvec` of the prior's inverse — ``g / (sΩ + d)`` (diagonal),
    ``A_d⁻¹ ∇W̄ G_d⁻¹`` per factor layer and ``g/d`` elsewhere (K-FAC; module docstring).

    Args:
      preconditioned_gradients: the incoming updates are already Λ⁻¹∇ℓ (computed by
        :func:`ncl_kfac_value_and_grad` inside the backward pass, cheaper: see
        :mod:`cljax.transforms.kfac_gradient`); the transform then only adds the pull (θ − μ).

    ``update(updates, state, params, *, ncl_state)`` requires ``params`` and the
    :class:`NCLState` prior (:func:`init_ncl`, :func:`ncl_consolidate`); the transform's own
    state is empty. Memory of a K-FAC prior: two ``[in+1, in+1]`` and two ``[out, out]``
    matrices per layer (precision and inverse), plus μ.
    """
    if not isinstance(preconditioned_gradients, bool):
        raise TypeError("preconditioned_gradients must be a bool; got "
                        f"{type(preconditioned_gradients).__name__}")

    def update(updates: Any, params: Params, *, ncl_state: NCLState) -> Any:
        prior = ncl_state
        check_same_structure(params, prior.mean, name="params", reference_name="ncl_state.mean")
        pull = (prior.count > 0).astype(default_float_dtype())
        direction = updates if preconditioned_gradients else matvec(prior.inverse, updates)
        return jax.tree.map(lambda g, v, p, m: (v + pull.astype(g.dtype) * (p - m)).astype(g.dtype),
                            updates, direction, params, prior.mean)

    return stateless_with_extra_args(update, name="ncl_preconditioner", needs_params=True,
                                     required={"ncl_state": NCLState})


def ncl_kfac_value_and_grad(fun: Callable[..., Any], ncl_state: NCLState, params: Params,
                            *args: Any, has_aux: bool = False) -> tuple[Any, Params]:
    """``fun(params, *args)`` and Λ⁻¹∇fun with a K-FAC NCL prior ``ncl_state``, computed
    inside the backward pass (:func:`cljax.transforms.kfac_preconditioned_value_and_grad`).

    Feed the result to ``ncl(..., preconditioned_gradients=True)``; together they give the
    same step as ``jax.grad`` followed by ``ncl(...)``, for ≈ 40 % of the preconditioner's
    multiply-adds at batch 128 on a 784-400-400-10 MLP. Before the first consolidation Λ⁻¹ = I.

    Args:
      fun: scalar loss of ``(params, *args)`` built from flax linen modules (with
        ``has_aux``: returns ``(loss, aux)``, and the value returned is that pair).
      ncl_state: the :class:`NCLState` prior, from ``init_ncl(params, curvature="kfac")``.
      params: the current parameters.
    """
    require_state(ncl_state, NCLState, arg="ncl_state", fn="ncl_kfac_value_and_grad")
    if not isinstance(ncl_state.inverse, KroneckerFactored):
        raise TypeError("ncl_state must be a K-FAC prior (init_ncl(params, curvature='kfac')); "
                        f"its inverse is a {type(ncl_state.inverse).__name__}")
    check_same_structure(params, ncl_state.mean, name="params", reference_name="ncl_state.mean")
    inv = ncl_state.inverse
    return kfac_preconditioned_value_and_grad(fun, params, inv.factors, *args,
                                              other_scale=inv.other, has_aux=has_aux)


def ncl_consolidate(state: NCLState, params: Params, new: Any, *, strength: float | Array,
                    damping: float | Array, decay: float | Array = 1.0) -> NCLState:
    """Task boundary for NCL: Ω ← combine(Ω, F_t, mode="online", decay=γ) (γΩ + F_t; for K-FAC
    the nearest Kronecker product per layer), μ ← θ*_t, Λ⁻¹ ← damped_inverse(Ω, s, d)
    (1/(sΩ + d); for K-FAC the factored Tikhonov inverse, two eigendecompositions per layer).

    Args:
      state: the :class:`NCLState` so far (:func:`init_ncl` before task 1).
      params: θ*_t, the new prior mean (finite).
      new: F_t, a mean over examples: an importance pytree with params' structure (diagonal
        Fisher; finite, ≥ 0) or a :class:`~cljax.curvature.Diagonal` for a diagonal prior;
        {layer name: KFACFactors(A_t, G_t)} (finite; tracked layers it omits get F_t = 0) or a
        :class:`~cljax.curvature.KroneckerFactored` for a K-FAC prior.
      strength: s ≥ 0, the scale of the accumulated curvature in Λ.
      damping: d > 0, the prior precision / damping (d = 0 would give directions without
        curvature an infinite step).
      decay: γ ∈ (0, 1], down-weights older tasks (1: the exact Laplace sum).
    """
    if not isinstance(state, NCLState):
        raise TypeError(f"state must be an NCLState (init_ncl(params)); got "
                        f"{type(state).__name__}")
    check_decay(decay)
    check_nonnegative(strength, name="strength", scalar=True)
    check_positive(damping, name="damping", scalar=True)
    check_finite(params, name="params")
    check_same_structure(params, state.mean, name="params", reference_name="state.mean")
    new = as_curvature(new, state.precision, params)
    precision = combine(state.precision, new, mode="online", decay=decay)
    mean = jax.tree.map(lambda m, p: jnp.asarray(p, m.dtype), state.mean, params)
    return NCLState(mean, precision,
                    damped_inverse(precision, strength=strength, damping=damping),
                    state.count + 1)


# --------------------------------------------------------------------------------------------
# Default chain.
# --------------------------------------------------------------------------------------------

def ncl(learning_rate: optax.ScalarOrSchedule, *, momentum: float | None = None,
        preconditioned_gradients: bool = False) -> optax.GradientTransformationExtraArgs:
    """NCL: ``optax.chain(ncl_preconditioner(...), optax.sgd(lr, momentum))`` for either prior;
    with ``preconditioned_gradients=True`` it expects gradients from
    :func:`ncl_kfac_value_and_grad`; ``update`` takes ``ncl_state=``. A concrete
    ``learning_rate`` must be a finite number > 0 (a schedule is a callable), ``momentum`` None
    or in [0, 1)."""
    if not callable(learning_rate):
        check_positive(learning_rate, name="learning_rate", scalar=True)
    if momentum is not None:
        check_nonnegative(momentum, name="momentum", scalar=True)
        if is_concrete(momentum) and not float(momentum) < 1:
            raise ValueError(f"momentum must be None or in [0, 1); got {momentum}")
    return optax.chain(ncl_preconditioner(preconditioned_gradients=preconditioned_gradients),
                       optax.sgd(learning_rate, momentum=momentum))


__all__ = ["NCLState", "init_ncl", "ncl_preconditioner", "ncl_consolidate",
           "ncl_kfac_value_and_grad", "ncl"]
