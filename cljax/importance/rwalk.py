"""RWalk's parameter-importance score (Chaudhry et al. 2018, "Riemannian Walk for Incremental
Learning"), as A-GEM's code computes it (facebookresearch/agem ``model.py``, unchanged from
5e84338 to its last commit).

Like SI's path integral, every step adds −g·Δθ (the task loss's gradient times the update
applied) to ω; unlike SI, every ``window`` steps the window's ω is divided by the *Riemannian*
length of the window's move, the running Fisher times its squared displacement
(:mod:`cljax.importance.running_fisher`), and the window restarts:

    s ← s + max(ω / (ξ + F ⊙ (θ − θ_fold)²), 0),   θ_fold ← θ,   ω ← 0.

At the task's end the task's score s_t joins the kept importance S (:func:`fold_rwalk_importance`)
and s, ω restart. The penalty of RWalk is then λ Σ (F̂ + Ŝ) Δθ², both rescaled to [0, 1]
(:func:`cljax.importance.minmax_normalize`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import validation
from cljax.types import Array, Params
from cljax.validation import check_choice

RWALK_IMPORTANCE_FOLDS = ("agem_code", "average")
"""How a task's score s_t joins the kept importance S at the boundary: ``"agem_code"``,
S ← S + (S + s_t)/2, what their ``update_score`` does (``tf.assign_add``); ``"average"``,
S ← (S + s_t)/2, the averaging their comment describes. On the first task, s_t is doubled
first (their ``scale_score``), so both give S = s_1 there."""


class RWalkScoreState(NamedTuple):
    """The current window's path integral ω, the task's score s so far and θ at the last fold
    (params-shaped each)."""

    omega: Params
    score: Params
    fold_params: Params


def init_rwalk_score(params: Params) -> RWalkScoreState:
    """ω = s = 0 and θ_fold = ``params`` (a task's start)."""
    zeros = optax.tree_utils.tree_zeros_like(params)
    return RWalkScoreState(zeros, zeros, jax.tree.map(jnp.asarray, params))


def fold_rwalk_score(state: RWalkScoreState, fisher: Params, params: Params, *,
                     xi: float | Array = 1e-3) -> RWalkScoreState:
    """One fold of the window: s ← s + max(ω / (ξ + F ⊙ (θ − θ_fold)²), 0), θ_fold ← θ, ω ← 0.

    Args:
      state: the score so far (:func:`init_rwalk_score`).
      fisher: the running Fisher before this fold's update (their ``running_fisher``).
      params: θ now (before the step that follows the fold).
      xi: ξ > 0, the damping (their ``PARAM_XI_STEP``, 1e-3).
    """
    validation.check_instance(state, RWalkScoreState, name="state",
                              hint="init_rwalk_score(params)")
    validation.check_same_structure(fisher, state.score, name="fisher",
                                    reference_name="state.score")
    validation.check_same_structure(params, state.score, name="params",
                                    reference_name="state.score")
    validation.check_positive(xi, name="xi")

    def one(s, w, f, p, q):
        length = jnp.asarray(xi, s.dtype) + f.astype(s.dtype) * jnp.square((p - q).astype(s.dtype))
        return (s + jnp.maximum(w.astype(s.dtype) / length, 0)).astype(s.dtype)

    score = jax.tree.map(one, state.score, state.omega, fisher, params, state.fold_params)
    return RWalkScoreState(optax.tree_utils.tree_zeros_like(state.omega), score,
                           jax.tree.map(lambda q, p: jnp.asarray(p, q.dtype), state.fold_params,
                                        params))


def fold_rwalk_importance(importance: Params, score: Params, first_task: bool | Array, *,
                          fold: str = "agem_code") -> Params:
    """The kept importance S after a task whose score is ``score`` (:data:`RWALK_IMPORTANCE_FOLDS`):
    s_t = 2·score on the first task, else score; then S ← S + (S + s_t)/2 (``"agem_code"``) or
    S ← (S + s_t)/2 (``"average"``)."""
    check_choice(fold, RWALK_IMPORTANCE_FOLDS, name="fold")
    validation.check_same_structure(score, importance, name="score", reference_name="importance")
    factor = jnp.where(jnp.asarray(first_task), 2.0, 1.0)

    def one(s, r):
        mean = (s + factor.astype(s.dtype) * r.astype(s.dtype)) / 2
        return (s + mean if fold == "agem_code" else mean).astype(s.dtype)

    return jax.tree.map(one, importance, score)


__all__ = ["RWalkScoreState", "init_rwalk_score", "fold_rwalk_score", "fold_rwalk_importance",
           "RWALK_IMPORTANCE_FOLDS"]
