"""Continual-learning methods as optax ``GradientTransformation``s (one family per file).

* :mod:`cljax.transforms.penalty`: the quadratic penalty shared by EWC, online EWC, SI, MAS, L2.
* :mod:`cljax.transforms.kfac_penalty`: the K-FAC Laplace penalty (Ritter et al. 2018).
* :mod:`cljax.transforms.ncl`: natural continual learning (Kao et al. 2021), diagonal and K-FAC.
* :mod:`cljax.transforms.kfac_gradient`: K-FAC-preconditioned gradients formed inside the
  backward pass (the rank-B form NCL K-FAC uses to stay cheap).

Every transform keeps its hyperparameters (λ, damping) as arrays in its state, and task
boundaries are pure functions returning a new state, so one compiled training step serves the
whole task stream and a ``vmap`` over λ values. Recommended chain → task boundary, per method:

- EWC (multi-task): ``ewc(lr, strength=λ)`` → ``consolidate(s, θ, F, mode="multi_task")``
- online EWC: ``online_ewc(lr, strength=λ)`` → ``consolidate(s, θ, F, mode="online", decay=γ)``
- SI: ``online_ewc(lr, strength=c)`` → ``consolidate(s, θ, Ω_SI, mode="online")``
- MAS: ``online_ewc(lr, strength=λ)`` → ``consolidate(s, θ, Ω_MAS, mode="online")``
- L2: ``online_ewc(lr, strength=λ)`` → ``consolidate(s, θ, None, mode="replace")``
- K-FAC Laplace: ``kfac_ewc(lr, strength=λ)`` → ``kfac_consolidate(s, θ, factors)``
  (``kfac_ewc(..., num_slots=T)`` with ``mode="multi_task"`` for exact per-task penalties)
- NCL diagonal: ``ncl(lr, strength=s, damping=d)`` → ``ncl_consolidate(s, θ, F)``
- NCL K-FAC: ``ncl_kfac(lr, strength=s, damping=d)`` → ``ncl_kfac_consolidate(s, θ, factors)``
  (faster: gradients from ``ncl_kfac_value_and_grad`` into
  ``ncl_kfac(..., preconditioned_gradients=True)``)

(``ewc``/``online_ewc``/``kfac_ewc`` = penalty, then ``optax.adam``; ``ncl``/``ncl_kfac`` =
preconditioner, then ``optax.sgd``.) Boundary functions and :func:`set_strength` /
:func:`set_damping` accept the whole optimizer state of the chain.
"""
from cljax.transforms.kfac_gradient import kfac_preconditioned_value_and_grad
from cljax.transforms.kfac_penalty import (KFACPenaltyState, kfac_consolidate, kfac_ewc,
                                           kfac_penalty, kfac_penalty_loss, nearest_kronecker_sum)
from cljax.transforms.ncl import (NCLDiagState, NCLKFACState, ncl, ncl_consolidate, ncl_kfac,
                                  ncl_kfac_consolidate, ncl_kfac_preconditioner,
                                  ncl_kfac_value_and_grad, ncl_preconditioner, set_damping)
from cljax.transforms.penalty import (QuadraticPenaltyState, consolidate, ewc, online_ewc,
                                      penalty_loss, quadratic_penalty, set_strength)

__all__ = [
    # quadratic penalty (EWC, online EWC, SI, MAS, L2)
    "QuadraticPenaltyState", "quadratic_penalty", "consolidate", "penalty_loss", "ewc",
    "online_ewc",
    # K-FAC Laplace penalty
    "KFACPenaltyState", "kfac_penalty", "kfac_consolidate", "kfac_penalty_loss", "kfac_ewc",
    "nearest_kronecker_sum",
    # NCL
    "NCLDiagState", "NCLKFACState", "ncl_preconditioner", "ncl_consolidate",
    "ncl_kfac_preconditioner", "ncl_kfac_consolidate", "ncl_kfac_value_and_grad", "ncl",
    "ncl_kfac", "kfac_preconditioned_value_and_grad",
    # hyperparameters
    "set_strength", "set_damping",
]
