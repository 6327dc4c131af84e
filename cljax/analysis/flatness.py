"""Flatness of each task's solution: top Hessian eigenvalues (and trace) of ℓ_t at θ*_t.

Mirzadeh et al. 2020 ("Understanding the role of training regimes in continual learning") relate
forgetting to the sharpness λ_max(∇²ℓ_t(θ*_t)) of each task's minimum, which enters the forgetting
bound of seed 000 eq. 20 (see :mod:`cljax.analysis.bound`). They log the top eigenvalues after
each task by deflated power iteration; here Lanczos with full reorthogonalisation
(:func:`cljax.curvature.top_eigenvalues_matvec`) gives the same numbers in far fewer HVPs.

Inputs shared by :func:`flatness` and :func:`cljax.analysis.forgetting_bound`:

* ``params_per_task``: θ*_1 … θ*_T as **one pytree with a leading task axis** (``T`` stacked
  copies of the params, e.g. ``jax.tree.map(lambda *p: jnp.stack(p), *thetas)``).
* ``task_data``: each task's evaluation data, either

  - a sequence of ``T`` batch dicts (``x [N_t, ...]``, ``y [N_t]``, optional ``task [N_t]``),
    ``N_t`` may differ; or
  - one dict of arrays with a leading task axis (``x [T, N, ...]``, ``y [T, N]``, ...) plus
    optional ``counts`` (``[T]`` ints): task t uses its first ``counts[t]`` examples.

  Either way tasks are padded to a common size with zero-weight examples, so every task runs the
  same compiled program.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, TypeGuard

import jax
import jax.numpy as jnp
import numpy as np

from cljax.curvature.hvp import (
    PerExampleLoss,
    check_finite,
    chunk_loss_sum,
    task_ggn_vp,
    task_hvp,
    task_value_and_grad,
    weighted_task_sum,
)
from cljax.curvature.lanczos import check_key, top_eigen
from cljax.curvature.trace import hutchinson_trace
from cljax.types import Array, Batch, LogitsFn, Params, PRNGKey
from cljax.validation import check_batch, check_positive_int

TaskData = Sequence[Batch] | Batch


class FlatnessResult(NamedTuple):
    """Per-task curvature at θ*_t over task t's data (arrays with a leading task axis ``T``).

    * ``lambda_max [T]``: λ_max(H_t), the algebraically largest eigenvalue.
    * ``top_eigenvalues [T, k]``: the k largest eigenvalues, descending.
    * ``residuals [T, k]``: Lanczos residual norms (bounds on the absolute eigenvalue errors).
    * ``num_matvecs [T]``: HVPs spent by Lanczos per task.
    * ``trace [T]``, ``trace_stderr [T]``: Hutchinson estimate of tr(H_t) and its standard error
      (NaN when ``trace_samples=0``).
    * ``loss [T]``: ℓ_t(θ*_t); ``grad_norm [T]``: ‖∇ℓ_t(θ*_t)‖ (the bound assumes ≈ 0).
    """

    lambda_max: np.ndarray
    top_eigenvalues: np.ndarray
    residuals: np.ndarray
    num_matvecs: np.ndarray
    trace: np.ndarray
    trace_stderr: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray


# --------------------------------------------------------------------------------------------
# input handling shared with bound.py
# --------------------------------------------------------------------------------------------

def num_tasks_of(params_per_task: Params, *, name: str = "params_per_task") -> int:
    """The leading (task) dimension shared by every leaf of ``params_per_task``."""
    leaves = jax.tree_util.tree_leaves_with_path(params_per_task)
    if not leaves:
        raise ValueError(f"{name} has no array leaves")
    sizes = set()
    for path, leaf in leaves:
        if jnp.ndim(leaf) < 1:
            raise ValueError(f"{name}{jax.tree_util.keystr(path)} must have a leading task axis; "
                             f"got a scalar")
        sizes.add(int(jnp.shape(leaf)[0]))
    if len(sizes) != 1:
        raise ValueError(f"every leaf of {name} must have the same leading (task) dimension; "
                         f"got {sorted(sizes)}")
    (t,) = sizes
    if t < 1:
        raise ValueError(f"{name} must hold at least one task; got 0")
    return t


def _is_stacked(task_data: TaskData) -> TypeGuard[Batch]:
    """A dict of arrays with a leading task axis (anything with ``keys``), not a sequence."""
    return hasattr(task_data, "keys")


def stack_task_data(task_data: TaskData, num_tasks: int, *, counts: Sequence[int] | None = None,
                    require_y: bool = True) -> tuple[Batch, np.ndarray]:
    """Normalise ``task_data`` (see the module docstring) to ``(stacked, weights)``:
    ``stacked[k]: [T, N, ...]`` and ``weights: [T, N]`` (1 for real examples, 0 for padding)."""
    if _is_stacked(task_data):
        if "x" not in task_data:
            raise TypeError("task_data must be a sequence of batch dicts or a dict of arrays with "
                            f"a leading task axis; got a dict with keys {sorted(task_data.keys())}")
        t_data = int(jnp.shape(task_data["x"])[0]) if jnp.ndim(task_data["x"]) >= 2 else None
        if t_data != num_tasks:
            raise ValueError(f"task_data['x'] must have a leading task axis of size {num_tasks} "
                             f"(the number of tasks in params_per_task); got shape "
                             f"{jnp.shape(task_data['x'])}")
        n = int(jnp.shape(task_data["x"])[1])
        for k, a in task_data.items():
            if jnp.shape(a)[:2] != (num_tasks, n):
                raise ValueError(f"task_data['{k}'] must have leading axes ({num_tasks}, {n}); "
                                 f"got {jnp.shape(a)}")
        check_batch({k: a[0] for k, a in task_data.items()}, name="task_data[task 0]",
                    require_y=require_y)
        if counts is None:
            counts_np = np.full((num_tasks,), n)
        else:
            counts_np = np.asarray(counts)
            if counts_np.shape != (num_tasks,) or not np.issubdtype(counts_np.dtype, np.integer):
                raise ValueError(f"counts must be {num_tasks} ints (one per task); got {counts!r}")
            if np.any(counts_np < 1) or np.any(counts_np > n):
                raise ValueError(f"counts must lie in [1, {n}] (examples per task); got "
                                 f"{counts_np.tolist()}")
        stacked = {k: jnp.asarray(a) for k, a in task_data.items()}
    else:
        if counts is not None:
            raise ValueError("counts is only used with stacked task_data (a dict of [T, N, ...] "
                             "arrays); a sequence of batches gives each task's size itself")
        if not isinstance(task_data, Sequence) or isinstance(task_data, (str, bytes)):
            raise TypeError("task_data must be a sequence of batch dicts or a dict of arrays with "
                            f"a leading task axis; got {type(task_data).__name__}")
        if len(task_data) != num_tasks:
            raise ValueError(f"task_data has {len(task_data)} tasks but params_per_task has "
                             f"{num_tasks}; they must match")
        keys = None
        for t, b in enumerate(task_data):
            check_batch(b, name=f"task_data[{t}]", require_y=require_y)
            if keys is None:
                keys = set(b.keys())
            elif set(b.keys()) != keys:
                raise ValueError(f"task_data[{t}] has keys {sorted(b.keys())}; task_data[0] has "
                                 f"{sorted(keys)}")
            if int(jnp.shape(b["x"])[0]) < 1:
                raise ValueError(f"task_data[{t}] has no examples")
        counts_np = np.asarray([int(jnp.shape(b["x"])[0]) for b in task_data])
        n = int(counts_np.max())

        def pad(a):
            a = jnp.asarray(a)
            return jnp.pad(a, [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

        assert keys is not None                    # num_tasks >= 1 batches, each checked
        stacked = {k: jnp.stack([pad(b[k]) for b in task_data]) for k in keys}
    weights = (np.arange(n)[None, :] < counts_np[:, None])
    check_finite(stacked, name="task_data")
    return stacked, weights


def _params_dtype(params_per_task):
    return jnp.result_type(*jax.tree.leaves(params_per_task))


def task_slice(tree: Any, t: int) -> Any:
    """Task ``t``'s slice of a pytree stacked over tasks (leading axis)."""
    return jax.tree.map(lambda a: a[t], tree)


