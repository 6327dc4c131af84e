"""One quadratic penalty for EWC, online EWC, SI, MAS and L2, as an optax transform.

All five methods regularise task ``t`` with the same quadratic form (REFERENCES.md, "EWC")::

    L(θ) = ℓ_t(θ) + (λ/2) Σ_s Σ_i Ω_{s,i} (θ_i − θ*_{s,i})²

over one or more past (anchor θ*_s, importance Ω_s) pairs. They differ only in the importance Ω
(diagonal Fisher, SI's path integral, MAS) and in what happens at a task boundary:

==============  ===================================================================
method          task boundary (:func:`consolidate`)
==============  ===================================================================
EWC             ``mode="multi_task"``: one penalty per past task, Σ_s Ω_s (θ − θ*_s)²
                (Kirkpatrick et al. 2017, PNAS, eq. 3 summed over past tasks)
online EWC      ``mode="online", decay=γ``: Ω ← γΩ + Ω_t, θ* ← θ*_t
                (Schwarz et al. 2018, ICML, "online EWC")
SI              ``mode="online", decay=1``: Ω ← Ω + Ω_t, θ* ← θ*_t (Zenke et al. 2017,
                ICML, eq. 4-5: the per-task Ω^μ are summed and the anchor is the last θ)
MAS             ``mode="online", decay=1`` (accumulate, as SI; Aljundi et al. 2018, ECCV)
L2              ``mode="replace", importance=None``: Ω ← 1, θ* ← θ*_t (Hsu et al. 2018)
==============  ===================================================================

**The penalty's state is data, not optimizer state.** What the past tasks leave behind — the
anchor, the importance — is a :class:`QuadraticPenaltyState` that the caller holds next to the
optimizer state (in :func:`cljax.training.run_stream` it lives in the method state, so resetting
the optimizer never touches it) and hands to the transform as the optax extra argument
``penalty_state``. λ is a closure argument of the factory, like optax's learning rates: build
the transform inside the jitted step from the current hyperparameters (a traced λ never
recompiles and can be a ``vmap`` axis)::

    tx = optax.chain(quadratic_penalty(strength=lam), optax.adam(1e-3))   # penalty FIRST
    updates, opt_state = tx.update(grads, opt_state, params, penalty_state=penalty)
    penalty = consolidate(penalty, params, fisher, mode="multi_task")      # task boundary

**Multi-task EWC in constant memory.** Per coordinate, a sum of quadratics is one quadratic
plus a constant (the parallel-axis theorem)::

    Σ_s Ω_s (θ − θ*_s)² = Ω (θ − a)² + Σ_s Ω_s (θ*_s − a)²,   Ω = Σ_s Ω_s,  a = Σ_s Ω_s θ*_s / Ω

so ``mode="multi_task"`` folds task t into (Ω, a, offset) with the stable pairwise update
``Ω' = Ω + Ω_t``, ``a' = a + (Ω_t/Ω')(θ*_t − a)``, ``offset += Σ (Ω Ω_t/Ω')(a − θ*_t)²``
(Chan et al.'s pairwise variance update). The value and the gradient are *exactly* those of the
per-task sum, with no ``max_tasks`` slot axis: memory is 2 × params for any number of tasks,
and a step costs the same as online EWC. Importances must be finite and ≥ 0 (clip SI's noise at
0), which concrete inputs are checked for.

**Where it sits in a chain.** The transform adds the gradient of the penalty,
``λ Ω ⊙ (θ − a)``, to the incoming updates. EWC, SI and MAS add the penalty to the *loss*,
so its gradient passes through the optimiser's scaling together with the task gradient; the
transform therefore goes FIRST (:func:`ewc`). Placed after Adam, the penalty would be
*decoupled* from Adam's per-coordinate scaling, like AdamW's weight decay; that is a different
method, and the papers' λ values do not carry over.

Before the first :func:`consolidate`, Ω = 0 and the penalty (value and gradient) is exactly zero.
"""
from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.transforms.common import (NO_PARAMS, check_decay_for_mode, check_importance_values,
                                     float_dtype, require_state)
from cljax.types import Array, Importance, Params
from cljax.validation import check_finite, check_nonnegative, check_same_structure

ConsolidateMode = Literal["online", "multi_task", "replace"]

