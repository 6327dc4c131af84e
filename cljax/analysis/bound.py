"""The curvature bound on forgetting (seed 000 eq. 19–20), measured against actual forgetting.

With Δθ = θ*_j − θ*_i (j > i) and a second-order Taylor expansion of task i's loss around its
solution θ*_i, where ∇ℓ_i(θ*_i) ≈ 0 (seed 000 eq. 19):

    ℓ_i(θ*_j) − ℓ_i(θ*_i) ≈ ½ Δθᵀ H_i Δθ ≤ ½ λ_max(H_i) ‖Δθ‖²          (eq. 20)

with H_i = ∇²ℓ_i(θ*_i). :func:`forgetting_bound` reports, for every pair i < j, the measured loss
increase, the quadratic estimate (one HVP at θ*_i), the first-order term ∇ℓ_i(θ*_i)ᵀΔθ that the
expansion drops, and the bound, plus how often the bound holds and how λ_max relates to
forgetting across tasks (Mirzadeh et al. 2020: flatter minima forget less).

Conventions: tasks are 0-based in arrays. ``losses[a, b]`` / ``accuracy[a, b]`` are task b's loss
/ accuracy with θ*_a (row = "after training task a", column = evaluated task, the layout of the
accuracy matrix R of REFERENCES.md "Metrics"). Pair arrays are ordered (0,1), (0,2), …, (1,2), ….
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cljax.analysis.flatness import (
    TaskData,
    flatness,
    grad_and_hvp,
    task_slice,
    validate_task_inputs,
)
from cljax.curvature.hvp import (
    PerExampleLoss,
    softmax_cross_entropy,
    task_ggn_vp,
    weighted_task_sum,
)
from cljax.types import LogitsFn, Params, PRNGKey
from cljax.validation import check_positive_int


class ForgettingBound(NamedTuple):
    """Result of :func:`forgetting_bound` (numpy arrays; ``P = T(T−1)/2`` pairs).

    * ``losses [T, T]``: ``losses[a, b] = ℓ_b(θ*_a)``; ``accuracy [T, T]`` likewise (argmax of
      the logits vs ``y``; NaN without labels).
    * ``lambda_max [T]``: λ_max(H_i) at θ*_i; ``grad_norm [T]``: ‖∇ℓ_i(θ*_i)‖.
    * ``pair_i [P]``, ``pair_j [P]``: the tasks of each pair (i < j).
    * ``measured [P]``: ℓ_i(θ*_j) − ℓ_i(θ*_i).
    * ``quadratic [P]``: ½ Δθᵀ H_i Δθ.
    * ``first_order [P]``: ∇ℓ_i(θ*_i)ᵀ Δθ (dropped by eq. 19; measured ≈ first_order + quadratic).
    * ``bound [P]``: ½ λ_max(H_i) ‖Δθ‖²; ``delta_sq_norm [P]``: ‖Δθ‖².
    * ``summary``: dict of scalars, see :func:`summarize`.
    """

    losses: np.ndarray
    accuracy: np.ndarray
    lambda_max: np.ndarray
    grad_norm: np.ndarray
    pair_i: np.ndarray
    pair_j: np.ndarray
    measured: np.ndarray
    quadratic: np.ndarray
    first_order: np.ndarray
    bound: np.ndarray
    delta_sq_norm: np.ndarray
    summary: dict


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------

def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's ρ)."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):
        tie = a == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation; NaN with fewer than 2 finite pairs or zero variance."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return pearson(_ranks(a[ok]), _ranks(b[ok]))


def _median_ratio(num: np.ndarray, den: np.ndarray) -> float:
    ok = np.isfinite(num) & np.isfinite(den) & (den > 0)
    return float(np.median(num[ok] / den[ok])) if ok.any() else math.nan


def summarize(measured: Any, quadratic: Any, bound: Any, lambda_max: Any, losses: Any,
              pair_i: Any, pair_j: Any, *, rtol: float = 1e-6) -> dict:
    """Summary statistics of a forgetting-bound analysis.

    * ``num_pairs``;
    * ``frac_measured_le_bound``: fraction of pairs with measured ≤ bound (the bound "holds");
    * ``frac_quadratic_le_bound``: same for the quadratic estimate (1 up to Lanczos error,
      tolerance ``rtol·bound``; a check of λ_max);
    * ``frac_measured_le_quadratic``;
    * ``median_ratio_measured_to_bound``, ``median_ratio_measured_to_quadratic``,
      ``median_ratio_quadratic_to_bound``: medians over pairs with a positive denominator;
    * ``pearson_measured_bound`` / ``spearman_measured_bound`` and the same for ``quadratic``:
      correlations over pairs;
    * ``final_forgetting [T−1]``: ℓ_i(θ*_T) − ℓ_i(θ*_i) for i < T, and
      ``pearson_lambda_max_forgetting`` / ``spearman_lambda_max_forgetting``: correlation of
      λ_max(H_i) with it across tasks (Mirzadeh et al. 2020). NaN when undefined (< 2 points or
      constant values).
    """
    measured, quadratic, bound = (np.asarray(a, float) for a in (measured, quadratic, bound))
    lambda_max, losses = np.asarray(lambda_max, float), np.asarray(losses, float)
    t = losses.shape[0]
    final = np.asarray([losses[t - 1, i] - losses[i, i] for i in range(t - 1)])
    n = len(measured)
    frac = lambda mask: float(np.mean(mask)) if n else math.nan
    return {
        "num_pairs": n,
        "frac_measured_le_bound": frac(measured <= bound),
        "frac_quadratic_le_bound": frac(quadratic <= bound + rtol * np.abs(bound)),
        "frac_measured_le_quadratic": frac(measured <= quadratic),
        "median_ratio_measured_to_bound": _median_ratio(measured, bound),
        "median_ratio_measured_to_quadratic": _median_ratio(measured, quadratic),
        "median_ratio_quadratic_to_bound": _median_ratio(quadratic, bound),
        "pearson_measured_bound": pearson(measured, bound),
        "spearman_measured_bound": spearman(measured, bound),
        "pearson_measured_quadratic": pearson(measured, quadratic),
        "spearman_measured_quadratic": spearman(measured, quadratic),
        "final_forgetting": final.tolist(),
        "pearson_lambda_max_forgetting": pearson(lambda_max[:t - 1], final),
        "spearman_lambda_max_forgetting": spearman(lambda_max[:t - 1], final),
    }


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------

def forgetting_bound(logits_fn: LogitsFn, params_per_task: Params, task_data: TaskData,
                     key: PRNGKey | None = None, *, lambda_max: Any = None,
                     num_iters: int = 100, tol: float | None = 1e-3,
                     curvature: Literal["hessian", "ggn"] = "hessian",
                     chunk_size: int | None = 1000, counts: Sequence[int] | None = None,
                     per_example_loss: PerExampleLoss | None = None) -> ForgettingBound:
    """Measured forgetting vs the quadratic estimate and the λ_max bound (seed 000 eq. 19–20).

    For every pair i < j, with Δθ = θ*_j − θ*_i and H_i = ∇²ℓ_i(θ*_i) over task i's data:
    measured ℓ_i(θ*_j) − ℓ_i(θ*_i), estimate ½ΔθᵀH_iΔθ (one HVP), bound ½λ_max(H_i)‖Δθ‖².

    Args:
      logits_fn: ``logits_fn(params, batch) -> logits[B, C]``.
      params_per_task: θ*_1..θ*_T as one pytree with a leading task axis ``T >= 2``.
      task_data: per-task evaluation data (sequence of ``T`` batches, or stacked ``[T, N, ...]``
        arrays with optional ``counts``; see :mod:`cljax.analysis.flatness`).
      key: PRNG key for Lanczos; required unless ``lambda_max`` is given.
      lambda_max: ``[T]`` precomputed λ_max(H_i) (e.g. ``flatness(...).lambda_max``); computed
        with :func:`cljax.analysis.flatness` (``num_iters``, ``tol``) when None. Only the first
        ``T − 1`` enter the bound.
      curvature: ``"hessian"`` (default; the bound's H_i) or ``"ggn"`` (Gauss–Newton for both
        the estimate and λ_max).
      chunk_size: examples per chunk (memory bound); ``per_example_loss``: default softmax CE.
    Returns:
      :class:`ForgettingBound` (numpy arrays and a summary dict; see :func:`to_json`).
    """
    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn'; got {curvature!r}")
    if lambda_max is None and key is None:
        raise TypeError("key is required to compute lambda_max (or pass lambda_max=...)")
    num_tasks, stacked, weights = validate_task_inputs(
        logits_fn, params_per_task, task_data, key, counts, chunk_size, per_example_loss)
    if num_tasks < 2:
        raise ValueError(f"forgetting_bound needs at least 2 tasks in params_per_task; got "
                         f"{num_tasks}")
    opts: dict[str, Any] = dict(chunk_size=chunk_size, per_example_loss=per_example_loss)
    if lambda_max is None:
        assert key is not None                     # required without lambda_max, checked above
        check_positive_int(num_iters, name="num_iters")
        lambda_max = flatness(logits_fn, params_per_task, task_data, key, k=1,
                              num_iters=num_iters, tol=tol, curvature=curvature, counts=counts,
                              **opts).lambda_max
    lambda_max = np.asarray(lambda_max, float)
    if lambda_max.shape != (num_tasks,):
        raise ValueError(f"lambda_max must have shape ({num_tasks},) (one per task); got "
                         f"{lambda_max.shape}")
    if not np.all(np.isfinite(lambda_max)):
        raise FloatingPointError("lambda_max contains NaN or inf values")

    losses, accuracy = _loss_matrix(logits_fn, params_per_task, stacked, weights, chunk_size,
                                    per_example_loss)
    pi, pj, quad, first, sq, grad_norm = _pair_terms(logits_fn, params_per_task, stacked,
                                                     weights, curvature, opts)
    measured = losses[pj, pi] - losses[pi, pi]
    bound = 0.5 * lambda_max[pi] * sq
    summary = summarize(measured, quad, bound, lambda_max, losses, pi, pj)
    return ForgettingBound(losses=losses, accuracy=accuracy, lambda_max=lambda_max,
                           grad_norm=grad_norm, pair_i=pi, pair_j=pj, measured=measured,
                           quadratic=quad, first_order=first, bound=bound, delta_sq_norm=sq,
                           summary=summary)


def _loss_matrix(logits_fn, params_per_task, stacked, weights, chunk_size, per_example_loss):
    """``(losses, accuracy)`` ``[T, T]``: entry (a, b) is task b's mean loss / accuracy at θ*_a."""
    has_y = "y" in stacked
    loss_of = softmax_cross_entropy if per_example_loss is None else per_example_loss

    @jax.jit
    def row(params_all, batch, w):
        """Task b's loss and accuracy with every θ*_a (a over the task axis), in chunks."""
        def one(params):
            def body(c, w_c):
                logits = logits_fn(params, c)
                loss = jnp.sum(w_c * loss_of(logits, c).astype(w_c.dtype))
                if has_y:
                    hit = (jnp.argmax(logits, axis=-1) == c["y"]).astype(w_c.dtype)
                else:
                    hit = jnp.full(w_c.shape, jnp.nan, w_c.dtype)
                return loss, jnp.sum(w_c * hit)

            (loss, hits), wsum = weighted_task_sum(body, params, batch, w, chunk_size, None)
            return loss / wsum, hits / wsum

        return jax.lax.map(one, params_all)

    num_tasks = len(weights)
    losses = np.zeros((num_tasks, num_tasks))
    accuracy = np.zeros((num_tasks, num_tasks))
    for b in range(num_tasks):
        lb, ab = row(params_per_task, task_slice(stacked, b), weights[b])
        losses[:, b], accuracy[:, b] = np.asarray(lb), np.asarray(ab)
    return losses, accuracy


