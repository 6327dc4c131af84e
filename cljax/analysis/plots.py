"""Figures for the forgetting-bound analysis: ``bound.png`` and ``flatness.png`` (matplotlib, Agg).

Both take the analysis results (the NamedTuples of :mod:`cljax.analysis` or their
:func:`cljax.analysis.to_json` dicts, e.g. read back from ``results.json``) and write a PNG.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def _decade(x: float, up: bool = False) -> int:
    """The power of ten at or below ``x`` (at or above it with ``up``), robust to rounding."""
    e = np.log10(x)
    return int(np.ceil(e - 1e-9) if up else np.floor(e + 1e-9))


def symlog_ticks(values: npt.ArrayLike, *, max_labels: int = 6, small_quantile: float = 0.1,
                 max_decades: int = 5) -> dict:
    """Settings of a readable symlog axis for ``values`` (some ≤ 0): ``linthresh`` a power of
    ten from the data (the ``small_quantile`` of the non-zero magnitudes, but at most
    ``max_decades`` below the largest, so values near zero sit in the linear part instead of
    stretching the axis over many empty decades), the labelled ticks (0 and every ``stride``-th
    decade, at most ~``max_labels`` of them, never crowding 0), unlabelled minor ticks at the
    other decades, and limits at the decades beyond the data.

    Returns ``{"linthresh", "major", "minor", "limits"}`` (``linthresh`` None when every value
    is 0 or non-finite: use a linear axis).
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    nonzero = np.abs(v[v != 0])
    if nonzero.size == 0:
        return {"linthresh": None, "major": [0.0], "minor": [], "limits": (-1.0, 1.0)}
    top = float(nonzero.max())
    k_lin = _decade(max(float(np.quantile(nonzero, small_quantile)), top * 10.0 ** -max_decades))
    lin = 10.0 ** k_lin
    neg = -float(v.min()) if v.min() < 0 else 0.0
    pos = float(v.max()) if v.max() > 0 else 0.0
    k_neg = max(_decade(neg, up=True), k_lin) if neg > 0 else None
    k_pos = max(_decade(pos, up=True), k_lin) if pos > 0 else None
    n = sum(k - k_lin + 1 for k in (k_neg, k_pos) if k is not None)
    stride = max(1, int(np.ceil(n / max(max_labels - 1, 1))))
    # Labels every stride-th decade counted from each side's outer end (the limit is labelled).
    # With stride 1, ±linthresh is one decade-width from 0 (linscale 1), as far as the next
    # decade; with stride > 1 no label comes closer to 0 than one stride, so none crowd 0.
    nearest = k_lin + stride - 1  # decade k sits 1 + (k - k_lin) decade-widths from 0
    major: list[float] = [0.0]
    minor: list[float] = []
    for sign, k_max in ((-1.0, k_neg), (1.0, k_pos)):
        if k_max is None:
            continue
        for k in range(k_lin, k_max + 1):
            labelled = (k_max - k) % stride == 0 and (k >= nearest or k == k_max)
            (major if labelled else minor).append(sign * 10.0 ** k)
    limits = (-10.0 ** k_neg if k_neg is not None else -0.5 * lin,
              10.0 ** k_pos if k_pos is not None else 0.5 * lin)
    return {"linthresh": lin, "major": sorted(major), "minor": sorted(minor), "limits": limits}


