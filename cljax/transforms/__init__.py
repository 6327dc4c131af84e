"""Continual-learning methods as optax ``GradientTransformation``s (one family per file).

* :mod:`cljax.transforms.penalty`: the quadratic penalty shared by EWC, online EWC, SI, MAS, L2.
* :mod:`cljax.transforms.kfac_penalty`: the K-FAC Laplace penalty (Ritter et al. 2018).
* :mod:`cljax.transforms.ncl`: natural continual learning (Kao et al. 2021), diagonal and K-FAC.
* :mod:`cljax.transforms.kfac_gradient`: K-FAC-preconditioned gradients formed inside the
  backward pass (the rank-B trick NCL K-FAC uses to stay cheap).
* :mod:`cljax.transforms.projection`: gradient projections against a reference (A-GEM, GEM).
* :mod:`cljax.transforms.rgo`, :mod:`~cljax.transforms.gpm`, :mod:`~cljax.transforms.ogd`:
  RGO's recursive projection, GPM's per-layer bases, OGD's gradient store.

What past tasks leave behind (anchors, importances, priors) is a NamedTuple the caller holds
beside the optimizer state and passes to ``update`` as an optax extra argument; hyperparameters
(λ) are factory arguments, so build the transform inside the jitted step from the current values
(as optax's learning rates): nothing recompiles when λ changes and λ can be a ``vmap`` axis.
Task boundaries are pure functions of that state. Chain → extra argument → boundary, per method:

- EWC (multi-task): ``ewc(lr, strength=λ)`` → ``penalty_state=`` →
  ``consolidate(ps, θ, F, mode="multi_task")`` (``ps = init_penalty(params)`` before task 1)
- online EWC: the same with ``consolidate(ps, θ, F, mode="online", decay=γ)``
- SI / MAS: ``consolidate(ps, θ, Ω, mode="online")``; L2: ``consolidate(ps, θ, None, mode="replace")``
- K-FAC Laplace: ``kfac_ewc(lr, strength=λ)`` → ``kfac_penalty_state=`` →
  ``kfac_consolidate(ks, θ, factors)`` (``init_kfac_penalty(params, num_slots=T)`` with
  ``mode="multi_task"`` for exact per-task penalties)
- NCL diagonal: ``ncl(lr)`` → ``ncl_state=`` → ``ncl_consolidate(ns, θ, F, strength=s, damping=d)``
- NCL K-FAC: ``ncl_kfac(lr)`` → ``ncl_state=`` → ``ncl_kfac_consolidate(ns, θ, factors, ...)``
  (faster: gradients from ``ncl_kfac_value_and_grad`` into
  ``ncl_kfac(..., preconditioned_gradients=True)``)
- A-GEM: ``agem_projection()`` first in the chain → ``reference_grads=`` (a memory gradient)
- GEM: ``gem_projection()`` → ``reference_grads=`` stacked per past task and ``reference_mask=``

(``ewc``/``kfac_ewc`` = penalty, then ``optax.adam``; ``ncl``/``ncl_kfac`` = preconditioner,
then ``optax.sgd``.)
"""
from cljax.transforms.kfac_gradient import kfac_preconditioned_value_and_grad
from cljax.transforms.kfac_penalty import (KFACPenaltyState, init_kfac_penalty, kfac_consolidate,
                                           kfac_ewc, kfac_penalty, kfac_penalty_loss,
                                           nearest_kronecker_sum)
from cljax.transforms.ncl import (NCLDiagState, NCLKFACState, init_ncl, init_ncl_kfac, ncl,
                                  ncl_consolidate, ncl_kfac, ncl_kfac_consolidate,
                                  ncl_kfac_preconditioner, ncl_kfac_value_and_grad,
                                  ncl_preconditioner)
from cljax.transforms.penalty import (QuadraticPenaltyState, consolidate, ewc, init_penalty,
                                      penalty_loss, quadratic_penalty)
from cljax.transforms.gpm import (GPMState, gpm_project, gpm_projection, gpm_update,
                                  gpm_value_and_grad, init_gpm)
from cljax.transforms.ogd import OGDState, init_ogd, ogd_add, ogd_project, ogd_projection
from cljax.transforms.projection import (agem_project, agem_projection, gem_dual, gem_project,
                                         gem_projection)
from cljax.transforms.rgo import (RGOState, init_rgo, rgo_accumulate, rgo_consolidate,
                                  rgo_projection, rgo_value_and_grad)

__all__ = [
    # quadratic penalty (EWC, online EWC, SI, MAS, L2)
    "QuadraticPenaltyState", "init_penalty", "quadratic_penalty", "consolidate", "penalty_loss",
    "ewc",
    # K-FAC Laplace penalty
    "KFACPenaltyState", "init_kfac_penalty", "kfac_penalty", "kfac_consolidate",
    "kfac_penalty_loss", "kfac_ewc", "nearest_kronecker_sum",
    # NCL
    "NCLDiagState", "NCLKFACState", "init_ncl", "init_ncl_kfac", "ncl_preconditioner",
    "ncl_consolidate", "ncl_kfac_preconditioner", "ncl_kfac_consolidate",
    "ncl_kfac_value_and_grad", "ncl", "ncl_kfac", "kfac_preconditioned_value_and_grad",
    # gradient projections (A-GEM, GEM, RGO, GPM, OGD)
    "agem_project", "agem_projection", "gem_dual", "gem_project", "gem_projection",
    "RGOState", "init_rgo", "rgo_accumulate", "rgo_consolidate", "rgo_projection",
    "rgo_value_and_grad", "GPMState", "init_gpm", "gpm_update", "gpm_project", "gpm_projection", "gpm_value_and_grad",
    "OGDState", "init_ogd", "ogd_add", "ogd_project", "ogd_projection",
]
