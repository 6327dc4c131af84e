"""cljax: continual learning in JAX.

Subpackages (each a namespace of pure functions on pytrees):

* :mod:`cljax.importance` — diagonal Fisher (empirical / true / exact), MAS, K-FAC factors, SI.
* :mod:`cljax.curvature` — Hessian / GGN-vector products, Lanczos, Hutchinson, spectral density.
* :mod:`cljax.transforms` — optax transforms: quadratic penalty (EWC, online EWC, SI, MAS, L2),
  K-FAC Laplace penalty, NCL.
* :mod:`cljax.methods` — CL methods as recipes for :func:`cljax.training.run_stream`.
* :mod:`cljax.data`, :mod:`cljax.nn`, :mod:`cljax.training`, :mod:`cljax.metrics`,
  :mod:`cljax.analysis` — streams, models, jitted/vmapped training, metrics, flatness and the
  forgetting bound.
"""
from cljax import (
    analysis,
    curvature,
    data,
    importance,
    methods,
    metrics,
    nn,
    training,
    transforms,
    types,
)
from cljax._version import __version__
from cljax.importance import (
    empirical_fisher_diagonal,
    exact_fisher_diagonal,
    kfac_factors,
    mas_importance,
    si_importance,
    track_path_integral,
    true_fisher_diagonal,
    with_path_integral,
)
from cljax.training import make_trainer, prepare_data, run_stream
from cljax.transforms import consolidate, quadratic_penalty

__all__ = [
    "__version__",
    "analysis", "curvature", "data", "importance", "methods", "metrics", "nn", "training",
    "transforms", "types",
    "empirical_fisher_diagonal", "true_fisher_diagonal", "exact_fisher_diagonal",
    "mas_importance", "kfac_factors", "track_path_integral", "with_path_integral",
    "si_importance", "quadratic_penalty", "consolidate", "make_trainer", "prepare_data",
    "run_stream",
]