def _scale_axis(ax, which: str, values: np.ndarray) -> float | None:
    """Log when every finite value is positive, else a readable symlog (:func:`symlog_ticks`);
    returns the symlog's linthresh (None for a log or linear axis)."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    v = values[np.isfinite(values)]
    if v.size == 0:
        return None
    axis = ax.xaxis if which == "x" else ax.yaxis
    set_scale, set_lim = ((ax.set_xscale, ax.set_xlim) if which == "x"
                          else (ax.set_yscale, ax.set_ylim))
    if np.all(v > 0):
        set_scale("log")
        return None
    ticks = symlog_ticks(v, max_labels=6 if which == "x" else 8)
    if ticks["linthresh"] is None:
        return None
    set_scale("symlog", linthresh=ticks["linthresh"], linscale=1.0)
    axis.set_major_locator(FixedLocator(ticks["major"]))
    axis.set_minor_locator(FixedLocator(ticks["minor"]))
    axis.set_minor_formatter(NullFormatter())
    set_lim(*ticks["limits"])
    return ticks["linthresh"]


def _diagonal(x: np.ndarray, y: np.ndarray, x_lin: float | None, y_lin: float | None
              ) -> np.ndarray:
    """Points of the line y = x over the data's range, dense enough to draw it on log / symlog
    axes; on a log y axis only where x is in its own log range (a straight line there, no kink
    at x's linear threshold)."""
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    if y_lin is None and np.all(y > 0):  # log y: the positive part
        lo = max(float(y.min()), x_lin or 0.0, float(x[x > 0].min()) if np.any(x > 0) else hi)
        return np.geomspace(lo, hi, 100) if 0 < lo < hi else np.array([])
    small = max(abs(lo), abs(hi)) * 1e-9
    pts = [np.linspace(lo, hi, 400)]
    if hi > small:
        pts.append(np.geomspace(max(small, lo), hi, 400))
    if lo < -small:
        pts.append(-np.geomspace(small, -lo, 400))
    t = np.unique(np.concatenate(pts))
    return t[(t >= lo) & (t <= hi)]


def plot_bound(result: Any, path: str | os.PathLike = "bound.png", *,
               title: str | None = None) -> str:
    """Log-log scatter of the measured loss increase ℓ_i(θ*_j) − ℓ_i(θ*_i) (x) against the
    quadratic estimate ½ΔθᵀH_iΔθ and the bound ½λ_max‖Δθ‖² (y), one point per pair i < j, with
    the line y = x: points above it over-estimate forgetting (seed 000 eq. 19–20). Each axis is
    log when its values are all positive, else symlog (negative forgetting stays visible) with
    the linear threshold and the ticks chosen from the data (:func:`symlog_ticks`).

    Args:
      result: a :class:`cljax.analysis.ForgettingBound` or its ``to_json`` dict.
      path: output file (``bound.png``).
    Returns:
      the path written.
    """
    _save(bound_figure(result, title=title), path)
    return str(path)


def bound_figure(result: Any, *, title: str | None = None) -> Figure:
    """The figure of :func:`plot_bound` (a matplotlib Figure, Agg), not saved."""
    plt = _pyplot()
    measured, quad, bound = (_get(result, k) for k in ("measured", "quadratic", "bound"))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    finite = np.isfinite(measured) & np.isfinite(quad) & np.isfinite(bound)
    for values, label, marker in ((quad, "quadratic ½ΔθᵀHΔθ", "o"),
                                  (bound, "bound ½λ_max‖Δθ‖²", "^")):
        ax.scatter(measured[finite], values[finite], marker=marker, alpha=0.75, label=label)
    if finite.any():
        # each axis log when its values are all positive; otherwise symlog (a loss can
        # *decrease* when a later task helps an earlier one, and those pairs must stay visible)
        x, y = measured[finite], np.concatenate([quad[finite], bound[finite]])
        if np.any(x <= 0) and np.any(y <= 0):  # both symlog: one scale, so y = x is straight
            both = np.concatenate([x, y])
            diag = _diagonal(x, y, _scale_axis(ax, "x", both), _scale_axis(ax, "y", both))
        else:
            diag = _diagonal(x, y, _scale_axis(ax, "x", x), _scale_axis(ax, "y", y))
        if diag.size:
            xlim, ylim = ax.get_xlim(), ax.get_ylim()
            ax.plot(diag, diag, "k--", lw=1, label="y = measured")
            ax.set_xlim(xlim)
            ax.set_ylim(ylim)
    summary = result["summary"] if isinstance(result, Mapping) else result.summary
    frac = summary.get("frac_measured_le_bound") if summary else None
    ax.set_xlabel("measured forgetting ℓ_i(θ*_j) − ℓ_i(θ*_i)")
    ax.set_ylabel("estimate")
    ax.set_title(title or ("forgetting vs curvature bound" +
                           (f" (bound holds for {100 * frac:.0f}% of pairs)"
                            if frac is not None else "")), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _save(fig, path: str | os.PathLike) -> None:
    """PNG, atomically (rendered in memory, then temp file + rename)."""
    import io

    from cljax.workdir import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _pyplot().close(fig)
    write_bytes_atomic(path, buf.getvalue())


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
    _save(fig, path)
    return str(path)


def plot_paths(paths: Mapping[str, Any], path: str | os.PathLike = "connectivity.png", *,
               title: str | None = None) -> str:
    """Each task's loss along the linear path from θ*_t (t = 0) to θ*_T (t = 1), one line per
    task, the barrier in the legend (:func:`cljax.analysis.forgetting_paths`'s result or its
    ``to_json`` dict). Returns the path written."""
    t = np.asarray(paths["t"], float)
    loss = np.asarray([[np.nan if v is None else v for v in row] for row in paths["loss"]],
                      float)
    if loss.ndim != 2 or loss.shape[1] != t.size:
        raise ValueError(f"paths['loss'] must be [T - 1, {t.size}]; got {loss.shape}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for i, row in enumerate(loss):
        barrier = paths["barrier"][i]
        ax.plot(t, row, marker=".", label=f"T{i + 1}" + ("" if barrier is None else
                                                           f" (barrier {barrier:.3g})"))
    ax.set_xlabel("path from θ*_t (0) to θ*_T (1)")
    ax.set_ylabel("task t's mean test loss")
    ax.set_title(title or "forgetting along the path to the final parameters", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    return str(path)


def plot_sharpness_paths(paths: Mapping[str, Any], sharpness: Mapping[str, Any],
                         path: str | os.PathLike = "sharpness_paths.png", *,
                         title: str | None = None) -> str:
    """Flatness, connectivity and measured forgetting of one run in one figure: left, λ_max of
    each task's loss at θ*_t; middle, task t's loss rise ℓ_t(θ(s)) − ℓ_t(θ*_t) along the linear
    path from θ*_t (s = 0) to θ*_T (s = 1) — at s = 1 the measured forgetting — beside the bound
    ½·λ_max(θ*_t)·s²·‖θ*_T − θ*_t‖² (dashed, same colour; symlog axis); right, λ_max of task t's
    loss at the points of that path. Takes :func:`cljax.analysis.forgetting_paths`' and
    :func:`cljax.analysis.sharpness_paths`' results (or their ``to_json`` dicts). Returns the
    path written."""
    s_loss = np.asarray(paths["t"], float)
    loss = np.asarray([[np.nan if v is None else v for v in row] for row in paths["loss"]],
                      float)
    s_lam = np.asarray(sharpness["t"], float)
    lam = np.asarray([[np.nan if v is None else v for v in row]
                      for row in sharpness["lambda_max"]], float)
    sq = np.asarray([np.nan if v is None else v for v in sharpness["delta_sq_norm"]], float)
    if loss.ndim != 2 or loss.shape[1] != s_loss.size:
        raise ValueError(f"paths['loss'] must be [T - 1, {s_loss.size}]; got {loss.shape}")
    if lam.shape != (loss.shape[0], s_lam.size) or sq.shape != (loss.shape[0],):
        raise ValueError(f"sharpness must hold [T - 1 = {loss.shape[0]}, {s_lam.size}] λ_max and "
                         f"{loss.shape[0]} squared distances; got {lam.shape} and {sq.shape}")
    plt = _pyplot()
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(14.0, 4.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    tasks = np.arange(1, lam.shape[0] + 1)
    ax.plot(tasks, lam[:, 0], marker="o")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("task t")
    ax.set_ylabel("λ_max of ∇²ℓ_t at θ*_t")
    ax.set_title("flatness", fontsize=9)
    for i in range(loss.shape[0]):
        c = colours[i % len(colours)]
        bx.plot(s_loss, loss[i] - loss[i, 0], "-", marker=".", color=c, label=f"T{i + 1} measured")
        bx.plot(s_loss, 0.5 * lam[i, 0] * sq[i] * s_loss ** 2, "--", color=c,
                label=f"T{i + 1} bound")
        cx.plot(s_lam, lam[i], marker="o", color=c, label=f"T{i + 1}")
    bx.set_yscale("symlog", linthresh=1e-2)
    bx.set_xlabel("path from θ*_t (0) to θ*_T (1)")
    bx.set_ylabel("ℓ_t(θ(s)) − ℓ_t(θ*_t)")
    bx.set_title("connectivity and forgetting (dashed: ½ λ_max s² ‖Δθ‖²)", fontsize=9)
    bx.legend(fontsize=6, ncol=2)
    cx.set_xlabel("path from θ*_t (0) to θ*_T (1)")
    cx.set_ylabel("λ_max of ∇²ℓ_t on the path")
    cx.set_title("sharpness along the path", fontsize=9)
    cx.legend(fontsize=7)
    fig.suptitle(title or "flatness, connectivity and forgetting", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return str(path)


def plot_multitask_paths(paths: Mapping[str, Any],
                         path: str | os.PathLike = "multitask_connectivity.png", *,
                         title: str | None = None) -> str:
    """MC-SGD's figure (Mirzadeh et al. 2021): left, the seen tasks' loss from θ*_t along the
    path to the next continual solution (dashed) and to the multitask solution (solid), one
    colour per t; right, how far each path climbs above its start, per t (the ``rise`` of
    :func:`cljax.analysis.multitask_paths`, whose result or ``to_json`` dict it takes). Returns
    the path written."""
    t = np.asarray(paths["t"], float)
    rows = {k: np.asarray([[np.nan if v is None else v for v in row] for row in paths[k]], float)
            for k in ("continual", "multitask")}
    for k, v in rows.items():
        if v.ndim != 2 or v.shape[1] != t.size:
            raise ValueError(f"paths[{k!r}] must be [T - 1, {t.size}]; got {v.shape}")
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i in range(rows["continual"].shape[0]):
        c = colours[i % len(colours)]
        ax.plot(t, rows["continual"][i], "--", color=c, label=f"θ*_{i + 1} → θ*_{i + 2}")
        ax.plot(t, rows["multitask"][i], "-", color=c, label=f"θ*_{i + 1} → multitask ŵ_{i + 2}")
    ax.set_xlabel("linear path from θ*_t (0) to the next solution (1)")
    ax.set_ylabel("mean test loss of tasks 1 … t")
    ax.legend(fontsize=6, ncol=2)
    n = rows["continual"].shape[0]
    x = np.arange(n)
    rise = {k: rows[k].max(axis=1) - rows[k][:, 0] for k in ("continual", "multitask")}
    bx.bar(x - 0.2, rise["continual"], 0.4, label="to the next continual solution")
    bx.bar(x + 0.2, rise["multitask"], 0.4, label="to the multitask solution")
    bx.set_xticks(x, [f"from θ*_{i + 1}" for i in range(n)])
    bx.set_ylabel("rise on the path (max − start)")
    bx.legend(fontsize=7)
    fig.suptitle(title or "continual vs multitask connectivity", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return str(path)


__all__ = ["bound_figure", "plot_bound", "plot_flatness", "plot_paths", "plot_multitask_paths",
           "plot_sharpness_paths", "symlog_ticks"]
