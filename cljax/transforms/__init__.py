"""Continual-learning methods as optax ``GradientTransformation`` objects (one family per file).

* :mod:`cljax.transforms.penalty`: the quadratic penalty shared by EWC, online EWC, SI, MAS, L2
  (diagonal curvature) and the K-FAC Laplace penalty (Ritter et al. 2018; Kronecker-factored).
* :mod:`cljax.transforms.ncl`: natural continual learning (Kao et al. 2021), diagonal or K-FAC.
* :mod:`cljax.transforms.kfac_gradient`: K-FAC-preconditioned gradients formed inside the
  backward pass (the rank-B trick NCL K-FAC uses to stay cheap).
* :mod:`cljax.transforms.projection`: gradient projections against a reference (A-GEM, GEM).
* :mod:`cljax.transforms.rgo`, :mod:`~cljax.transforms.gpm`, :mod:`~cljax.transforms.ogd`:
  RGO's recursive projection, GPM's per-layer bases, OGD's gradient store.
* :mod:`cljax.transforms.stiefel`: the Cayley retraction that keeps chosen kernels on the
  Stiefel manifold (ORTHOG-SUBSPACE's isometric hidden layers), last in a chain.
* :mod:`cljax.transforms.task_decay`: the learning rate decayed per task (Mirzadeh et al.
  2020's stable SGD), the task an extra argument so that a reset optimizer keeps it.

The penalty and NCL each hold a structured curvature (:mod:`cljax.curvature.structured`:
``Diagonal`` or ``KroneckerFactored``), chosen when the state is created
(``curvature="diagonal"|"kfac"``); one transform and one boundary function serve both.

What past tasks leave behind (anchors, curvatures, priors) is a NamedTuple the caller holds
beside the optimizer state and passes to ``update`` as an optax extra argument; hyperparameters
(λ) are factory arguments, so build the transform inside the jitted step from the current values
(as optax's learning rates): nothing recompiles when λ changes and λ can be a ``vmap`` axis.
Task boundaries are pure functions of that state. Chain → extra argument → boundary, per method:

- EWC (multi-task): ``quadratic_penalty_adam(lr, strength=λ)`` → ``penalty_state=`` →
  ``consolidate(ps, θ, F, mode="multi_task")`` (``ps = init_penalty(params)`` before task 1)
- online EWC: the same with ``consolidate(ps, θ, F, mode="online", decay=γ)``
- SI / MAS: ``consolidate(ps, θ, Ω, mode="online")``; L2: ``consolidate(ps, θ, None, mode="replace")``
- K-FAC Laplace: the same chain and ``consolidate(ps, θ, factors, mode="online"|"sum")`` with
  ``ps = init_penalty(params, curvature="kfac")`` (``num_slots=T`` and ``mode="multi_task"``
  for exact per-task penalties)
- NCL: ``ncl(lr)`` → ``ncl_state=`` → ``ncl_consolidate(ns, θ, F, strength=s, damping=d)`` with
  ``ns = init_ncl(params)`` (diagonal F) or ``init_ncl(params, curvature="kfac")`` (factors;
  faster: gradients from ``ncl_kfac_value_and_grad`` into
  ``ncl(..., preconditioned_gradients=True)``)
- A-GEM: ``agem_projection()`` first in the chain → ``reference_grads=`` (a memory gradient)
- GEM: ``gem_projection()`` → ``reference_grads=`` stacked per past task and ``reference_mask=``
- RGO: ``rgo_projection()`` → ``rgo_state=`` → ``rgo_consolidate(rs)`` (``rs = init_rgo(params)``;
  ``rgo_accumulate(rs, rows)`` after every step)
- GPM: ``gpm_projection()`` → ``gpm_state=`` → ``gpm_consolidate(gs, representations, ε)``
  (``gs = init_gpm(params)``)
- OGD: ``ogd_projection()`` → ``ogd_state=`` → ``ogd_consolidate(os, directions)`` with
  ``directions = ground_truth_gradients(logits_fn, θ, batch, os)``
  (``os = init_ogd(params, capacity=...)``)
- Stiefel (ORTHOG-SUBSPACE): ``stiefel_retraction(layers)`` LAST in the chain, after the base
  optimizer (no extra argument; the kernels start orthonormal: ``orthonormalize``)

(``quadratic_penalty_adam`` = penalty, then ``optax.adam``; ``ncl`` = preconditioner, then
``optax.sgd``.)
"""
from cljax.transforms.gpm import (
                                  GPMState,
                                  gpm_consolidate,
                                  gpm_project,
                                  gpm_projection,
                                  gpm_value_and_grad,
                                  init_gpm,
)
from cljax.transforms.kfac_gradient import kfac_preconditioned_value_and_grad
from cljax.transforms.ncl import (
                                  NCLState,
                                  init_ncl,
                                  ncl,
                                  ncl_consolidate,
                                  ncl_kfac_value_and_grad,
                                  ncl_preconditioner,
)
from cljax.transforms.ogd import (
                                  OGDDirections,
                                  OGDState,
                                  factorable_layers,
                                  ground_truth_gradients,
                                  init_ogd,
                                  ogd_consolidate,
                                  ogd_deferred_value_and_grad,
                                  ogd_fold,
                                  ogd_project,
                                  ogd_projection,
                                  ogd_value_and_grad,
                                  ogd_weight_offsets,
                                  update_scale,
)
from cljax.transforms.penalty import (
                                  QuadraticPenaltyState,
                                  consolidate,
                                  init_penalty,
                                  penalty_loss,
                                  quadratic_penalty,
                                  quadratic_penalty_adam,
)
from cljax.transforms.projection import (
                                  agem_project,
                                  agem_projection,
                                  gem_dual,
                                  gem_project,
                                  gem_projection,
)
from cljax.transforms.rgo import (
                                  RGOState,
                                  init_rgo,
                                  rgo_accumulate,
                                  rgo_consolidate,
                                  rgo_projection,
                                  rgo_value_and_grad,
)
from cljax.transforms.stiefel import (
                                  cayley_update,
                                  gram_error,
                                  orthonormalize,
                                  stiefel_retraction,
)
from cljax.transforms.task_decay import scale_by_task_decay, task_decay_scale