def _pair_terms(logits_fn, params_per_task, stacked, weights, curvature, opts):
    """For every pair i < j (Δθ = θ*_j − θ*_i, at θ*_i on task i's data): ½ΔθᵀH_iΔθ, ∇ℓ_iᵀΔθ,
    ‖Δθ‖², and every task's gradient norm at its own θ*."""
    @jax.jit
    def pair(params_i, params_j, batch, w):
        delta = jax.tree.map(jnp.subtract, params_j, params_i)
        if curvature == "hessian":
            grad, hd = grad_and_hvp(logits_fn, params_i, batch, delta, weights=w, **opts)
        else:
            grad, _ = grad_and_hvp(logits_fn, params_i, batch, delta, weights=w, **opts)
            hd = task_ggn_vp(logits_fn, params_i, batch, delta, weights=w, **opts)
        dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                                              jax.tree.leaves(b)))
        return 0.5 * dot(delta, hd), dot(grad, delta), dot(delta, delta), jnp.sqrt(dot(grad, grad))

    num_tasks = len(weights)
    pi, pj, quad, first, sq = [], [], [], [], []
    grad_norm = np.full((num_tasks,), np.nan)
    for i in range(num_tasks - 1):
        params_i, batch, w = task_slice(params_per_task, i), task_slice(stacked, i), weights[i]
        for j in range(i + 1, num_tasks):
            q, f, s, gn = pair(params_i, task_slice(params_per_task, j), batch, w)
            pi.append(i)
            pj.append(j)
            quad.append(float(q))
            first.append(float(f))
            sq.append(float(s))
            grad_norm[i] = float(gn)
    last = task_slice(params_per_task, num_tasks - 1)
    *_, gn = pair(last, last, task_slice(stacked, num_tasks - 1), weights[num_tasks - 1])
    grad_norm[num_tasks - 1] = float(gn)
    return (np.asarray(pi), np.asarray(pj), np.asarray(quad), np.asarray(first), np.asarray(sq),
            grad_norm)


def to_json(result: Any) -> Any:
    """A JSON-serialisable copy of an analysis result (NamedTuples → dicts, arrays → lists,
    NaN / inf → None)."""
    if hasattr(result, "_asdict"):
        return {k: to_json(v) for k, v in result._asdict().items()}
    if isinstance(result, dict):
        return {str(k): to_json(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [to_json(v) for v in result]
    if isinstance(result, (jax.Array, np.ndarray, np.generic)):
        return to_json(np.asarray(result).tolist())
    if isinstance(result, float):
        return result if math.isfinite(result) else None
    if result is None or isinstance(result, (bool, int, str)):
        return result
    raise TypeError(f"to_json cannot convert a {type(result).__name__}")


__all__ = ["ForgettingBound", "forgetting_bound", "summarize", "pearson", "spearman", "to_json"]
