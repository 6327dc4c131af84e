"""Analyses on a finished continual-learning run: per-task flatness (λ_max), the curvature
bound on forgetting (seed 000 eq. 19–20; Mirzadeh et al. 2020) and mode connectivity (the loss
along a path between solutions, low-loss Bézier curves: Garipov et al. 2018). Plots live in
:mod:`cljax.analysis.plots` (imported lazily: matplotlib is only needed to draw)."""
from typing import Any

from cljax.analysis.bound import (
    ForgettingBound,
    forgetting_bound,
    pearson,
    spearman,
    summarize,
    to_json,
)
from cljax.analysis.connectivity import (
    fit_bezier,
    forgetting_paths,
    loss_along_path,
    loss_barrier,
    multitask_paths,
    path_point,
    sharpness_paths,
)
from cljax.analysis.flatness import FlatnessResult, flatness, stack_task_data


def plot_bound(*args: Any, **kwargs: Any) -> str:
    """See :func:`cljax.analysis.plots.plot_bound`."""
    from cljax.analysis.plots import plot_bound as f
    return f(*args, **kwargs)


def plot_paths(*args: Any, **kwargs: Any) -> str:
    """See :func:`cljax.analysis.plots.plot_paths`."""
    from cljax.analysis.plots import plot_paths as f
    return f(*args, **kwargs)


def plot_multitask_paths(*args: Any, **kwargs: Any) -> str:
    """See :func:`cljax.analysis.plots.plot_multitask_paths`."""
    from cljax.analysis.plots import plot_multitask_paths as f
    return f(*args, **kwargs)


def plot_sharpness_paths(*args: Any, **kwargs: Any) -> str:
    """See :func:`cljax.analysis.plots.plot_sharpness_paths`."""
    from cljax.analysis.plots import plot_sharpness_paths as f
    return f(*args, **kwargs)


def plot_flatness(*args: Any, **kwargs: Any) -> str:
    """See :func:`cljax.analysis.plots.plot_flatness`."""
    from cljax.analysis.plots import plot_flatness as f
    return f(*args, **kwargs)


__all__ = ["flatness", "FlatnessResult", "forgetting_bound", "ForgettingBound", "summarize",
           "pearson", "spearman", "to_json", "stack_task_data", "plot_bound", "plot_flatness",
           "plot_paths", "plot_multitask_paths", "plot_sharpness_paths", "path_point",
           "loss_along_path", "loss_barrier", "fit_bezier", "forgetting_paths",
           "sharpness_paths", "multitask_paths"]
