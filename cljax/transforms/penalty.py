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

**Multi-task EWC in constant memory.** Per coordinate, a sum of quadratics is one quadratic
plus a constant (the parallel-axis theorem)::

    Σ_s Ω_s (θ − θ*_s)² = Ω (θ − a)² + Σ_s Ω_s (θ*_s − a)²,   Ω = Σ_s Ω_s,  a = Σ_s Ω_s θ*_s / Ω

so ``mode="multi_task"`` folds task t into (Ω, a, offset) with the stable pairwise update
``Ω' = Ω + Ω_t``, ``a' = a + (Ω_t/Ω')(θ*_t − a)``, ``offset += Σ (Ω Ω_t/Ω')(a − θ*_t)²``
(Chan et al.'s pairwise variance update). The value and the gradient are *exactly* those of the
per-task sum, with no ``max_tasks`` slot axis: memory is 2 × params for any number of tasks,
and a step costs the same as online EWC. (Storing per-task slots would take 2·T × params and,
on CPU, made a 5-task step ~7× slower than Adam, memory-bound.) Importances must be ≥ 0 (clip
SI's noise at 0), which concrete inputs are checked for.

**Where it sits in a chain.** The transform adds the gradient of the penalty,
``λ Ω ⊙ (θ − a)``, to the incoming updates. EWC, SI and MAS add the penalty to the *loss*,
so its gradient passes through the optimiser's scaling together with the task gradient; the
transform therefore goes FIRST::

    optax.chain(quadratic_penalty(strength=λ), optax.adam(lr))       # the papers' method

Placed after Adam, the penalty would be *decoupled* from Adam's per-coordinate scaling, like
AdamW's weight decay; that is a different method, and the papers' λ values do not carry over.
:func:`ewc` and :func:`online_ewc` return the first chain.

**State and compilation.** :class:`QuadraticPenaltyState` holds the anchor, the importance, the
offset, the number of consolidations and ``strength`` (λ) *as an array*. Consolidating a task or
setting λ only changes array values, so a jitted training step compiles once for the whole
stream and every λ, and λ can be a ``vmap`` axis (many λ values × seeds in one program)::

    tx = ewc(1e-3, strength=1.0)
    init = lambda lam: set_strength(tx.init(params), lam)
    states = jax.vmap(init)(jnp.array([1e2, 1e4, 1e6]))       # one state per λ

Before the first :func:`consolidate`, Ω = 0 and the penalty (value and gradient) is exactly zero.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.types import Array, Importance, Params
from cljax.validation import check_nonnegative, check_same_structure, is_concrete

ConsolidateMode = Literal["online", "multi_task", "replace"]

_NO_PARAMS = ("{name}.update requires the current parameters: call update(updates, state, params) "
              "(got params=None)")


# --------------------------------------------------------------------------------------------
# Helpers shared by the transforms of this package (penalty, kfac_penalty, ncl).
# --------------------------------------------------------------------------------------------

def _float_dtype() -> Any:
    """Default float dtype (float64 under ``jax.enable_x64``)."""
    return jnp.result_type(float)


def _hyper(value: Any, *, name: str, dtype: Any = None) -> Array:
    """A nonnegative scalar hyperparameter as a strongly typed array (no retrace on change)."""
    check_nonnegative(value, name=name)
    return jnp.asarray(value, dtype=dtype or _float_dtype())


def _check_decay(decay: Any) -> None:
    if is_concrete(decay):
        d = np.asarray(decay)
        if np.any(d <= 0) or np.any(d > 1):
            raise ValueError(f"decay must lie in (0, 1]; got {decay}")


def _replace_states(tree: Any, cls: type | tuple[type, ...], fn: Callable[[Any], Any]
                    ) -> tuple[Any, int]:
    """Apply ``fn`` to every ``cls`` instance inside an optimizer state (chains, wrappers).

    Recurses through tuples, NamedTuples, lists and dicts; returns (new tree, number replaced).
    """
    if isinstance(tree, cls):
        return fn(tree), 1
    if isinstance(tree, tuple):
        parts = [_replace_states(x, cls, fn) for x in tree]
        n = sum(c for _, c in parts)
        vals = [v for v, _ in parts]
        return (type(tree)(*vals) if hasattr(tree, "_fields") else tuple(vals)), n
    if isinstance(tree, list):
        parts = [_replace_states(x, cls, fn) for x in tree]
        return [v for v, _ in parts], sum(c for _, c in parts)
    if isinstance(tree, dict):
        parts = {k: _replace_states(v, cls, fn) for k, v in tree.items()}
        return type(tree)((k, v) for k, (v, _) in parts.items()), sum(c for _, c in parts.values())
    return tree, 0


def _replace_one(state: Any, cls: type, fn: Callable[[Any], Any], *, what: str) -> Any:
    """Like :func:`_replace_states` but requires exactly one ``cls`` state inside ``state``."""
    new, n = _replace_states(state, cls, fn)
    if n != 1:
        raise ValueError(f"{what}: state must be (or contain exactly one) {cls.__name__}; "
                         f"found {n} in a {type(state).__name__}")
    return new


def _find_one(state: Any, cls: type, *, what: str) -> Any:
    found = []
    _replace_one(state, cls, lambda s: found.append(s) or s, what=what)
    return found[0]


def _check_scalar_like(value: Any, old: Array, *, name: str) -> None:
    if jnp.shape(value) != jnp.shape(old):
        raise ValueError(f"{name} must have shape {jnp.shape(old)} (the state's; under vmap a "
                         f"scalar per member); got shape {jnp.shape(value)}")


def set_strength(state: Any, value: Any) -> Any:
    """Return ``state`` with λ (``strength``) replaced in every cljax transform state inside it.

    Works on a transform's own state or on a whole optimizer state (``optax.chain`` tuples,
    wrappers). ``value`` must have the shape of the stored strength: a scalar, or ``[K]`` for a
    state batched over K members by ``vmap`` (then prefer calling it inside ``vmap``). Only
    values change, so a jitted step does not recompile. For :mod:`cljax.transforms.ncl` states
    the preconditioner is recomputed from the stored precision (a task-boundary cost).
    """
    check_nonnegative(value, name="strength")

    def fn(s: Any) -> Any:
        _check_scalar_like(value, s.strength, name="strength")
        return s._with_strength(jnp.asarray(value, dtype=s.strength.dtype))

    new, n = _replace_states(state, _STRENGTH_STATES, fn)
    if n == 0:
        raise ValueError(f"set_strength: no cljax transform state with a strength found in a "
                         f"{type(state).__name__}")
    return new


_STRENGTH_STATES: tuple[type, ...] = ()


def _register_strength_state(cls: type) -> type:
    global _STRENGTH_STATES
    _STRENGTH_STATES = _STRENGTH_STATES + (cls,)
    return cls


# --------------------------------------------------------------------------------------------
# The quadratic penalty.
# --------------------------------------------------------------------------------------------

@_register_strength_state
class QuadraticPenaltyState(NamedTuple):
    """State of :func:`quadratic_penalty`; the penalty is ``(λ/2)[Σ_i Ω_i (θ_i − a_i)² + offset]``.

    Attributes:
      anchor: a, params' structure (θ*_t for online/replace; Ω-weighted mean of the past θ*_s
        for multi-task EWC).
      importance: Ω, params' structure (zeros before the first consolidation).
      offset: float scalar, Σ_s Σ_i Ω_{s,i} (θ*_{s,i} − a_i)² (multi-task EWC; else 0). It does
        not affect the gradient; it makes :func:`penalty_loss` the exact per-task sum.
      count: int32 scalar, number of consolidations so far.
      strength: float scalar λ.
    """

    anchor: Params
    importance: Importance
    offset: Array
    count: Array
    strength: Array

    def _with_strength(self, value: Array) -> "QuadraticPenaltyState":
        return self._replace(strength=value)


def quadratic_penalty(*, strength: float | Array = 1.0) -> optax.GradientTransformation:
    """Add ``λ Ω ⊙ (θ − a)``, the gradient of ``(λ/2) Σ_i Ω_i (θ_i − a_i)²``, to the updates.

    EWC (Kirkpatrick et al. 2017, eq. 3), online EWC (Schwarz et al. 2018), SI (Zenke et al.
    2017, eq. 4), MAS (Aljundi et al. 2018) and L2 share this transform; see the
    module docstring for the consolidation mode of each and for where to put it in a chain.

    Args:
      strength: λ ≥ 0, stored as an array in the state (change it with :func:`set_strength`).

    Returns:
      ``optax.GradientTransformation``; ``update(updates, state, params)`` requires ``params``.
      Per step: one fused multiply-add per parameter; state memory 2 × params.
    """
    check_nonnegative(strength, name="strength")

    def init_fn(params: Params) -> QuadraticPenaltyState:
        dt = _float_dtype()
        return QuadraticPenaltyState(jax.tree.map(jnp.array, params),
                                     jax.tree.map(jnp.zeros_like, params),
                                     jnp.zeros((), dt), jnp.zeros((), jnp.int32),
                                     jnp.asarray(strength, dtype=dt))

    def update_fn(updates: Any, state: QuadraticPenaltyState, params: Params | None = None
                  ) -> tuple[Any, QuadraticPenaltyState]:
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="quadratic_penalty"))
        check_same_structure(params, state.anchor, name="params",
                             reference_name="the params the state was initialised with")
        lam = state.strength
        out = jax.tree.map(
            lambda g, p, a, o: g + (lam.astype(g.dtype) * (o * (p - a))).astype(g.dtype),
            updates, params, state.anchor, state.importance)
        return out, state

    return optax.GradientTransformation(init_fn, update_fn)


