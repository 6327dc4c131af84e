"""Checks and conventions shared by the transform families (quadratic penalty, NCL, projections)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.curvature.structured import Curvature, Diagonal, KroneckerFactored, kronecker_factored
from cljax.types import Importance, Params
from cljax.validation import (
    check_finite,
    check_in_unit_interval,
    check_instance,
    check_nonnegative_leaves,
    check_same_structure,
    is_concrete,
)

NO_PARAMS = ("{name}.update requires the current parameters: call update(updates, state, params, "
             "...) (got params=None)")


def check_decay(decay: Any) -> None:
    """γ ∈ (0, 1] for concrete values (shared by the penalty and NCL families)."""
    check_in_unit_interval(decay, name="decay", scalar=True)


def check_importance_values(importance: Importance, *, name: str = "importance") -> None:
    """Concrete importance leaves are finite and ≥ 0 (NaN and inf are rejected)."""
    check_finite(importance, name=name)
    check_nonnegative_leaves(importance, name=name, hint=(
        "importances must be >= 0 (clip estimates such as SI's at 0, e.g. "
        "jax.tree.map(lambda w: jnp.maximum(w, 0), importance))"))


def _missing_message(fn: str, required: Mapping[str, type | str], missing: list[str]) -> str:
    """``fn needs the extra argument(s) a= (what a is) ...: call tx.update(...)``."""
    what = lambda kind: f"a {kind.__name__}" if isinstance(kind, type) else kind
    args = " and ".join(f"{k}= ({what(required[k])})" for k in missing)
    call = ", ".join(f"{k}=..." for k in required)
    return (f"{fn} needs the extra argument{'s' if len(missing) > 1 else ''} {args}: call "
            f"tx.update(updates, opt_state, params, {call})")


def require_state(state: Any, cls: type, *, arg: str, fn: str) -> None:
    """``state`` is a ``cls`` (the CL state a transform or boundary function works on)."""
    if state is None:
        raise ValueError(_missing_message(fn, {arg: cls}, [arg]))
    check_instance(state, cls, name=arg)


def stateless_with_extra_args(f: Callable[..., optax.Updates], *, name: str,
                              required: Mapping[str, type | str], needs_params: bool = False
                              ) -> optax.GradientTransformationExtraArgs:
    """A stateless transform whose update needs named optax extra arguments (as
    ``optax.stateless``, with the CL state handed to ``update``).

    Args:
      f: ``f(updates, params, **extra) -> updates``, called with the ``required`` extra
        arguments by keyword (``params`` may be ``None`` unless ``needs_params``).
      name: the transform's name, used in error messages (``"gpm_projection"``).
      required: {extra argument name: what it is}: a type (the argument must be an instance:
        a ``TypeError`` names it otherwise) or a short description for the error message.
      needs_params: ``update`` raises unless ``params`` is given.

    Returns:
      ``GradientTransformationExtraArgs(init, update)``: ``init`` returns ``optax.EmptyState()``;
      ``update(updates, state, params=None, **extra)`` raises a ``ValueError`` naming ``name``
      and every missing (or ``None``) required argument, and ignores extra arguments it does not
      need (an ``optax.chain`` hands every link all of them).
    """
    if not callable(f):
        raise TypeError(f"f must be a callable f(updates, params, **extra); got {type(f).__name__}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str; got {name!r}")
    if not isinstance(required, Mapping) or not required or not all(
            isinstance(k, str) and k and isinstance(v, (type, str)) for k, v in required.items()):
        raise TypeError("required must be a non-empty mapping {extra argument name: type or "
                        f"description}}; got {required!r}")
    if not isinstance(needs_params, bool):
        raise TypeError(f"needs_params must be a bool; got {type(needs_params).__name__}")
    required = dict(required)
    fn = f"{name}.update"

    def update_fn(updates: optax.Updates, state: optax.OptState, params: Params | None = None,
                  **extra_args: Any) -> tuple[optax.Updates, optax.EmptyState]:
        del state
        if needs_params and params is None:
            raise ValueError(NO_PARAMS.format(name=name))
        missing = [k for k in required if extra_args.get(k) is None]
        if missing:
            raise ValueError(_missing_message(fn, required, missing))
        for k, kind in required.items():
            if isinstance(kind, type):
                require_state(extra_args[k], kind, arg=k, fn=fn)
        return f(updates, params, **{k: extra_args[k] for k in required}), optax.EmptyState()

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def check_decay_for_mode(decay: Any, mode: str) -> None:
    """γ ∈ (0, 1], and γ ≠ 1 only with ``mode="online"`` (shared by the penalty families)."""
    check_decay(decay)
    if mode != "online" and not (is_concrete(decay) and np.all(np.asarray(decay) == 1.0)):
        raise ValueError(f"decay is only used by mode='online'; got decay={decay} with "
                         f"mode={mode!r}")


def as_curvature(new: Any, like: Curvature, params: Params) -> Curvature:
    """A task's curvature ``new`` as the type and layers of the accumulated curvature ``like``
    (what the boundary functions :func:`cljax.transforms.consolidate` and
    :func:`cljax.transforms.ncl_consolidate` accept).

    * ``like`` a :class:`~cljax.curvature.Diagonal`: ``new`` is an importance pytree with
      ``params``' structure and shapes (finite, ≥ 0; ``importance`` in error messages), a
      ``Diagonal``, or ``None`` for Ω = 1 (L2).
    * ``like`` a :class:`~cljax.curvature.KroneckerFactored`: ``new`` is a factors dict
      {layer: KFACFactors(A, G)} (finite; ``factors`` in error messages; tracked layers it
      omits get no curvature, layers ``like`` does not track raise) or a ``KroneckerFactored``
      over ``like``'s layers.
    """
    if isinstance(like, Diagonal):
        if isinstance(new, KroneckerFactored):
            raise TypeError("importance: the state's curvature is diagonal (init with "
                            "curvature='diagonal'); got a KroneckerFactored")
        if isinstance(new, Diagonal):
            check_same_structure(new.values, params, name="importance")
            check_importance_values(new.values)
            return new
        if new is None:
            return Diagonal(jax.tree.map(jnp.ones_like, params))
        check_same_structure(new, params, name="importance")
        check_importance_values(new)
        return Diagonal(new)
    if new is None or isinstance(new, Diagonal):
        raise TypeError("factors: the state's curvature is Kronecker-factored (init with "
                        "curvature='kfac'); it needs the task's factors {layer name: "
                        f"KFACFactors(A, G)}} or a KroneckerFactored; got "
                        f"{type(new).__name__}")
    if isinstance(new, KroneckerFactored):
        check_finite(new, name="factors")
        return new
    return kronecker_factored(params, new, layers=list(like.factors))


__all__ = ["NO_PARAMS", "check_decay", "check_decay_for_mode",
           "check_importance_values", "require_state", "stateless_with_extra_args",
           "as_curvature"]