class QuadraticPenaltyState(NamedTuple):
    """What past tasks leave for :func:`quadratic_penalty`; the penalty is
    ``(λ/2)[Σ_i Ω_i (θ_i − a_i)² + offset]``.

    Attributes:
      anchor: a, params' structure (θ*_t for online/replace; Ω-weighted mean of the past θ*_s
        for multi-task EWC).
      importance: Ω, params' structure (zeros before the first consolidation).
      offset: float scalar, Σ_s Σ_i Ω_{s,i} (θ*_{s,i} − a_i)² (multi-task EWC; else 0). It does
        not affect the gradient; it makes :func:`penalty_loss` the exact per-task sum.
      count: int32 scalar, number of consolidations so far.
    """

    anchor: Params
    importance: Importance
    offset: Array
    count: Array


def init_penalty(params: Params) -> QuadraticPenaltyState:
    """The empty penalty (Ω = 0) for ``params``: anchor = a copy of ``params``."""
    return QuadraticPenaltyState(jax.tree.map(jnp.array, params),
                                 jax.tree.map(jnp.zeros_like, params),
                                 jnp.zeros((), float_dtype()), jnp.zeros((), jnp.int32))


def quadratic_penalty(*, strength: float | Array = 1.0) -> optax.GradientTransformationExtraArgs:
    """Add ``λ Ω ⊙ (θ − a)``, the gradient of ``(λ/2) Σ_i Ω_i (θ_i − a_i)²``, to the updates.

    EWC (Kirkpatrick et al. 2017, eq. 3), online EWC (Schwarz et al. 2018), SI (Zenke et al.
    2017, eq. 4), MAS (Aljundi et al. 2018) and L2 share this transform; see the
    module docstring for the consolidation mode of each and for where to put it in a chain.

    Args:
      strength: λ ≥ 0 (a float or an array, e.g. traced from the run's hyperparameters).

    Returns:
      ``update(updates, state, params, *, penalty_state)`` requires ``params`` and the
      :class:`QuadraticPenaltyState`; the transform's own state is empty. Per step: one fused
      multiply-add per parameter.
    """
    check_nonnegative(strength, name="strength", scalar=True)

    def init_fn(params: Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Params | None = None, *,
                  penalty_state: QuadraticPenaltyState | None = None, **extra: Any
                  ) -> tuple[Any, optax.EmptyState]:
        del extra
        if params is None:
            raise ValueError(NO_PARAMS.format(name="quadratic_penalty"))
        require_state(penalty_state, QuadraticPenaltyState, arg="penalty_state",
                      fn="quadratic_penalty.update")
        check_same_structure(params, penalty_state.anchor, name="params",
                             reference_name="penalty_state.anchor")
        lam = jnp.asarray(strength, float_dtype())
        out = jax.tree.map(
            lambda g, p, a, o: g + (lam.astype(g.dtype) * (o * (p - a))).astype(g.dtype),
            updates, params, penalty_state.anchor, penalty_state.importance)
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _consolidate_one(state: QuadraticPenaltyState, params: Params, importance: Importance | None,
                     mode: str, decay: Any) -> QuadraticPenaltyState:
    check_same_structure(params, state.anchor, name="params",
                         reference_name="the params the state was initialised with")
    if importance is None:
        importance = jax.tree.map(jnp.ones_like, params)
    check_same_structure(importance, params, name="importance")
    check_importance_values(importance)
    cast = lambda x, ref: jnp.asarray(x, dtype=ref.dtype)
    new_anchor = jax.tree.map(lambda a, p: cast(p, a), state.anchor, params)
    offset = jnp.zeros_like(state.offset)
    if mode == "online":
        decay_ = jnp.asarray(decay)
        new_imp = jax.tree.map(lambda o, w: cast(decay_, o) * o + cast(w, o),
                               state.importance, importance)
    elif mode == "replace":
        new_imp = jax.tree.map(lambda o, w: cast(w, o), state.importance, importance)
    elif mode == "multi_task":
        terms = []
        o_l, tdef = jax.tree.flatten(state.importance)
        a_l = tdef.flatten_up_to(state.anchor)
        w_l = tdef.flatten_up_to(importance)
        p_l = tdef.flatten_up_to(params)
        imps, ancs = [], []
        for o, a, w, p in zip(o_l, a_l, w_l, p_l):
            w, p = cast(w, o), cast(p, a)
            o2 = o + w
            frac = jnp.where(o2 != 0, w / jnp.where(o2 != 0, o2, 1), 1)
            d = p - a
            imps.append(o2)
            ancs.append(a + frac * d)
            terms.append(jnp.sum(o * frac * d * d).astype(state.offset.dtype))
        new_imp, new_anchor = tdef.unflatten(imps), tdef.unflatten(ancs)
        offset = state.offset + sum(terms, jnp.zeros_like(state.offset))
    else:
        raise ValueError(f"mode must be 'online', 'multi_task' or 'replace'; got {mode!r}")
    return state._replace(anchor=new_anchor, importance=new_imp, offset=offset,
                          count=state.count + 1)