def _check_importance_values(importance: Importance) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(importance):
        if is_concrete(leaf) and bool(np.any(np.asarray(leaf) < 0)):
            raise ValueError(f"importance{jax.tree_util.keystr(path)} has negative entries; "
                             f"importances must be >= 0 (clip estimates such as SI's at 0, e.g. "
                             f"jax.tree.map(lambda w: jnp.maximum(w, 0), importance))")


def _consolidate_one(state: QuadraticPenaltyState, params: Params, importance: Importance | None,
                     mode: str, decay: Any) -> QuadraticPenaltyState:
    check_same_structure(params, state.anchor, name="params",
                         reference_name="the params the state was initialised with")
    if importance is None:
        importance = jax.tree.map(jnp.ones_like, params)
    check_same_structure(importance, params, name="importance")
    _check_importance_values(importance)
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


def check_decay_for_mode(decay: Any, mode: str) -> None:
    """γ ∈ (0, 1], and γ ≠ 1 only with ``mode="online"`` (shared by the penalty families)."""
    _check_decay(decay)
    if mode != "online" and not (is_concrete(decay) and np.all(np.asarray(decay) == 1.0)):
        raise ValueError(f"decay is only used by mode='online'; got decay={decay} with "
                         f"mode={mode!r}")


def consolidate(state: Any, params: Params, importance: Importance | None, *,
                mode: ConsolidateMode = "online", decay: float | Array = 1.0) -> Any:
    """Task boundary: fold task t's (θ*_t, Ω_t) into the penalty; returns a new state.

    Args:
      state: a :class:`QuadraticPenaltyState`, or a whole optimizer state containing exactly one
        (e.g. the state of ``optax.chain(quadratic_penalty(...), optax.adam(lr))``).
      params: θ*_t, the parameters at the end of task t.
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
    check_decay_for_mode(decay, mode)
    return _replace_one(state, QuadraticPenaltyState,
                        lambda s: _consolidate_one(s, params, importance, mode, decay),
                        what="consolidate")


def penalty_loss(state: Any, params: Params) -> Array:
    """The penalty ``(λ/2)[Σ_i Ω_i (θ_i − a_i)² + offset]`` (for logging and tests).

    Equals ``(λ/2) Σ_s Σ_i Ω_{s,i} (θ_i − θ*_{s,i})²`` over the consolidated tasks in
    multi-task mode. ``state`` is a :class:`QuadraticPenaltyState` or an optimizer state
    containing exactly one. Its gradient w.r.t. ``params`` is what :func:`quadratic_penalty` adds.
    """
    s = _find_one(state, QuadraticPenaltyState, what="penalty_loss")
    check_same_structure(params, s.anchor, name="params",
                         reference_name="the params the state was initialised with")
    terms = jax.tree.map(lambda p, a, o: jnp.sum(o * (p - a) ** 2).astype(s.offset.dtype),
                         params, s.anchor, s.importance)
    total = sum(jax.tree.leaves(terms), s.offset)
    return 0.5 * s.strength * total


# --------------------------------------------------------------------------------------------
# Default chains (optax-alias style).
# --------------------------------------------------------------------------------------------

def ewc(learning_rate: optax.ScalarOrSchedule, *, strength: float | Array = 1.0,
        b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Quadratic penalty + Adam: ``optax.chain(quadratic_penalty(strength=λ), optax.adam(lr))``.

    The chain of EWC (consolidate with ``mode="multi_task"``), online EWC (``mode="online",
    decay=γ``), SI and MAS (``mode="online"``) and L2 (``mode="replace", importance=None``). The
    penalty gradient is added before Adam's scaling, as in the papers' loss (van de Ven & Tolias
    2019 train all of them with Adam this way).
    """
    return optax.chain(quadratic_penalty(strength=strength),
                       optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


online_ewc = ewc
"""Alias of :func:`ewc`: the chain is the same, only :func:`consolidate`'s mode differs."""


__all__ = ["QuadraticPenaltyState", "quadratic_penalty", "consolidate", "penalty_loss",
           "set_strength", "ewc", "online_ewc"]
