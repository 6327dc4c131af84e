"""Continual-learning methods as optax ``GradientTransformation``s (one family per file).

* :mod:`cljax.transforms.penalty`: the quadratic penalty shared by EWC, online EWC, SI, MAS, L2.

Every transform keeps its hyperparameters (λ, damping) as arrays in its state, and task
boundaries are pure functions returning a new state, so one compiled training step serves the
whole task stream and a ``vmap`` over λ values.
"""
from cljax.transforms.penalty import (QuadraticPenaltyState, consolidate, ewc, online_ewc,
                                      penalty_loss, quadratic_penalty, set_strength)

__all__ = ["QuadraticPenaltyState", "quadratic_penalty", "consolidate", "penalty_loss",
           "set_strength", "ewc", "online_ewc"]