def validate_task_inputs(logits_fn: LogitsFn, params_per_task: Params, task_data: TaskData,
                         key: PRNGKey | None, counts: Sequence[int] | None,
                         chunk_size: int | None, per_example_loss: PerExampleLoss | None
                         ) -> tuple[int, Batch, Array]:
    """The checks :func:`flatness` and :func:`cljax.analysis.bound.forgetting_bound` share;
    returns ``(num_tasks, stacked task data, per-example weights)``."""
    if not callable(logits_fn):
        raise TypeError(f"logits_fn must be callable; got {type(logits_fn).__name__}")
    if per_example_loss is not None and not callable(per_example_loss):
        raise TypeError(f"per_example_loss must be callable; got "
                        f"{type(per_example_loss).__name__}")
    if key is not None:
        check_key(key)
    if chunk_size is not None:
        check_positive_int(chunk_size, name="chunk_size")
    num_tasks = num_tasks_of(params_per_task)
    check_finite(params_per_task, name="params_per_task")
    stacked, w = stack_task_data(task_data, num_tasks, counts=counts,
                                 require_y=per_example_loss is None)
    return num_tasks, stacked, jnp.asarray(w, _params_dtype(params_per_task))


def grad_and_hvp(logits_fn: LogitsFn, params: Params, batch: Batch, v: Params, *,
                 chunk_size: int | None = None, weights: Array | None = None,
                 per_example_loss: PerExampleLoss | None = None) -> tuple[Params, Params]:
    """``(∇ℓ(θ), ∇²ℓ(θ) v)`` of the whole-task loss from one ``jvp(grad)`` per chunk."""
    g = jax.grad(chunk_loss_sum(logits_fn, per_example_loss))
    body = lambda c, wc: jax.jvp(lambda p: g(p, c, wc), (params,), (v,))
    (grad, hv), wsum = weighted_task_sum(body, params, batch, weights, chunk_size, None)
    return jax.tree.map(lambda a: a / wsum, grad), jax.tree.map(lambda a: a / wsum, hv)


