"""One quadratic penalty for EWC, online EWC, SI, MAS, L2 and the K-FAC Laplace penalty, as an
optax transform.

All these methods regularise task ``t`` with a quadratic form around past solutions
(REFERENCES.md, "EWC", "KFAC-Laplace penalty")::

    L(θ) = ℓ_t(θ) + (λ/2) Σ_s (θ − θ*_s)ᵀ C_s (θ − θ*_s)

over one or more past (anchor θ*_s, curvature C_s) pairs, with C_s a structured curvature of
:mod:`cljax.curvature.structured`: a :class:`~cljax.curvature.Diagonal` Ω (diagonal Fisher, SI's
path integral, MAS; Kirkpatrick et al. 2017, PNAS, eq. 3) or a
:class:`~cljax.curvature.KroneckerFactored` A ⊗ G per layer (Ritter et al. 2018, NeurIPS: the
Laplace term (λ/2) Σ_l tr(ΔW̄ᵀ A ΔW̄ G), ΔW̄ = [ΔW; Δb]; parameters outside the factor layers get
no penalty, combine with a diagonal penalty if they need protection). The methods differ in C and
in what happens at a task boundary (:func:`consolidate`):

==============  ===================================================================
method          task boundary
==============  ===================================================================
EWC             ``mode="multi_task"``: one penalty per past task, Σ_s Ω_s (θ − θ*_s)²
                (Kirkpatrick et al. 2017, eq. 3 summed over past tasks)
online EWC      ``mode="online", decay=γ``: Ω ← γΩ + Ω_t, θ* ← θ*_t
                (Schwarz et al. 2018, ICML, "online EWC")
SI              ``mode="online", decay=1``: Ω ← Ω + Ω_t, θ* ← θ*_t (Zenke et al. 2017,
                ICML, eq. 4-5: the per-task Ω^μ are summed and the anchor is the last θ)
MAS             ``mode="online", decay=1`` (accumulate, as SI; Aljundi et al. 2018, ECCV)
L2              ``mode="replace", new=None``: Ω ← 1, θ* ← θ*_t (Hsu et al. 2018)
K-FAC Laplace   ``mode="online"``: nearest Kronecker product of γ·A⊗G + A_t⊗G_t;
                ``"sum"``: factor sums; ``"multi_task"``: per-task slots (below)
==============  ===================================================================

(:func:`cljax.curvature.combine` documents ``"online"``, ``"sum"`` and ``"replace"`` for both
types; the anchor becomes θ*_t in all three.)

**The penalty's state is data, not optimizer state.** What the past tasks leave behind — anchor
and curvature — is a :class:`QuadraticPenaltyState` that the caller holds next to the optimizer
state (in :func:`cljax.training.run_stream` it lives in the method state, so resetting the
optimizer never touches it) and hands to the transform as the optax extra argument
``penalty_state``. λ is a closure argument of the factory, like optax's learning rates: build the
transform inside the jitted step from the current hyperparameters (a traced λ never recompiles
and can be a ``vmap`` axis)::

    tx = optax.chain(quadratic_penalty(strength=lam), optax.adam(1e-3))   # penalty FIRST
    updates, opt_state = tx.update(grads, opt_state, params, penalty_state=penalty)
    penalty = consolidate(penalty, params, fisher, mode="multi_task")      # task boundary

**Multi-task EWC in constant memory** (diagonal). Per coordinate, a sum of quadratics is one
quadratic plus a constant (the parallel-axis theorem)::

    Σ_s Ω_s (θ − θ*_s)² = Ω (θ − a)² + Σ_s Ω_s (θ*_s − a)²,   Ω = Σ_s Ω_s,  a = Σ_s Ω_s θ*_s / Ω

so ``mode="multi_task"`` folds task t into (Ω, a, offset) with the stable pairwise update
``Ω' = Ω + Ω_t``, ``a' = a + (Ω_t/Ω')(θ*_t − a)``, ``offset += Σ (Ω Ω_t/Ω')(a − θ*_t)²``
(Chan et al.'s pairwise variance update). The value and the gradient are *exactly* those of the
per-task sum, with no slot axis: memory is 2 × params for any number of tasks, and a step costs
the same as online EWC. Importances must be finite and ≥ 0 (clip SI's noise at 0), which concrete
inputs are checked for.

**Multi-task K-FAC: slots.** A sum of Kronecker-factored quadratics around different anchors does
not fold, so ``init_penalty(params, curvature="kfac", num_slots=T)`` keeps T slots: every leaf of
the anchor and of the curvature (factors ``[T, rows, rows]``, ``[T, out, out]``, ``other``
``[T]``) gets a leading slot axis, and ``mode="multi_task"`` writes task ``count`` into slot
``count``; the update loops over the ``count`` filled slots only. ``num_slots=1`` (the default)
stores no slot axis; it takes one multi-task consolidation. Memory:
``T × (|params| + Σ_l rows² + out²)``.

**Where it sits in a chain.** The transform adds the gradient of the penalty, ``λ C (θ − a)``
(:func:`cljax.curvature.matvec`), to the incoming updates. EWC, SI, MAS and the K-FAC Laplace
penalty add the penalty to the *loss*, so its gradient passes through the optimiser's scaling
together with the task gradient; the transform therefore goes FIRST
(:func:`quadratic_penalty_adam`). Placed after Adam, the penalty would be *decoupled* from Adam's
per-coordinate scaling, like AdamW's weight decay; that is a different method, and the papers' λ
values do not carry over.

Before the first :func:`consolidate`, C = 0 and the penalty (value and gradient) is exactly zero.
"""
from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.curvature.structured import (
    Curvature,
    Diagonal,
    Kind,
    KroneckerFactored,
    combine,
    matvec,
    matvec_sum,
    quadratic_form,
    zeros,
)
from cljax.transforms.common import as_curvature, check_decay_for_mode, stateless_with_extra_args
from cljax.types import Array, Params
from cljax.validation import (
    check_finite,
    check_nonnegative,
    check_same_structure,
    default_float_dtype,
    is_concrete,
)