def consolidate(state: QuadraticPenaltyState, params: Params, importance: Importance | None, *,
                mode: ConsolidateMode = "online", decay: float | Array = 1.0
                ) -> QuadraticPenaltyState:
    """Task boundary: fold task t's (θ*_t, Ω_t) into the penalty; returns a new state.

    Args:
      state: the :class:`QuadraticPenaltyState` so far (:func:`init_penalty` before task 1).
      params: θ*_t, the parameters at the end of task t (finite).
      importance: Ω_t ≥ 0 with params' structure and shapes (diagonal Fisher, SI, MAS...), a
        *mean over examples*; ``None`` means Ω_t = 1 everywhere (L2).
      mode: ``"online"``: Ω ← decay·Ω + Ω_t, anchor ← θ*_t (online EWC, Schwarz et al. 2018;
        with ``decay=1`` the accumulation used for SI and MAS). ``"multi_task"``: add the
        separate penalty Ω_t (θ − θ*_t)² (EWC, Kirkpatrick et al. 2017), folded exactly into
        (Ω, anchor, offset) as in the module docstring. ``"replace"``: Ω ← Ω_t, anchor ← θ*_t
        (L2 with ``importance=None``).
      decay: γ ∈ (0, 1] for ``mode="online"`` (may be an array, e.g. a vmapped axis).

    The function is pure and shape-preserving: it may run inside ``jit``/``vmap`` and the
    training step never recompiles after it.
    """
    if not isinstance(state, QuadraticPenaltyState):
        raise TypeError(f"state must be a QuadraticPenaltyState (init_penalty(params)); got "
                        f"{type(state).__name__}")
    check_decay_for_mode(decay, mode)
    check_finite(params, name="params")
    return _consolidate_one(state, params, importance, mode, decay)


def penalty_loss(state: QuadraticPenaltyState, params: Params, *,
                 strength: float | Array = 1.0) -> Array:
    """The penalty ``(λ/2)[Σ_i Ω_i (θ_i − a_i)² + offset]`` (for logging and tests).

    Equals ``(λ/2) Σ_s Σ_i Ω_{s,i} (θ_i − θ*_{s,i})²`` over the consolidated tasks in
    multi-task mode. Its gradient w.r.t. ``params`` is what :func:`quadratic_penalty` adds.
    """
    if not isinstance(state, QuadraticPenaltyState):
        raise TypeError(f"state must be a QuadraticPenaltyState; got {type(state).__name__}")
    check_nonnegative(strength, name="strength", scalar=True)
    check_same_structure(params, state.anchor, name="params", reference_name="state.anchor")
    terms = jax.tree.map(lambda p, a, o: jnp.sum(o * (p - a) ** 2).astype(state.offset.dtype),
                         params, state.anchor, state.importance)
    total = sum(jax.tree.leaves(terms), state.offset)
    return 0.5 * jnp.asarray(strength, state.offset.dtype) * total


# --------------------------------------------------------------------------------------------
# Default chain (optax-alias style).
# --------------------------------------------------------------------------------------------

def ewc(learning_rate: optax.ScalarOrSchedule, *, strength: float | Array = 1.0,
        b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
        ) -> optax.GradientTransformationExtraArgs:
    """Quadratic penalty + Adam: ``optax.chain(quadratic_penalty(strength=λ), optax.adam(lr))``.

    The chain of EWC (consolidate with ``mode="multi_task"``), online EWC (``mode="online",
    decay=γ``), SI and MAS (``mode="online"``) and L2 (``mode="replace", importance=None``); its
    ``update`` takes ``penalty_state=``. The penalty gradient is added before Adam's scaling, as in
    the papers' loss (van de Ven & Tolias 2019 train all of them with Adam this way).
    """
    return optax.chain(quadratic_penalty(strength=strength),
                       optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


__all__ = ["QuadraticPenaltyState", "init_penalty", "quadratic_penalty", "consolidate",
           "penalty_loss", "ewc"]
