"""Parameter-importance estimators for continual learning.

All estimators are pure functions ``f(logits_fn, params, batch, ...)`` returning a pytree with the
params' structure, shapes and dtypes, equal to a **mean over the examples of ``batch``**:

* :func:`empirical_fisher_diagonal`, :func:`true_fisher_diagonal`, :func:`exact_fisher_diagonal`,
  :func:`argmax_fisher_diagonal`
  (Kirkpatrick et al. 2017; Martens 2020 for the names),
* :func:`mas_importance` (Aljundi et al. 2018),
* :func:`kfac_factors` (Martens & Grosse 2015; Grosse & Martens 2016 for conv) and the helpers
  :func:`kfac_quadratic_form`, :func:`kfac_matvec`, :func:`kfac_damped_inverse_matvec`,
* SI (Zenke et al. 2017): the path integral ω, one :class:`PathIntegralState`
  (:func:`init_path_integral`), its step :func:`accumulate_path_integral`, the same kept in optax
  state (:func:`track_path_integral`, :func:`with_path_integral`,
  :func:`reset_path_integral`, :func:`get_path_integral`), and :func:`si_importance`,
* RWalk's running Fisher kept during training (Chaudhry et al. 2018, eq. 10;
  :class:`RunningFisherState`, :func:`init_running_fisher`, :func:`update_running_fisher`, :func:`is_fold_step`,
  :func:`restart_window`) and
  :func:`minmax_normalize`, the rescaling to [0, 1] of A-GEM's and RWalk's code,
* RWalk's score (Chaudhry et al. 2018; :class:`RWalkScoreState`, :func:`init_rwalk_score`,
  :func:`fold_rwalk_score`, :func:`fold_rwalk_importance`).

Flax ``nn.Dense`` / ``nn.Conv`` layers use a fast path (captured layer inputs and output
cotangents, one matmul per layer); other parameters fall back to ``vmap`` over examples.
"""
from cljax.importance.fisher import (
                                     argmax_fisher_diagonal,
                                     empirical_fisher_diagonal,
                                     exact_fisher_diagonal,
                                     true_fisher_diagonal,
)
from cljax.importance.kfac import (
                                     kfac_damped_inverse_matvec,
                                     kfac_factors,
                                     kfac_matvec,
                                     kfac_quadratic_form,
)
from cljax.importance.mas import mas_importance
from cljax.importance.running_fisher import (
                                     RunningFisherState,
                                     init_running_fisher,
                                     is_fold_step,
                                     minmax_normalize,
                                     restart_window,
                                     update_running_fisher,
)
from cljax.importance.rwalk import (
                                     RWALK_IMPORTANCE_FOLDS,
                                     RWalkScoreState,
                                     fold_rwalk_importance,
                                     fold_rwalk_score,
                                     init_rwalk_score,
)
from cljax.importance.si import (
                                     PathIntegralState,
                                     WithPathIntegralState,
                                     accumulate_path_integral,
                                     get_path_integral,
                                     init_path_integral,
                                     reset_path_integral,
                                     si_importance,
                                     track_path_integral,
                                     with_path_integral,
)

__all__ = [
    "empirical_fisher_diagonal", "true_fisher_diagonal", "exact_fisher_diagonal",
    "argmax_fisher_diagonal",
    "mas_importance",
    "RunningFisherState", "init_running_fisher", "update_running_fisher", "is_fold_step",
    "restart_window", "minmax_normalize",
    "RWalkScoreState", "init_rwalk_score", "fold_rwalk_score", "fold_rwalk_importance",
    "RWALK_IMPORTANCE_FOLDS",
    "kfac_factors", "kfac_quadratic_form", "kfac_matvec", "kfac_damped_inverse_matvec",
    "PathIntegralState", "WithPathIntegralState", "init_path_integral", "accumulate_path_integral",
    "track_path_integral", "with_path_integral",
    "reset_path_integral", "get_path_integral", "si_importance",
]