ConsolidateMode = Literal["online", "sum", "multi_task", "replace"]
MODES = ("online", "sum", "multi_task", "replace")


class QuadraticPenaltyState(NamedTuple):
    """What past tasks leave for :func:`quadratic_penalty`; the penalty is
    ``(λ/2)[(θ − a)ᵀ C (θ − a) + offset]`` (summed over the filled slots with slots).

    Attributes:
      anchor: a, params' structure (θ*_t for online/sum/replace; the Ω-weighted mean of the
        past θ*_s for diagonal multi-task EWC); leaves ``[num_slots, *shape]`` with slots.
      curvature: C, a :class:`~cljax.curvature.Diagonal` or
        :class:`~cljax.curvature.KroneckerFactored` (zeros before the first consolidation;
        with slots, every leaf has the leading slot axis).
      offset: float scalar, Σ_s Σ_i Ω_{s,i} (θ*_{s,i} − a_i)² (diagonal multi-task EWC; else
        0). It does not affect the gradient; it makes :func:`penalty_loss` the exact per-task sum.
      count: int32 scalar, number of consolidations so far.
    """

    anchor: Params
    curvature: Curvature
    offset: Array
    count: Array  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, on purpose


def init_penalty(params: Params, *, curvature: Kind = "diagonal", num_slots: int = 1,
                 layers: Any = None) -> QuadraticPenaltyState:
    """The empty penalty (C = 0) for ``params``: anchor = a copy of ``params``.

    Args:
      curvature: ``"diagonal"`` (EWC, online EWC, SI, MAS, L2) or ``"kfac"`` (K-FAC Laplace).
      num_slots: ``"kfac"`` only: 1, or ``max_tasks`` for ``mode="multi_task"`` consolidation
        (module docstring). The diagonal multi-task fold needs no slots.
      layers: ``"kfac"`` only: names of the layers to track ("Dense_0", "/"-joined paths for
        nested modules); default every dense/conv layer (:func:`cljax.layers.param_layers`).
    """
    if curvature not in ("diagonal", "kfac"):
        raise ValueError(f"curvature must be 'diagonal' or 'kfac'; got {curvature!r}")
    if not isinstance(num_slots, (int, np.integer)) or isinstance(num_slots, bool) or num_slots < 1:
        raise ValueError(f"num_slots must be a positive int; got {num_slots!r}")
    num_slots = int(num_slots)
    if curvature == "diagonal" and num_slots != 1:
        raise ValueError(f"num_slots is for curvature='kfac' (multi-task slots); the diagonal "
                         f"multi-task fold is exact without slots: got num_slots={num_slots}")
    curv = zeros(params, curvature, layers=layers)
    anchor = jax.tree.map(jnp.array, params)
    if num_slots > 1:
        stack = lambda x: jnp.array(jnp.broadcast_to(x, (num_slots,) + jnp.shape(x)))
        curv, anchor = jax.tree.map(stack, curv), jax.tree.map(stack, anchor)
    return QuadraticPenaltyState(anchor, curv, jnp.zeros((), default_float_dtype()),
                                 jnp.zeros((), jnp.int32))