__all__ = [
    # quadratic penalty (EWC, online EWC, SI, MAS, L2, K-FAC Laplace)
    "QuadraticPenaltyState", "init_penalty", "quadratic_penalty", "consolidate", "penalty_loss",
    "quadratic_penalty_adam",
    # NCL (diagonal and K-FAC)
    "NCLState", "init_ncl", "ncl_preconditioner", "ncl_consolidate", "ncl_kfac_value_and_grad",
    "ncl", "kfac_preconditioned_value_and_grad",
    # gradient projections (A-GEM, GEM, RGO, GPM, OGD)
    "agem_project", "agem_projection", "gem_dual", "gem_project", "gem_projection",
    "RGOState", "init_rgo", "rgo_accumulate", "rgo_consolidate", "rgo_projection",
    "rgo_value_and_grad", "GPMState", "init_gpm", "gpm_consolidate", "gpm_project",
    "gpm_projection", "gpm_value_and_grad",
    "OGDState", "OGDDirections", "init_ogd", "factorable_layers", "ground_truth_gradients",
    "ogd_consolidate", "ogd_project", "ogd_value_and_grad", "ogd_projection",
    "ogd_weight_offsets", "ogd_fold", "ogd_deferred_value_and_grad", "update_scale",
    # the Stiefel manifold's Cayley retraction (ORTHOG-SUBSPACE)
    "cayley_update", "gram_error", "orthonormalize", "stiefel_retraction",
    # training regimes: the learning rate decayed per task (Mirzadeh et al. 2020)
    "scale_by_task_decay", "task_decay_scale",
]
