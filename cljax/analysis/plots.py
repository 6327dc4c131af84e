"""Figures for the forgetting-bound analysis: ``bound.png`` and ``flatness.png`` (matplotlib, Agg).

Both take the analysis results (the NamedTuples of :mod:`cljax.analysis` or their
:func:`cljax.analysis.to_json` dicts, e.g. read back from ``results.json``) and write a PNG.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _get(result: Any, name: str) -> np.ndarray:
    value = result[name] if isinstance(result, Mapping) else getattr(result, name, None)
    if value is None:
        raise ValueError(f"result has no '{name}' (expected a forgetting_bound / flatness result "
                         "or its to_json dict)")
    return np.asarray(value, float)


def plot_bound(result: Any, path: str | os.PathLike = "bound.png", *,
               title: str | None = None) -> str:
    """Log-log scatter of the measured loss increase ℓ_i(θ*_j) − ℓ_i(θ*_i) (x) against the
    quadratic estimate ½ΔθᵀH_iΔθ and the bound ½λ_max‖Δθ‖² (y), one point per pair i < j, with
    the line y = x: points above it over-estimate forgetting (seed 000 eq. 19–20). Log axes when
    every value is positive, symlog otherwise (negative forgetting stays visible).

    Args:
      result: a :class:`cljax.analysis.ForgettingBound` or its ``to_json`` dict.
      path: output file (``bound.png``).
    Returns:
      the path written.
    """
    plt = _pyplot()
    measured, quad, bound = (_get(result, k) for k in ("measured", "quadratic", "bound"))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    finite = np.isfinite(measured) & np.isfinite(quad) & np.isfinite(bound)
    # log axes when every value is positive; otherwise symlog (a loss can *decrease* when a later
    # task helps an earlier one, and those pairs must stay visible)
    positive = bool(np.all(measured[finite] > 0) and np.all(quad[finite] > 0))
    for values, label, marker in ((quad, "quadratic ½ΔθᵀHΔθ", "o"),
                                  (bound, "bound ½λ_max‖Δθ‖²", "^")):
        ax.scatter(measured[finite], values[finite], marker=marker, alpha=0.75, label=label)
    if finite.any():
        allv = np.concatenate([measured[finite], quad[finite], bound[finite]])
        lo, hi = allv.min(), allv.max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = measured")
        if positive:
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:
            nonzero = np.abs(allv[allv != 0])
            thresh = float(nonzero.min()) if nonzero.size else 1.0
            ax.set_xscale("symlog", linthresh=thresh)
            ax.set_yscale("symlog", linthresh=thresh)
    summary = result["summary"] if isinstance(result, Mapping) else result.summary
    frac = summary.get("frac_measured_le_bound") if summary else None
    ax.set_xlabel("measured forgetting ℓ_i(θ*_j) − ℓ_i(θ*_i)")
    ax.set_ylabel("estimate")
    ax.set_title(title or ("forgetting vs curvature bound" +
                           (f" (bound holds for {100 * frac:.0f}% of pairs)"
                            if frac is not None else "")), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_flatness(runs: Mapping[str, Any], path: str | os.PathLike = "flatness.png", *,
                  title: str | None = None, log_scale: bool = False) -> str:
    """λ_max(H_t) at θ*_t against the task index, one line per regime / run (Mirzadeh et al.
    2020, Fig. 3 style).

    Args:
      runs: ``{label: result}`` where each result is a :class:`cljax.analysis.FlatnessResult`, its
        ``to_json`` dict, a ``ForgettingBound`` (its ``lambda_max``) or a 1-D array of λ_max.
      path: output file (``flatness.png``).
      log_scale: log y axis.
    Returns:
      the path written.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty mapping {label: flatness result or λ_max array}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for label, res in runs.items():
        if isinstance(res, Mapping) or hasattr(res, "lambda_max"):
            lam = _get(res, "lambda_max")
        else:
            lam = np.asarray(res, float)
        if lam.ndim != 1:
            raise ValueError(f"runs[{label!r}]: λ_max must be 1-D (one per task); got {lam.shape}")
        ax.plot(np.arange(1, lam.size + 1), lam, marker="o", label=str(label))
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("task t")
    ax.set_ylabel("λ_max of ∇²ℓ_t at θ*_t")
    if log_scale:
        ax.set_yscale("log")
    ax.set_title(title or "sharpness of each task's solution", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


__all__ = ["plot_bound", "plot_flatness"]