def _num_slots(state: QuadraticPenaltyState) -> int | None:
    """The slot axis' length, or None for a state without slots."""
    c = state.curvature
    if isinstance(c, KroneckerFactored) and jnp.ndim(c.other) == 1:
        return int(jnp.shape(c.other)[0])
    return None


def _slot(tree: Any, i: Any) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


def _check_params(state: QuadraticPenaltyState, params: Params, name: str,
                  reference_name: str) -> None:
    anchor = state.anchor
    if _num_slots(state) is not None:   # one slot's shapes (no slicing)
        anchor = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], a.dtype), anchor)
    check_same_structure(params, anchor, name=name, reference_name=reference_name)


def quadratic_penalty(*, strength: float | Array = 1.0) -> optax.GradientTransformationExtraArgs:
    """Add ``λ C (θ − a)``, the gradient of ``(λ/2)(θ − a)ᵀ C (θ − a)``, to the updates.

    C is the state's curvature: a diagonal Ω (``λ Ω ⊙ (θ − a)``; EWC, Kirkpatrick et al. 2017,
    eq. 3; online EWC, Schwarz et al. 2018; SI, Zenke et al. 2017, eq. 4; MAS, Aljundi et al.
    2018; L2) or K-FAC factors (``λ A ΔW̄ G`` per layer; Ritter et al. 2018), summed over the
    filled slots of a multi-task K-FAC state. See the module docstring for the consolidation
    mode of each method and for where to put the transform in a chain.

    Args:
      strength: λ ≥ 0 (a float or an array, e.g. traced from the run's hyperparameters).

    Returns:
      ``update(updates, state, params, *, penalty_state)`` requires ``params`` and the
      :class:`QuadraticPenaltyState`; the transform's own state is empty. Per step: one fused
      multiply-add per parameter (diagonal); two matmuls per layer and filled slot (K-FAC,
      ``rows² × out`` and ``rows × out²`` multiply-adds).

    Example:
        >>> import jax.numpy as jnp
        >>> from cljax.transforms import consolidate, init_penalty, quadratic_penalty
        >>> theta_star = {"w": jnp.array([1.0, 2.0])}
        >>> state = consolidate(init_penalty(theta_star), theta_star, {"w": jnp.array([4.0, 0.0])})
        >>> tx = quadratic_penalty(strength=0.5)
        >>> params = {"w": jnp.array([2.0, 0.0])}
        >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params, penalty_state=state)
        >>> updates["w"]   # λ Ω ⊙ (θ − θ*) = 0.5 · (4, 0) ⊙ (1, −2)
        Array([2., 0.], dtype=float32)
    """
    check_nonnegative(strength, name="strength", scalar=True)

    def update(updates: Any, params: Params, *, penalty_state: QuadraticPenaltyState) -> Any:
        ps = penalty_state
        _check_params(ps, params, "params", "penalty_state.anchor")
        lam = jnp.asarray(strength, default_float_dtype())
        slots = _num_slots(ps)
        if slots is None:
            grad = matvec(ps.curvature, optax.tree_utils.tree_sub(params, ps.anchor), scale=lam)
        else:  # only the filled slots: a loop of `count` products, not num_slots
            grad = matvec_sum(ps.curvature, params, ps.anchor, count=ps.count, scale=lam)
        return jax.tree.map(lambda g, c: g + c.astype(g.dtype), updates, grad)

    return stateless_with_extra_args(update, name="quadratic_penalty", needs_params=True,
                                     required={"penalty_state": QuadraticPenaltyState})