# --------------------------------------------------------------------------------------------
# flatness
# --------------------------------------------------------------------------------------------

def curvature_matvec(logits_fn: LogitsFn, curvature: Literal["hessian", "ggn"] = "hessian", *,
                     chunk_size: int | None = 1000,
                     per_example_loss: PerExampleLoss | None = None
                     ) -> Callable[[tuple[Params, Batch, Any], Params], Params]:
    """``matvec((params, batch, weights), v)``: the product of the weighted mean loss's Hessian
    (:func:`cljax.curvature.task_hvp`) or GGN (:func:`cljax.curvature.task_ggn_vp`) with ``v``,
    the operand form of :func:`cljax.curvature.lanczos.top_eigen`. Build it once and reuse it:
    Lanczos compiles once per function object, whatever parameters and data it is given."""
    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn'; got {curvature!r}")
    product = task_hvp if curvature == "hessian" else task_ggn_vp

    def matvec(operand, v):
        params, batch, w = operand
        return product(logits_fn, params, batch, v, weights=w, chunk_size=chunk_size,
                       per_example_loss=per_example_loss)

    return matvec


def flatness(logits_fn: LogitsFn, params_per_task: Params, task_data: TaskData, key: PRNGKey, *,
             k: int = 1, num_iters: int = 100, tol: float | None = 1e-3,
             trace_samples: int = 0, curvature: Literal["hessian", "ggn"] = "hessian",
             chunk_size: int | None = 1000, counts: Sequence[int] | None = None,
             per_example_loss: PerExampleLoss | None = None,
             check_every: int = 5) -> FlatnessResult:
    """λ_max (and the top-k eigenvalues, optionally the trace) of H_t = ∇²ℓ_t(θ*_t), per task.

    Seed 000 eq. 20 (the forgetting bound ½ λ_max(H_i) ‖Δθ‖²); Mirzadeh et al. 2020 (top
    eigenvalues per task as a measure of the flatness of each task's minimum).

    Args:
      logits_fn: ``logits_fn(params, batch) -> logits[B, C]``.
      params_per_task: θ*_1..θ*_T, one pytree with a leading task axis ``T``.
      task_data: each task's evaluation data (sequence of ``T`` batches, or stacked arrays with
        optional ``counts``; see the module docstring). ℓ_t is the mean loss over task t's data.
      key: PRNG key (Lanczos start vectors, Hutchinson probes; folded in with the task index).
      k: number of top eigenvalues per task (``1 <= k <= num_iters``).
      num_iters: maximum Lanczos iterations (HVPs) per task; ``tol``: relative residual at which
        Lanczos stops early (see :func:`cljax.curvature.top_eigenvalues_matvec`).
      trace_samples: Rademacher probes for Hutchinson's tr(H_t) (0 = skip).
      curvature: ``"hessian"`` (default) or ``"ggn"`` (Gauss–Newton; PSD).
      chunk_size: examples per chunk for every product (memory bound); None = all at once.
      counts: valid examples per task for stacked ``task_data``.
      per_example_loss: ``(logits, batch) -> [B]``; default softmax cross-entropy with ``y``.
    Returns:
      :class:`FlatnessResult` of numpy arrays (``to_json`` makes it JSON-serialisable).
    """
    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn'; got {curvature!r}")
    check_positive_int(k, name="k")
    if not isinstance(trace_samples, (int, np.integer)) or trace_samples < 0:
        raise ValueError(f"trace_samples must be an int >= 0; got {trace_samples!r}")
    if key is None:
        raise TypeError("key must be a jax PRNG key; got None")
    num_tasks, stacked, weights = validate_task_inputs(
        logits_fn, params_per_task, task_data, key, counts, chunk_size, per_example_loss)
    opts: dict[str, Any] = dict(chunk_size=chunk_size, per_example_loss=per_example_loss)
    # One function object for every task, so the Lanczos block compiles once per call.
    matvec = curvature_matvec(logits_fn, curvature, **opts)

    @jax.jit
    def loss_and_grad_norm(params, batch, w):
        loss, grad = task_value_and_grad(logits_fn, params, batch, weights=w, **opts)
        return loss, jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grad)))

    @jax.jit
    def trace_fn(params, batch, w, key):
        return hutchinson_trace(lambda v: matvec((params, batch, w), v), params, key,
                                num_samples=trace_samples)

    tops, res, nmv, traces, ses, losses, gnorms = [], [], [], [], [], [], []
    for t in range(num_tasks):
        params, batch, w = task_slice(params_per_task, t), task_slice(stacked, t), weights[t]
        kt = jax.random.fold_in(key, t)
        eig = top_eigen(matvec, (params, batch, w), params, kt, k=k, num_iters=num_iters,
                         tol=tol, which="largest", return_eigenvectors=False,
                         check_every=check_every)
        tops.append(np.asarray(eig.eigenvalues))
        res.append(np.asarray(eig.residuals))
        nmv.append(eig.num_matvecs)
        if trace_samples:
            est = trace_fn(params, batch, w, jax.random.fold_in(kt, 1))
            traces.append(float(est.trace))
            ses.append(float(est.stderr))
        else:
            traces.append(np.nan)
            ses.append(np.nan)
        loss, gn = loss_and_grad_norm(params, batch, w)
        losses.append(float(loss))
        gnorms.append(float(gn))
    top = np.stack(tops)
    return FlatnessResult(lambda_max=top[:, 0], top_eigenvalues=top, residuals=np.stack(res),
                          num_matvecs=np.asarray(nmv), trace=np.asarray(traces),
                          trace_stderr=np.asarray(ses), loss=np.asarray(losses),
                          grad_norm=np.asarray(gnorms))


__all__ = ["FlatnessResult", "flatness", "curvature_matvec", "stack_task_data", "num_tasks_of", "grad_and_hvp",
           "TaskData", "validate_task_inputs", "task_slice"]
