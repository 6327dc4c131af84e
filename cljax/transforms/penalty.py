"""One quadratic penalty for EWC, online EWC, SI, MAS and L2, as an optax transform.

All five methods regularise task ``t`` with the same quadratic form (REFERENCES.md, "EWC")::

    L(θ) = ℓ_t(θ) + (λ/2) Σ_s Σ_i Ω_{s,i} (θ_i − θ*_{s,i})²

with one or more (anchor θ*_s, importance Ω_s) pairs; they differ only in the importance Ω
(diagonal Fisher, SI's path integral, MAS) and in what happens at a task boundary:

==============  =============================================  ===============================
method          task boundary (``consolidate``)                 slots
==============  =============================================  ===============================
EWC             ``mode="multi_task"``: new slot (Ω_t, θ*_t)     ``num_slots = max_tasks``
                (Kirkpatrick et al. 2017, PNAS, eq. 3 summed
                over past tasks)
online EWC      ``mode="online", decay=γ``: Ω ← γΩ + Ω_t,       1
                θ* ← θ*_t (Schwarz et al. 2018, ICML, eq. 8)
SI              ``mode="online", decay=1``: Ω ← Ω + Ω_t,        1
                θ* ← θ*_t (Zenke et al. 2017, ICML, eq. 4-5:
                the per-task Ω^μ are summed)
MAS             ``mode="online", decay=1`` (accumulate, as SI;  1
                Aljundi et al. 2018, ECCV, sec. 4.2)
L2              ``mode="replace", importance=None``: Ω ← 1,     1
                θ* ← θ*_t (Hsu et al. 2018's L2 baseline)
==============  =============================================  ===============================

**Where it sits in a chain.** The transform adds the gradient of the penalty,
``λ Σ_s Ω_s ⊙ (θ − θ*_s)``, to the incoming updates. EWC, SI and MAS add the penalty to the *loss*,
so its gradient passes through the optimiser's scaling together with the task gradient; the
transform therefore goes FIRST::

    optax.chain(quadratic_penalty(strength=λ), optax.adam(lr))       # the papers' method

Placed after Adam (``optax.chain(optax.adam(lr), quadratic_penalty(...))`` with a sign flip) it
would be a *decoupled* penalty, like AdamW's weight decay; that is a different method and is
not what the papers or their λ values describe. :func:`ewc` and :func:`online_ewc` return the
first chain.

**State and compilation.** :class:`QuadraticPenaltyState` holds the anchors and importances with a
leading slot axis of static size ``num_slots``, the number of consolidations so far, and
``strength`` (λ) *as an array*. Consolidating a task or setting λ only changes array values, so a
jitted training step compiles once for the whole stream and for every λ, and λ can be a ``vmap``
axis (many λ values × seeds in one program)::

    tx = ewc(1e-3, strength=1.0)
    init = lambda lam: set_strength(tx.init(params), lam)
    states = jax.vmap(init)(jnp.array([1e2, 1e4, 1e6]))       # one state per λ

Memory: anchors and importances take ``2 · num_slots × |params|`` (multi-task EWC with 5 tasks:
10 copies of the parameters). Multi-task EWC's gradient equals that of a single quadratic with
Ω = Σ_s Ω_s and anchor (Σ_s Ω_s θ*_s)/Ω, so two copies would suffice for the *gradient*; we keep
the slots because they make :func:`penalty_loss` exact and avoid the cancellation of
``Ω θ − Σ Ω_s θ*_s`` in float32 at EWC's large λ.

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
    """State of :func:`quadratic_penalty`.

    Attributes:
      anchors: params' structure, each leaf ``[num_slots, *shape]``: θ*_s.
      importance: same layout: Ω_s (zero in unused slots, so they contribute nothing).
      count: int32 scalar, number of consolidations so far (next multi-task slot).
      strength: float scalar λ.
    """

    anchors: Params
    importance: Importance
    count: Array
    strength: Array

    def _with_strength(self, value: Array) -> "QuadraticPenaltyState":
        return self._replace(strength=value)


def quadratic_penalty(*, strength: float | Array = 1.0, num_slots: int = 1
                      ) -> optax.GradientTransformation:
    """Add the gradient of ``(λ/2) Σ_s Σ_i Ω_{s,i} (θ_i − θ*_{s,i})²`` to the updates.

    EWC (Kirkpatrick et al. 2017, eq. 3), online EWC (Schwarz et al. 2018, eq. 8), SI (Zenke et
    al. 2017, eq. 4), MAS (Aljundi et al. 2018, eq. 5) and L2 share this transform; see the
    module docstring for the consolidation mode of each and for where to put it in a chain.

    Args:
      strength: λ ≥ 0, stored as an array in the state (change it with :func:`set_strength`).
      num_slots: static number of (anchor, importance) pairs: 1 for online EWC / SI / MAS / L2,
        ``max_tasks`` for multi-task EWC.

    Returns:
      ``optax.GradientTransformation``; ``update(updates, state, params)`` requires ``params``.
    """
    check_nonnegative(strength, name="strength")
    if not isinstance(num_slots, (int, np.integer)) or isinstance(num_slots, bool) or num_slots < 1:
        raise ValueError(f"num_slots must be a positive int; got {num_slots!r}")
    num_slots = int(num_slots)

    def init_fn(params: Params) -> QuadraticPenaltyState:
        stack = lambda p: jnp.broadcast_to(jnp.asarray(p), (num_slots,) + jnp.shape(p))
        anchors = jax.tree.map(lambda p: jnp.array(stack(p)), params)
        importance = jax.tree.map(lambda p: jnp.zeros((num_slots,) + jnp.shape(p),
                                                      jnp.asarray(p).dtype), params)
        return QuadraticPenaltyState(anchors, importance, jnp.zeros((), jnp.int32),
                                     jnp.asarray(strength, dtype=_float_dtype()))

    def update_fn(updates: Any, state: QuadraticPenaltyState, params: Params | None = None
                  ) -> tuple[Any, QuadraticPenaltyState]:
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="quadratic_penalty"))
        check_same_structure(params, jax.tree.map(lambda a: a[0], state.anchors),
                             name="params", reference_name="the params the state was "
                             "initialised with")
        lam = state.strength

        def leaf(g, p, a, o):
            if num_slots == 1:
                d = o[0] * (p - a[0])
            else:
                d = jnp.sum(o * (p[None] - a), axis=0)
            return g + (lam * d).astype(g.dtype)

        return jax.tree.map(leaf, updates, params, state.anchors, state.importance), state

    return optax.GradientTransformation(init_fn, update_fn)


def _consolidate_one(state: QuadraticPenaltyState, params: Params, importance: Importance | None,
                     mode: str, decay: Any) -> QuadraticPenaltyState:
    anchors0 = jax.tree.map(lambda a: a[0], state.anchors)
    check_same_structure(params, anchors0, name="params",
                         reference_name="the params the state was initialised with")
    if importance is None:
        importance = jax.tree.map(jnp.ones_like, params)
    check_same_structure(importance, params, name="importance")
    num_slots = jax.tree.leaves(state.anchors)[0].shape[0] if jax.tree.leaves(state.anchors) else 1
    if mode in ("online", "replace") and num_slots != 1:
        raise ValueError(f"mode={mode!r} keeps one (anchor, importance) pair; the state has "
                         f"num_slots={num_slots} (use quadratic_penalty(num_slots=1), or "
                         f"mode='multi_task')")
    cast = lambda x, ref: jnp.asarray(x, dtype=ref.dtype)
    if mode == "online":
        decay_ = jnp.asarray(decay)
        new_imp = jax.tree.map(lambda o, w: (cast(decay_, o) * o[0] + cast(w, o))[None],
                               state.importance, importance)
        new_anc = jax.tree.map(lambda a, p: cast(p, a)[None], state.anchors, params)
    elif mode == "replace":
        new_imp = jax.tree.map(lambda o, w: cast(w, o)[None], state.importance, importance)
        new_anc = jax.tree.map(lambda a, p: cast(p, a)[None], state.anchors, params)
    elif mode == "multi_task":
        if is_concrete(state.count) and int(state.count) >= num_slots:
            raise ValueError(f"multi-task consolidation: all num_slots={num_slots} slots are "
                             f"used ({int(state.count)} tasks consolidated); create the "
                             f"transform with a larger num_slots (= max_tasks)")
        # Under jit an out-of-range slot write is dropped (the count still increases).
        i = state.count
        new_imp = jax.tree.map(lambda o, w: o.at[i].set(cast(w, o), mode="drop"),
                               state.importance, importance)
        new_anc = jax.tree.map(lambda a, p: a.at[i].set(cast(p, a), mode="drop"),
                               state.anchors, params)
    else:
        raise ValueError(f"mode must be 'online', 'multi_task' or 'replace'; got {mode!r}")
    return state._replace(anchors=new_anc, importance=new_imp, count=state.count + 1)


def consolidate(state: Any, params: Params, importance: Importance | None, *,
                mode: ConsolidateMode = "online", decay: float | Array = 1.0) -> Any:
    """Task boundary: fold task t's (θ*_t, Ω_t) into the penalty; returns a new state.

    Args:
      state: a :class:`QuadraticPenaltyState`, or a whole optimizer state containing exactly one
        (e.g. the state of ``optax.chain(quadratic_penalty(...), optax.adam(lr))``).
      params: θ*_t, the parameters at the end of task t (the new anchor).
      importance: Ω_t with params' structure and shapes (diagonal Fisher, SI, MAS...), a *mean
        over examples*; ``None`` means Ω_t = 1 everywhere (L2).
      mode: ``"online"``: Ω ← decay·Ω + Ω_t, θ* ← θ*_t (online EWC, Schwarz et al. 2018 eq. 8;
        with ``decay=1`` the accumulation used for SI and MAS). ``"multi_task"``: store (Ω_t,
        θ*_t) in the next free slot (EWC, Kirkpatrick et al. 2017); needs ``num_slots`` ≥ the
        number of tasks. ``"replace"``: Ω ← Ω_t, θ* ← θ*_t (L2 with ``importance=None``).
      decay: γ ∈ (0, 1] for ``mode="online"`` (may be an array, e.g. a vmapped axis).

    The function is pure and shape-preserving: it may run inside ``jit``/``vmap`` and the
    training step never recompiles after it.
    """
    _check_decay(decay)
    if mode != "online" and not (is_concrete(decay) and np.all(np.asarray(decay) == 1.0)):
        raise ValueError(f"decay is only used by mode='online'; got decay={decay} with "
                         f"mode={mode!r}")
    return _replace_one(state, QuadraticPenaltyState,
                        lambda s: _consolidate_one(s, params, importance, mode, decay),
                        what="consolidate")


def penalty_loss(state: Any, params: Params) -> Array:
    """The penalty value ``(λ/2) Σ_s Σ_i Ω_{s,i} (θ_i − θ*_{s,i})²`` (for logging and tests).

    ``state`` is a :class:`QuadraticPenaltyState` or an optimizer state containing exactly one.
    Its gradient w.r.t. ``params`` is what :func:`quadratic_penalty` adds to the updates.
    """
    s = _find_one(state, QuadraticPenaltyState, what="penalty_loss")
    check_same_structure(params, jax.tree.map(lambda a: a[0], s.anchors), name="params",
                         reference_name="the params the state was initialised with")
    terms = jax.tree.map(lambda p, a, o: jnp.sum(o * (p[None] - a) ** 2), params, s.anchors,
                         s.importance)
    total = sum(jax.tree.leaves(terms), jnp.zeros((), s.strength.dtype))
    return 0.5 * s.strength * total


# --------------------------------------------------------------------------------------------
# Default chains (optax-alias style).
# --------------------------------------------------------------------------------------------

def ewc(learning_rate: optax.ScalarOrSchedule, *, strength: float | Array = 1.0,
        max_tasks: int = 1, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
        ) -> optax.GradientTransformation:
    """EWC with Adam: ``chain(quadratic_penalty(strength, num_slots=max_tasks), adam(lr))``.

    Multi-task EWC (Kirkpatrick et al. 2017) consolidates with ``mode="multi_task"``; with
    ``max_tasks=1`` use :func:`online_ewc` semantics. The penalty gradient is added before Adam's
    scaling, as in the paper's loss (van de Ven & Tolias 2019 train EWC with Adam this way).
    """
    return optax.chain(quadratic_penalty(strength=strength, num_slots=max_tasks),
                       optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def online_ewc(learning_rate: optax.ScalarOrSchedule, *, strength: float | Array = 1.0,
               b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
               ) -> optax.GradientTransformation:
    """One-slot quadratic penalty + Adam, the chain of online EWC, SI, MAS and L2.

    The methods differ only at the task boundary: online EWC ``consolidate(mode="online",
    decay=γ)``; SI and MAS ``mode="online", decay=1``; L2 ``mode="replace", importance=None``.
    """
    return optax.chain(quadratic_penalty(strength=strength, num_slots=1),
                       optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


__all__ = ["QuadraticPenaltyState", "quadratic_penalty", "consolidate", "penalty_loss",
           "set_strength", "ewc", "online_ewc"]