def _fold_multi_task(state: QuadraticPenaltyState, params: Params, new: Diagonal
                     ) -> tuple[Params, Diagonal, Array]:
    """Diagonal multi-task EWC: the exact parallel-axis fold of (θ*_t, Ω_t) (module docstring)."""
    old = state.curvature
    assert isinstance(old, Diagonal)               # multi_task folds a diagonal curvature
    summed = combine(old, new, mode="sum")
    tdef: Any                                      # a PyTreeDef: jaxlib ships no stubs for it
    o_l, tdef = jax.tree.flatten(old.values)
    o2_l = tdef.flatten_up_to(summed.values)
    w_l = tdef.flatten_up_to(new.values)
    a_l = tdef.flatten_up_to(state.anchor)
    p_l = tdef.flatten_up_to(params)
    ancs, terms = [], []
    for o, o2, w, a, p in zip(o_l, o2_l, w_l, a_l, p_l):
        w, p = jnp.asarray(w, o.dtype), jnp.asarray(p, a.dtype)
        frac = jnp.where(o2 != 0, w / jnp.where(o2 != 0, o2, 1), 1)
        d = p - a
        ancs.append(a + frac * d)
        terms.append(jnp.sum(o * frac * d * d).astype(state.offset.dtype))
    offset = state.offset + optax.tree_utils.tree_sum(terms)
    return tdef.unflatten(ancs), summed, offset


def consolidate(state: QuadraticPenaltyState, params: Params, new: Any, *,
                mode: ConsolidateMode = "online", decay: float | Array = 1.0
                ) -> QuadraticPenaltyState:
    """Task boundary: fold task t's (θ*_t, C_t) into the penalty; returns a new state.

    Args:
      state: the :class:`QuadraticPenaltyState` so far (:func:`init_penalty` before task 1).
      params: θ*_t, the parameters at the end of task t (finite).
      new: C_t, a *mean over examples*. For a diagonal state: an importance pytree Ω_t ≥ 0 with
        params' structure and shapes (diagonal Fisher, SI, MAS...), a
        :class:`~cljax.curvature.Diagonal`, or ``None`` for Ω_t = 1 (L2). For a K-FAC state:
        {layer name: KFACFactors(A_t, G_t)} (:func:`cljax.importance.kfac_factors`; tracked
        layers it omits get no curvature from task t) or a
        :class:`~cljax.curvature.KroneckerFactored`.
      mode: ``"online"``: C ← decay·C + C_t (:func:`cljax.curvature.combine`; nearest Kronecker
        product for K-FAC), anchor ← θ*_t (online EWC; with ``decay=1`` the accumulation used
        for SI and MAS). ``"sum"``: the same with γ = 1 (K-FAC: factor sums). ``"multi_task"``:
        add the separate penalty of task t (EWC, Kirkpatrick et al. 2017): folded exactly into
        (Ω, anchor, offset) for a diagonal state, written into slot ``count`` for K-FAC.
        ``"replace"``: C ← C_t, anchor ← θ*_t (L2 with ``new=None``).
      decay: γ ∈ (0, 1] for ``mode="online"`` (may be an array, e.g. a vmapped axis).

    The function is pure and shape-preserving: it may run inside ``jit``/``vmap`` and the
    training step never recompiles after it.
    """
    if not isinstance(state, QuadraticPenaltyState):
        raise TypeError(f"state must be a QuadraticPenaltyState (init_penalty(params)); got "
                        f"{type(state).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'online', 'sum', 'multi_task' or 'replace'; got {mode!r}")
    check_decay_for_mode(decay, mode)
    check_finite(params, name="params")
    _check_params(state, params, "params", "the params the state was initialised with")
    slots = _num_slots(state)
    like = state.curvature if slots is None else _slot(state.curvature, 0)
    new = as_curvature(new, like, params)
    anchor_t = jax.tree.map(lambda a, p: jnp.asarray(p, a.dtype),
                            state.anchor if slots is None else _slot(state.anchor, 0), params)
    offset = jnp.zeros_like(state.offset)
    count = state.count + 1
    if slots is not None and mode != "multi_task":
        raise ValueError(f"mode={mode!r} keeps one curvature; the state has num_slots={slots} "
                         f"(use mode='multi_task' or num_slots=1)")
    if mode == "multi_task" and isinstance(like, KroneckerFactored):
        size = 1 if slots is None else slots
        if is_concrete(state.count) and int(state.count) >= size:
            raise ValueError(f"multi-task consolidation: all num_slots={size} slots are used; "
                             f"create the state with a larger num_slots (= max_tasks)")
        new = combine(like, new, mode="replace")   # new in the state's dtypes
        if slots is None:   # one slot, no slot axis; under jit a write to a full slot is dropped
            free = state.count < 1
            pick = lambda n, o: jnp.where(free, n, o)
            curv = jax.tree.map(pick, new, state.curvature)
            anchor = jax.tree.map(pick, anchor_t, state.anchor)
        else:               # under jit an out-of-range write is dropped
            put = lambda s, x: s.at[state.count].set(x, mode="drop")
            curv = jax.tree.map(put, state.curvature, new)
            anchor = jax.tree.map(put, state.anchor, anchor_t)
    elif mode == "multi_task":
        anchor, curv, offset = _fold_multi_task(state, params, new)
    else:
        anchor, curv = anchor_t, combine(state.curvature, new, mode=mode, decay=decay)
    return QuadraticPenaltyState(anchor, curv, offset, count)


