"""Checks and conventions shared by the transform families (penalty, K-FAC penalty, NCL)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax.types import Importance
from cljax.validation import check_finite, check_in_unit_interval, is_concrete

NO_PARAMS = ("{name}.update requires the current parameters: call update(updates, state, params, "
             "...) (got params=None)")


def float_dtype() -> Any:
    """Default float dtype (float64 under ``jax.enable_x64``)."""
    return jnp.result_type(float)


def check_decay(decay: Any) -> None:
    """γ ∈ (0, 1] for concrete values (shared by the penalty and NCL families)."""
    check_in_unit_interval(decay, name="decay", scalar=True)


def check_importance_values(importance: Importance, *, name: str = "importance") -> None:
    """Concrete importance leaves are finite and ≥ 0 (NaN and inf are rejected)."""
    check_finite(importance, name=name)
    for path, leaf in jax.tree_util.tree_leaves_with_path(importance):
        if is_concrete(leaf) and bool(np.any(np.asarray(leaf) < 0)):
            raise ValueError(f"{name}{jax.tree_util.keystr(path)} has negative entries; "
                             f"importances must be >= 0 (clip estimates such as SI's at 0, e.g. "
                             f"jax.tree.map(lambda w: jnp.maximum(w, 0), importance))")


def require_state(state: Any, cls: type, *, arg: str, fn: str) -> None:
    """``state`` is a ``cls`` (the CL state a transform or boundary function works on)."""
    if state is None:
        raise ValueError(f"{fn} needs the extra argument {arg}= (a {cls.__name__}): call "
                         f"tx.update(updates, opt_state, params, {arg}=...)")
    if not isinstance(state, cls):
        raise TypeError(f"{arg} must be a {cls.__name__}; got {type(state).__name__}")


def check_decay_for_mode(decay: Any, mode: str) -> None:
    """γ ∈ (0, 1], and γ ≠ 1 only with ``mode="online"`` (shared by the penalty families)."""
    check_decay(decay)
    if mode != "online" and not (is_concrete(decay) and np.all(np.asarray(decay) == 1.0)):
        raise ValueError(f"decay is only used by mode='online'; got decay={decay} with "
                         f"mode={mode!r}")



__all__ = ["NO_PARAMS", "float_dtype", "check_decay", "check_decay_for_mode",
           "check_importance_values", "require_state"]
