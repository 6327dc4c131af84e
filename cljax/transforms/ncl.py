"""Natural continual learning (NCL; Kao et al. 2021, NeurIPS) as an optax preconditioner.

NCL trains task t on the Laplace posterior of the previous tasks, N(μ, Λ⁻¹), with a trust-region
(natural-gradient) step preconditioned by the prior precision Λ (REFERENCES.md "NCL", seed 000
eq. 15-16)::

    θ ← θ − η [Λ⁻¹ ∇ℓ_t(θ) + (θ − μ)]

The transforms here output the *direction* ``Λ⁻¹ ∇ℓ_t(θ) + (θ − μ)``; chain them before a plain
step, ``optax.chain(ncl_preconditioner(...), optax.sgd(η))`` (:func:`ncl`, :func:`ncl_kfac`).
Putting Adam after the preconditioner would rescale the direction per coordinate and undo the
preconditioning, so NCL is a (momentum-)SGD method.

**Precision.** Λ = s · Σ_t F_t + d · I, with F_t the task-t curvature (a *mean over examples*, as
cljax's estimators return), ``strength`` s (the Laplace precision of a task with N examples is
N·F_t, so s plays the role of N and is tuned like EWC's λ) and ``damping`` d, the precision of the
isotropic Gaussian prior (and the numerical damping). Both define the prior, so they are
arguments of the boundary functions, which form Λ⁻¹ once per task (they may be traced arrays:
nothing recompiles, and both can be ``vmap`` axes). The prior itself (:class:`NCLDiagState`,
:class:`NCLKFACState`) is data the caller holds beside the optimizer state and hands to the
transform as the optax extra argument ``ncl_state``::

    tx = ncl(lr, momentum=0.9)                                   # preconditioner, then SGD
    updates, opt_state = tx.update(grads, opt_state, params, ncl_state=prior)
    prior = ncl_consolidate(prior, params, fisher, strength=s, damping=d)   # task boundary

* Diagonal (:func:`ncl_preconditioner`): F_t = importance pytree (e.g. diagonal Fisher);
  Λ⁻¹ = 1 / (s Ω + d) elementwise, Ω = Σ_t γ^{T-t} F_t.
* K-FAC (:func:`ncl_kfac_preconditioner`): F_t,l ≈ A_t ⊗ G_t per layer (``KFACFactors`` layout of
  :mod:`cljax.types`). The past tasks' sum is kept as ONE Kronecker product per layer, the
  Frobenius-nearest one (Van Loan & Pitsianis 1993; see
  :func:`cljax.transforms.kfac_penalty.nearest_kronecker_sum`). Damping enters with the factored
  Tikhonov form of Martens & Grosse (2015, sec. 6.3)::

      Λ_l ≈ (√s A + π √d I) ⊗ (√s G + (√d / π) I),   π = √[(tr A / dim A) / (tr G / dim G)]

  so Λ_l⁻¹ = (√s A + π√d I)⁻¹ ⊗ (√s G + √d/π I)⁻¹ and the step for a layer with
  ΔW̄ = [∇W; ∇b] is ``A_d⁻¹ ∇W̄ G_d⁻¹``: two matmuls per layer per step. The exact eigen-based
  inverse (s A⊗G + d I)⁻¹ = (U_A ⊗ U_G) diag(1 / (s a_i g_j + d)) (U_A ⊗ U_G)ᵀ costs four matmuls
  per layer per step; we chose the factored form because Λ is already approximate (Kronecker
  blocks, nearest-Kronecker sum over tasks), the factored form is standard K-FAC practice, and it
  halves the per-step cost. It adds √(sd)(π A⊗I + I⊗G/π) to Λ, i.e. slightly more damping.
  Parameters not in any factor layer get the prior precision only: Λ = d I.
  **Faster path:** the two per-step matmuls cost Σ_l (in+1)²·out + (in+1)·out² whatever the
  batch; :func:`ncl_kfac_value_and_grad` instead forms A_d⁻¹∇W̄G_d⁻¹ = (āA_d⁻ᵀ)ᵀ(δG_d⁻¹) inside
  the backward pass from each Dense layer's inputs ā and output cotangents δ (B rows), which is
  cheaper for B below ≈ (in+1)·out·(in+1+out)/((in+1)² + out²); chain it with
  ``ncl_kfac(..., preconditioned_gradients=True)`` (the ``ncl_kfac`` method does by default).

**Boundaries.** :func:`ncl_consolidate` / :func:`ncl_kfac_consolidate` (pure) set μ ← θ*_t, add
the task's curvature and compute the inverse ONCE; ``update`` only multiplies. Before the first
consolidation there is no prior from past tasks and the direction is the plain gradient
(Λ⁻¹ = I, no pull): task 1 trains with plain SGD. (To train task 1 under the isotropic prior
N(θ_0, d⁻¹I) instead, consolidate at the initial parameters with zero importance.)
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax._linalg import eigh
from cljax.layers import check_factors, get_layer, pack, param_layers, set_layer, unpack
from cljax.transforms.kfac_gradient import kfac_preconditioned_value_and_grad
from cljax.transforms.kfac_penalty import nearest_kronecker_sum
from cljax.transforms.common import (NO_PARAMS, check_decay, check_importance_values,
                                     float_dtype, require_state)
from cljax.types import Array, Importance, KFACFactors, Params
from cljax.validation import check_finite, check_nonnegative, check_positive, check_same_structure


def _active(count: Array, dtype: Any) -> Array:
    return (count > 0).astype(dtype)


def _check_prior_hparams(strength: Any, damping: Any) -> None:
    check_nonnegative(strength, name="strength", scalar=True)
    check_positive(damping, name="damping", scalar=True)


# --------------------------------------------------------------------------------------------
# Diagonal NCL.
# --------------------------------------------------------------------------------------------

class NCLDiagState(NamedTuple):
    """The prior of :func:`ncl_preconditioner`.

    Attributes:
      mean: μ, the parameters at the end of the last consolidated task.
      precision: Ω = Σ_t γ^{T-t} F_t, the unscaled data precision (params' structure).
      inverse: Λ⁻¹ = 1 / (s Ω + d) (ones before the first consolidation), formed at boundaries.
      count: int32 number of consolidations.
    """

    mean: Params
    precision: Importance
    inverse: Params
    count: Array


def init_ncl(params: Params) -> NCLDiagState:
    """The empty diagonal NCL prior (no past task: the direction is the plain gradient)."""
    return NCLDiagState(jax.tree.map(jnp.array, params), jax.tree.map(jnp.zeros_like, params),
                        jax.tree.map(jnp.ones_like, params), jnp.zeros((), jnp.int32))


def ncl_preconditioner() -> optax.GradientTransformationExtraArgs:
    """Diagonal NCL direction ``Λ⁻¹ g + (θ − μ)``, Λ = s Ω + d (Kao et al. 2021).

    ``update(updates, state, params, *, ncl_state)`` requires ``params`` and the
    :class:`NCLDiagState` prior (:func:`init_ncl`, :func:`ncl_consolidate`); the transform's own
    state is empty. Chain before the step: ``optax.chain(ncl_preconditioner(), optax.sgd(lr))``.
    """

    def init_fn(params: Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Params | None = None, *,
                  ncl_state: NCLDiagState | None = None, **extra: Any
                  ) -> tuple[Any, optax.EmptyState]:
        del extra
        if params is None:
            raise ValueError(NO_PARAMS.format(name="ncl_preconditioner"))
        require_state(ncl_state, NCLDiagState, arg="ncl_state", fn="ncl_preconditioner.update")
        check_same_structure(params, ncl_state.mean, name="params",
                             reference_name="ncl_state.mean")
        on = _active(ncl_state.count, float_dtype())
        out = jax.tree.map(
            lambda g, p, m, v: (v * g + on.astype(g.dtype) * (p - m)).astype(g.dtype),
            updates, params, ncl_state.mean, ncl_state.inverse)
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ncl_consolidate(state: NCLDiagState, params: Params, importance: Importance, *,
                    strength: float | Array, damping: float | Array,
                    decay: float | Array = 1.0) -> NCLDiagState:
    """Task boundary for diagonal NCL: Ω ← γΩ + F_t, μ ← θ*_t, Λ⁻¹ ← 1/(sΩ + d).

    Args:
      state: the :class:`NCLDiagState` so far (:func:`init_ncl` before task 1).
      params: θ*_t, the new prior mean (finite).
      importance: F_t with params' structure (diagonal Fisher, mean over examples; finite, ≥ 0).
      strength: s ≥ 0, the scale of the accumulated importance in Λ.
      damping: d > 0, the prior precision / damping (d = 0 would give coordinates without
        importance an infinite step).
      decay: γ ∈ (0, 1], down-weights older tasks (1: the exact Laplace sum).
    """
    if not isinstance(state, NCLDiagState):
        raise TypeError(f"state must be an NCLDiagState (init_ncl(params)); got "
                        f"{type(state).__name__}")
    check_decay(decay)
    _check_prior_hparams(strength, damping)
    check_finite(params, name="params")
    check_same_structure(params, state.mean, name="params", reference_name="state.mean")
    check_same_structure(importance, state.mean, name="importance")
    check_importance_values(importance)
    dt = float_dtype()
    s_, d_ = jnp.asarray(strength, dt), jnp.asarray(damping, dt)
    prec = jax.tree.map(lambda o, f: jnp.asarray(decay, o.dtype) * o + jnp.asarray(f, o.dtype),
                        state.precision, importance)
    mean = jax.tree.map(lambda m, p: jnp.asarray(p, m.dtype), state.mean, params)
    inv = jax.tree.map(lambda o: 1.0 / (s_.astype(o.dtype) * o + d_.astype(o.dtype)), prec)
    return NCLDiagState(mean, prec, inv, state.count + 1)


# --------------------------------------------------------------------------------------------
# K-FAC NCL.
# --------------------------------------------------------------------------------------------

class NCLKFACState(NamedTuple):
    """The prior of :func:`ncl_kfac_preconditioner`.

    Attributes:
      mean: μ.
      factors: {layer: KFACFactors(A, G)}, the nearest-Kronecker sum of the past tasks' factors.
      inverse: {layer: KFACFactors(A_d⁻¹, G_d⁻¹)}, damped inverses (identity before task 1).
      other: float scalar, Λ⁻¹ of the parameters outside factor layers (1/d; 1 before task 1).
      count: int32 number of consolidations.
    """

    mean: Params
    factors: dict
    inverse: dict
    other: Array
    count: Array


def _spd_inverse(m: Array) -> Array:
    """Inverse of a symmetric positive definite matrix through its eigendecomposition."""
    m = 0.5 * (m + m.T)
    w, u = eigh(m)
    return (u / w) @ u.T


def _damped_inverses(a: Array, g: Array, strength: Array, damping: Array) -> tuple[Array, Array]:
    """(√s A + π√d I)⁻¹ and (√s G + √d/π I)⁻¹ with Martens & Grosse's π (see module docstring)."""
    dt = a.dtype
    n, m = a.shape[0], g.shape[0]
    tiny = jnp.finfo(dt).tiny
    pi = jnp.sqrt((jnp.trace(a) / n + tiny) / (jnp.trace(g) / m + tiny))
    rs, rd = jnp.sqrt(strength.astype(dt)), jnp.sqrt(damping.astype(dt))
    a_d = rs * a + (pi * rd) * jnp.eye(n, dtype=dt)
    g_d = rs * g + (rd / pi) * jnp.eye(m, dtype=dt)
    return _spd_inverse(a_d), _spd_inverse(g_d)


def init_ncl_kfac(params: Params, *, layers: Any = None) -> NCLKFACState:
    """The empty K-FAC NCL prior (identity inverses: task 1 trains with the plain gradient).

    Args:
      layers: names of the layers to precondition ("Dense_0", or "/"-joined paths for nested
        modules); default: every params node holding a ``kernel`` of rank ≥ 2 (dense, conv).
    """
    shapes = param_layers(params, layers)
    factors, inverse = {}, {}
    for name, (n, m, _) in shapes.items():
        pdt = get_layer(params, name)["kernel"].dtype
        factors[name] = KFACFactors(jnp.zeros((n, n), pdt), jnp.zeros((m, m), pdt))
        inverse[name] = KFACFactors(jnp.eye(n, dtype=pdt), jnp.eye(m, dtype=pdt))
    return NCLKFACState(jax.tree.map(jnp.array, params), factors, inverse,
                        jnp.ones((), float_dtype()), jnp.zeros((), jnp.int32))


def ncl_kfac_preconditioner(*, preconditioned_gradients: bool = False
                            ) -> optax.GradientTransformationExtraArgs:
    """K-FAC NCL direction ``Λ⁻¹ g + (θ − μ)`` (Kao et al. 2021; Λ per layer as in
    the module docstring: ``A_d⁻¹ ∇W̄ G_d⁻¹`` for each factor layer, ``∇/d`` elsewhere).

    Args:
      preconditioned_gradients: the incoming updates are already Λ⁻¹∇ℓ, computed by
        :func:`ncl_kfac_value_and_grad` inside the backward pass (cheaper: see
        :mod:`cljax.transforms.kfac_gradient`); the transform then only adds the pull (θ − μ).

    ``update(updates, state, params, *, ncl_state)`` requires ``params`` and the
    :class:`NCLKFACState` prior (:func:`init_ncl_kfac`, :func:`ncl_kfac_consolidate`). Memory of
    the prior: two ``[in+1, in+1]`` and two ``[out, out]`` matrices per layer (factors and
    inverses), plus μ.
    """
    if not isinstance(preconditioned_gradients, bool):
        raise TypeError("preconditioned_gradients must be a bool; got "
                        f"{type(preconditioned_gradients).__name__}")

    def init_fn(params: Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Params | None = None, *,
                  ncl_state: NCLKFACState | None = None, **extra: Any
                  ) -> tuple[Any, optax.EmptyState]:
        del extra
        if params is None:
            raise ValueError(NO_PARAMS.format(name="ncl_kfac_preconditioner"))
        prior = ncl_state
        require_state(prior, NCLKFACState, arg="ncl_state", fn="ncl_kfac_preconditioner.update")
        check_same_structure(params, prior.mean, name="params", reference_name="ncl_state.mean")
        pull = (prior.count > 0).astype(float_dtype())
        if preconditioned_gradients:
            out = jax.tree.map(lambda g, p, m: (g + pull.astype(g.dtype) * (p - m)).astype(g.dtype),
                               updates, params, prior.mean)
            return out, state
        # Parameters outside factor layers: Λ = d I after the first task, identity before.
        other = prior.other
        out = jax.tree.map(lambda g, p, m: (other.astype(g.dtype) * g
                                            + pull.astype(g.dtype) * (p - m)).astype(g.dtype),
                           updates, params, prior.mean)
        for name, inv in prior.inverse.items():
            g_node = get_layer(updates, name)
            d = inv.A @ pack(g_node) @ inv.G
            pm = pack(get_layer(params, name)) - pack(get_layer(prior.mean, name))
            new = unpack(d + pull.astype(d.dtype) * pm, g_node)
            out = set_layer(out, name, new)
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ncl_kfac_value_and_grad(fun: Callable[..., Any], ncl_state: NCLKFACState, params: Params,
                            *args: Any, has_aux: bool = False) -> tuple[Any, Params]:
    """``fun(params, *args)`` and Λ⁻¹∇fun with the K-FAC NCL prior ``ncl_state``, computed
    inside the backward pass (:func:`cljax.transforms.kfac_preconditioned_value_and_grad`).

    Feed the result to ``ncl_kfac(..., preconditioned_gradients=True)``; together they give the
    same step as ``jax.grad`` followed by ``ncl_kfac(...)``, for ≈ 40 % of the preconditioner's
    multiply-adds at batch 128 on a 784-400-400-10 MLP. Before the first consolidation Λ⁻¹ = I.

    Args:
      fun: scalar loss of ``(params, *args)`` built from flax linen modules (with
        ``has_aux``: returns ``(loss, aux)``, and the value returned is that pair).
      ncl_state: the :class:`NCLKFACState` prior.
      params: the current parameters.
    """
    require_state(ncl_state, NCLKFACState, arg="ncl_state", fn="ncl_kfac_value_and_grad")
    check_same_structure(params, ncl_state.mean, name="params", reference_name="ncl_state.mean")
    return kfac_preconditioned_value_and_grad(fun, params, ncl_state.inverse, *args,
                                              other_scale=ncl_state.other, has_aux=has_aux)


def ncl_kfac_consolidate(state: NCLKFACState, params: Params,
                         factors: Mapping[str, KFACFactors], *, strength: float | Array,
                         damping: float | Array, decay: float | Array = 1.0) -> NCLKFACState:
    """Task boundary for K-FAC NCL: per layer A⊗G ← nearest-Kronecker(γ A⊗G + A_t⊗G_t),
    μ ← θ*_t, and the damped inverses are recomputed (two eigendecompositions per layer).

    Args:
      state: the :class:`NCLKFACState` so far (:func:`init_ncl_kfac` before task 1).
      params: θ*_t (finite).
      factors: {layer name: KFACFactors(A_t, G_t)} in :class:`cljax.types.KFACFactors` layout
        (finite); layers the state tracks but ``factors`` omits get F_t = 0 for this task.
      strength: s ≥ 0. damping: d > 0 (see the module docstring for the factored damping).
      decay: γ ∈ (0, 1].
    """
    if not isinstance(state, NCLKFACState):
        raise TypeError(f"state must be an NCLKFACState (init_ncl_kfac(params)); got "
                        f"{type(state).__name__}")
    check_decay(decay)
    _check_prior_hparams(strength, damping)
    check_finite(params, name="params")
    check_finite(factors, name="factors")
    check_same_structure(params, state.mean, name="params", reference_name="state.mean")
    check_factors(factors, {k: (f.A.shape[0], f.G.shape[0]) for k, f in state.factors.items()})
    dt = float_dtype()
    s_, d_ = jnp.asarray(strength, dt), jnp.asarray(damping, dt)
    new_f, inv = {}, {}
    for name, f in state.factors.items():
        dec = jnp.asarray(decay, f.A.dtype)
        if name in factors:
            a_t = jnp.asarray(factors[name][0], f.A.dtype)
            g_t = jnp.asarray(factors[name][1], f.G.dtype)
            new_f[name] = KFACFactors(*nearest_kronecker_sum(dec * f.A, f.G, a_t, g_t))
        else:
            new_f[name] = KFACFactors(dec * f.A, f.G)
        inv[name] = KFACFactors(*_damped_inverses(new_f[name].A, new_f[name].G, s_, d_))
    mean = jax.tree.map(lambda m, p: jnp.asarray(p, m.dtype), state.mean, params)
    return NCLKFACState(mean, new_f, inv, 1.0 / d_, state.count + 1)


# --------------------------------------------------------------------------------------------
# Default chains.
# --------------------------------------------------------------------------------------------

def ncl(learning_rate: optax.ScalarOrSchedule, *, momentum: float | None = None
        ) -> optax.GradientTransformationExtraArgs:
    """Diagonal NCL: ``optax.chain(ncl_preconditioner(), optax.sgd(lr, momentum))``; ``update``
    takes ``ncl_state=``."""
    return optax.chain(ncl_preconditioner(), optax.sgd(learning_rate, momentum=momentum))


def ncl_kfac(learning_rate: optax.ScalarOrSchedule, *, momentum: float | None = None,
             preconditioned_gradients: bool = False) -> optax.GradientTransformationExtraArgs:
    """K-FAC NCL: ``optax.chain(ncl_kfac_preconditioner(...), optax.sgd(lr, momentum))``; with
    ``preconditioned_gradients=True`` it expects gradients from :func:`ncl_kfac_value_and_grad`;
    ``update`` takes ``ncl_state=``."""
    return optax.chain(ncl_kfac_preconditioner(preconditioned_gradients=preconditioned_gradients),
                       optax.sgd(learning_rate, momentum=momentum))


__all__ = ["NCLDiagState", "NCLKFACState", "init_ncl", "init_ncl_kfac", "ncl_preconditioner",
           "ncl_consolidate", "ncl_kfac_preconditioner", "ncl_kfac_consolidate",
           "ncl_kfac_value_and_grad", "ncl", "ncl_kfac"]