def penalty_loss(state: QuadraticPenaltyState, params: Params, *,
                 strength: float | Array = 1.0) -> Array:
    """The penalty ``(λ/2)[(θ − a)ᵀ C (θ − a) + offset]``, summed over the slots (for logging
    and tests).

    Equals ``(λ/2) Σ_s (θ − θ*_s)ᵀ C_s (θ − θ*_s)`` over the consolidated tasks in multi-task
    mode. Its gradient w.r.t. ``params`` is what :func:`quadratic_penalty` adds.
    """
    if not isinstance(state, QuadraticPenaltyState):
        raise TypeError(f"state must be a QuadraticPenaltyState; got {type(state).__name__}")
    check_nonnegative(strength, name="strength", scalar=True)
    _check_params(state, params, "params", "state.anchor")
    form = lambda c, a: quadratic_form(c, optax.tree_utils.tree_sub(params, a))
    if _num_slots(state) is None:
        total = form(state.curvature, state.anchor)
    else:
        total = jnp.sum(jax.vmap(form)(state.curvature, state.anchor))
    total = total.astype(state.offset.dtype) + state.offset
    return 0.5 * jnp.asarray(strength, state.offset.dtype) * total


# --------------------------------------------------------------------------------------------
# Default chain (optax-alias style).
# --------------------------------------------------------------------------------------------

def quadratic_penalty_adam(learning_rate: optax.ScalarOrSchedule, *,
                           strength: float | Array = 1.0, b1: float = 0.9, b2: float = 0.999,
                           eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """Quadratic penalty + Adam: ``optax.chain(quadratic_penalty(strength=λ), optax.adam(lr))``.

    The chain of EWC (consolidate with ``mode="multi_task"``), online EWC (``mode="online",
    decay=γ``), SI and MAS (``mode="online"``), L2 (``mode="replace", new=None``) and, with a
    ``curvature="kfac"`` state, the K-FAC Laplace penalty (Ritter et al. 2018); its ``update``
    takes ``penalty_state=``. The penalty gradient is added before Adam's scaling, as in the
    papers' loss (van de Ven & Tolias 2019 train all of them with Adam this way).
    """
    return optax.chain(quadratic_penalty(strength=strength),
                       optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


__all__ = ["QuadraticPenaltyState", "init_penalty", "quadratic_penalty", "consolidate",
           "penalty_loss", "quadratic_penalty_adam"]
