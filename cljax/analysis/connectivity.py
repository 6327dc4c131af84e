"""Mode connectivity: the loss along a path between two solutions, and low-loss curves.

Garipov, Izmailov, Podoprikhin, Vetrov & Wilson 2018 ("Loss surfaces, mode connectivity, and fast
ensembling of DNNs", arXiv 1802.10026): two minima of the same loss are often joined by a simple
curve of low loss, found by training the curve's control point. Mirzadeh et al. 2021 (MC-SGD,
arXiv 2010.04495) find that continual and multitask solutions from the same initialisation are
joined by a *linear* path of low loss, and measure it by the loss barrier along it.

- :func:`path_point` — θ(t) on the linear path (1 − t)·θ_a + t·θ_b or on the quadratic Bézier
  curve (1 − t)²·θ_a + 2t(1 − t)·θ_c + t²·θ_b (Garipov et al.'s eq. for a Bézier curve with one
  control point θ_c); θ(0) = θ_a and θ(1) = θ_b bit for bit.
- :func:`loss_along_path` — a loss at ``num_points`` evenly spaced t, in one compiled map.
- :func:`loss_barrier` — max over t of ℓ(θ(t)) − ((1 − t)·ℓ(θ_a) + t·ℓ(θ_b)): how far the path
  rises above the straight line between its endpoints' losses (0 for a convex loss).
- :func:`fit_bezier` — the control point minimising E_{t ~ U(0, 1)} ℓ(θ(t)) (Garipov et al.'s
  objective), trained with any optax optimizer in one ``lax.scan``, one t drawn per step.
- :func:`forgetting_paths` — for a continual run's θ*_1 … θ*_T, task i's loss along the linear
  path from θ*_i to the final θ*_T and its barrier: whether forgetting happened by climbing a
  barrier or along a slope (MC-SGD's connectivity of continual solutions), beside the forgetting
  bound's quadratic estimate of the same endpoints (:func:`cljax.analysis.forgetting_bound`).
- :func:`sharpness_paths` — λ_max of task i's Hessian at points of the same path from θ*_i to
  θ*_T, and the forgetting bound along it, ½·λ_max(H_i)·t²·‖θ*_T − θ*_i‖²: flatness,
  connectivity and measured forgetting of one run in one figure
  (:func:`cljax.analysis.plots.plot_sharpness_paths`).
- :func:`multitask_paths` — MC-SGD's comparison: from θ*_t, the previous tasks' loss along the
  path to the next continual solution and along the path to a multitask solution trained from
  θ*_t (:func:`cljax.experiment.multitask_solutions` trains them).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.analysis.flatness import (
    TaskData,
    curvature_matvec,
    task_slice,
    validate_task_inputs,
)
from cljax.curvature.hvp import softmax_cross_entropy, weighted_task_sum
from cljax.curvature.lanczos import top_eigen
from cljax.types import Array, LogitsFn, Params, PRNGKey


def _check_trees(theta_a: Params, theta_b: Params, control: Params | None) -> None:
    ref = jax.tree.structure(theta_a)
    for name, tree in (("theta_b", theta_b), ("control", control)):
        if tree is None:
            continue
        if jax.tree.structure(tree) != ref:  # type: ignore[operator]  # PyTreeDef: no jaxlib stubs
            raise ValueError(f"{name} must have theta_a's pytree structure; got "
                             f"{jax.tree.structure(tree)} against {ref}")
        for a, b in zip(jax.tree.leaves(theta_a), jax.tree.leaves(tree)):
            if jnp.shape(a) != jnp.shape(b):
                raise ValueError(f"{name}'s leaves must have theta_a's shapes; got "
                                 f"{jnp.shape(b)} against {jnp.shape(a)}")


def path_point(theta_a: Params, theta_b: Params, t: Array | float, *,
               control: Params | None = None) -> Params:
    """θ(t) on the linear path from ``theta_a`` (t = 0) to ``theta_b`` (t = 1), or on the
    quadratic Bézier curve through ``control`` when it is given (module docstring)."""
    _check_trees(theta_a, theta_b, control)
    t = jnp.asarray(t, jnp.float32)
    if control is None:
        return jax.tree.map(lambda a, b: ((1 - t) * a + t * b).astype(a.dtype), theta_a, theta_b)
    return jax.tree.map(
        lambda a, c, b: ((1 - t) ** 2 * a + 2 * t * (1 - t) * c + t ** 2 * b).astype(a.dtype),
        theta_a, control, theta_b)


def loss_along_path(loss_fn: Callable[[Params], Array], theta_a: Params, theta_b: Params, *,
                    num_points: int = 11, control: Params | None = None) -> dict[str, np.ndarray]:
    """``loss_fn`` (params → scalar) at ``num_points`` evenly spaced t ∈ [0, 1] of the linear
    path or the Bézier curve through ``control``; ``{"t": [P], "loss": [P]}`` (numpy)."""
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 2:
        raise ValueError(f"num_points must be an int >= 2; got {num_points!r}")
    _check_trees(theta_a, theta_b, control)
    ts = jnp.linspace(0.0, 1.0, num_points)

    @jax.jit
    def losses(ts):
        return jax.lax.map(lambda t: loss_fn(path_point(theta_a, theta_b, t, control=control)),
                           ts)

    return {"t": np.asarray(ts), "loss": np.asarray(losses(ts))}


def loss_barrier(t: Any, loss: Any) -> float:
    """max over the points of ℓ(θ(t)) − ((1 − t)·ℓ(0) + t·ℓ(1)) (``t`` ascending from 0 to 1,
    as :func:`loss_along_path` gives them); 0 when the path never rises above the line between
    its endpoints' losses.

    Example:
        >>> loss_barrier([0.0, 0.5, 1.0], [1.0, 3.0, 1.0])
        2.0
    """
    t, loss = np.asarray(t, np.float64), np.asarray(loss, np.float64)
    if t.ndim != 1 or t.shape != loss.shape or t.size < 2 or t[0] != 0.0 or t[-1] != 1.0:
        raise ValueError(f"t and loss must be 1-d of the same length >= 2 with t from 0 to 1; "
                         f"got shapes {t.shape} and {loss.shape}")
    if not np.all(np.isfinite(loss)):
        raise ValueError("loss must be finite along the path")
    line = (1.0 - t) * loss[0] + t * loss[-1]
    return float(max(0.0, np.max(loss - line)))


def fit_bezier(loss_fn: Callable[[Params], Array], theta_a: Params, theta_b: Params,
               key: PRNGKey, *, steps: int = 500,
               optimizer: optax.GradientTransformation | None = None,
               init: Params | None = None) -> tuple[Params, np.ndarray]:
    """The control point θ_c of the quadratic Bézier curve from ``theta_a`` to ``theta_b`` that
    minimises E_{t ~ U(0, 1)} ℓ(θ(t)) (Garipov et al. 2018), by ``steps`` steps of
    ``optimizer`` (default Adam 1e-2), one t drawn per step from ``key``, starting at ``init``
    (default the midpoint (θ_a + θ_b) / 2: the linear path). Returns (θ_c, the loss at each
    step's t)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    _check_trees(theta_a, theta_b, init)
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    control = jax.tree.map(lambda a, b: (a + b) / 2, theta_a, theta_b) if init is None else init

    def objective(c, t):
        return loss_fn(path_point(theta_a, theta_b, t, control=c))

    @jax.jit
    def train(control, key):
        def step(carry, k):
            c, opt = carry
            t = jax.random.uniform(k)
            value, grads = jax.value_and_grad(objective)(c, t)
            updates, opt = optimizer.update(grads, opt, c)
            return (optax.apply_updates(c, updates), opt), value

        (control, _), values = jax.lax.scan(step, (control, optimizer.init(control)),
                                            jax.random.split(key, steps))
        return control, values

    control, values = train(control, key)
    return control, np.asarray(values)


def _task_losses_on_paths(logits_fn: LogitsFn, ts: Array, chunk_size: int | None
                          ) -> Callable[[Params, Params, Any, Any], Array]:
    """A jitted ``(start, end, task_batch, weights) -> [P]``: one task's weighted mean
    cross-entropy at the points ``ts`` of the linear path from ``start`` to ``end``, in chunks
    of ``chunk_size`` examples."""

    @jax.jit
    def path_losses(start, end, batch, weights):
        def at(t):
            params = path_point(start, end, t)

            def body(chunk, wc):
                return jnp.sum(wc * softmax_cross_entropy(logits_fn(params, chunk), chunk))

            total, wsum = weighted_task_sum(body, params, batch, weights, chunk_size, None)
            return total / wsum

        return jax.lax.map(at, ts)

    return path_losses


def _path_inputs(name: str, logits_fn: LogitsFn, params_per_task: Params, task_data: TaskData,
                 key: PRNGKey | None, counts: Any, chunk_size: int | None, num_points: int
                 ) -> tuple[int, Any, Any, Array]:
    """The checked inputs of a path analysis over a run's solutions: the number of tasks (at
    least two), the stacked task data and weights (:func:`validate_task_inputs`) and the
    ``num_points`` evenly spaced t of [0, 1]."""
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 2:
        raise ValueError(f"num_points must be an int >= 2; got {num_points!r}")
    num_tasks, stacked, w = validate_task_inputs(logits_fn, params_per_task, task_data, key,
                                                 counts, chunk_size, None)
    if num_tasks < 2:
        raise ValueError(f"{name} needs at least two tasks' parameters")
    return num_tasks, stacked, w, jnp.linspace(0.0, 1.0, num_points)


def forgetting_paths(logits_fn: LogitsFn, params_per_task: Params, task_data: TaskData, *,
                     counts: Any = None, num_points: int = 11,
                     chunk_size: int | None = 1000) -> dict[str, Any]:
    """For every task i < T of a continual run (``params_per_task``: θ*_1 … θ*_T stacked on a
    leading task axis; ``task_data`` and ``counts`` as :func:`cljax.analysis.flatness`'s), task
    i's mean cross-entropy at ``num_points`` evenly spaced points of the linear path from θ*_i
    (t = 0) to θ*_T (t = 1), in chunks of ``chunk_size`` examples.

    Returns ``{"t": [P], "loss": [T − 1, P], "barrier": [T − 1], "forgetting": [T − 1]}``:
    ``barrier`` by :func:`loss_barrier`, ``forgetting`` the loss increase ℓ_i(θ*_T) − ℓ_i(θ*_i)
    (the two ends)."""
    num_tasks, stacked, w, ts = _path_inputs("forgetting_paths", logits_fn, params_per_task,
                                             task_data, None, counts, chunk_size, num_points)
    final = task_slice(params_per_task, num_tasks - 1)
    path_losses = _task_losses_on_paths(logits_fn, ts, chunk_size)
    losses = np.stack([np.asarray(path_losses(task_slice(params_per_task, i), final,
                                              task_slice(stacked, i), w[i]))
                       for i in range(num_tasks - 1)])
    t = np.asarray(ts)
    return {"t": t, "loss": losses,
            "barrier": np.array([loss_barrier(t, row) for row in losses]),
            "forgetting": losses[:, -1] - losses[:, 0]}


def _start_lambda_max(values: Any, num_tasks: int) -> np.ndarray | None:
    """``sharpness_paths``' ``start_lambda_max`` as a finite float array of T or T − 1 values."""
    if values is None:
        return None
    arr = np.asarray(values, np.float64)
    if arr.ndim != 1 or arr.shape[0] not in (num_tasks, num_tasks - 1):
        raise ValueError(f"start_lambda_max must hold λ_max at each θ*_i, shape ({num_tasks},) "
                         f"or ({num_tasks - 1},); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"start_lambda_max must be finite; got {arr.tolist()}")
    return arr


def sharpness_paths(logits_fn: LogitsFn, params_per_task: Params, task_data: TaskData,
                    key: PRNGKey, *, counts: Any = None, num_points: int = 5,
                    num_iters: int = 50, tol: float | None = 1e-3,
                    curvature: Literal["hessian", "ggn"] = "hessian",
                    chunk_size: int | None = 1000,
                    start_lambda_max: Any = None) -> dict[str, Any]:
    """For every task i < T of a continual run, λ_max of task i's Hessian ∇²ℓ_i (or GGN) at
    ``num_points`` evenly spaced points θ(t) of the linear path from θ*_i (t = 0) to θ*_T
    (t = 1), by Lanczos (``num_iters`` / ``tol``; one compiled Lanczos for every point), with the
    inputs of :func:`forgetting_paths`. Along that path Δθ = t·(θ*_T − θ*_i), so the forgetting
    bound (seed 000 eq. 20) reads ½·λ_max(H_i(θ*_i))·t²·‖θ*_T − θ*_i‖²: how far it holds is read
    beside task i's loss on the same points (:func:`forgetting_paths`), and how the curvature
    changes on the way says why (a bound from θ*_i's curvature alone fails where the path
    sharpens). ``start_lambda_max`` (``[T]`` or ``[T − 1]``, e.g. :func:`flatness`'s
    ``lambda_max`` of the same run and curvature): λ_max at each θ*_i, used for t = 0 instead of
    a Lanczos run there, so the path starts at the value the flatness analysis reports.

    Returns ``{"t": [P], "lambda_max": [T − 1, P], "delta_sq_norm": [T − 1]}`` (row i: the path
    from θ*_i; ``delta_sq_norm`` ‖θ*_T − θ*_i‖²)."""
    num_tasks, stacked, w, ts = _path_inputs("sharpness_paths", logits_fn, params_per_task,
                                             task_data, key, counts, chunk_size, num_points)
    # one matvec for every task and point: Lanczos compiles once for the whole analysis
    matvec = curvature_matvec(logits_fn, curvature, chunk_size=chunk_size)
    final = task_slice(params_per_task, num_tasks - 1)
    known = _start_lambda_max(start_lambda_max, num_tasks)
    lam, sq = [], []
    for i in range(num_tasks - 1):
        start, batch = task_slice(params_per_task, i), task_slice(stacked, i)
        row = []
        for j, t in enumerate(ts):
            if j == 0 and known is not None:
                row.append(float(known[i]))
                continue
            point = path_point(start, final, t)
            eig = top_eigen(matvec, (point, batch, w[i]), point,
                            jax.random.fold_in(jax.random.fold_in(key, i), j), k=1,
                            num_iters=num_iters, tol=tol, which="largest",
                            return_eigenvectors=False, check_every=5)
            row.append(float(eig.eigenvalues[0]))
        lam.append(row)
        sq.append(float(sum(jnp.vdot(b - a, b - a) for a, b in
                            zip(jax.tree.leaves(start), jax.tree.leaves(final)))))
    return {"t": np.asarray(ts), "lambda_max": np.asarray(lam), "delta_sq_norm": np.asarray(sq)}


def multitask_paths(logits_fn: LogitsFn, params_per_task: Params, multitask_params: Params,
                    task_data: TaskData, *, counts: Any = None, num_points: int = 11,
                    chunk_size: int | None = 1000) -> dict[str, Any]:
    """Mirzadeh et al. 2021's (MC-SGD, arXiv 2010.04495, Sec. 3) continual vs multitask
    connectivity: from θ*_t (the continual solution after task t), the linear path to the next
    continual solution θ*_{t+1} and the linear path to the multitask solution ŵ_{t+1} (trained
    on tasks ≤ t + 1 from θ*_t, so both share θ*_t as initialisation), each scored by the mean
    cross-entropy of the tasks seen before, 0 … t (the tasks the next one may make forget).

    ``params_per_task``: θ*_1 … θ*_T stacked on a leading task axis; ``multitask_params``:
    ŵ_2 … ŵ_T (leading axis T − 1, ŵ_{t+1} trained from θ*_t); ``task_data`` / ``counts`` as
    :func:`forgetting_paths`'s. Returns ``{"t": [P], "continual": [T − 1, P], "multitask":
    [T − 1, P], "barrier_continual": [T − 1], "barrier_multitask": [T − 1], "rise_continual":
    [T − 1], "rise_multitask": [T − 1]}`` (row t: paths from θ*_{t+1} in the paper's 1-based
    count; barriers by :func:`loss_barrier`; a rise is the path's highest loss above its start,
    ℓ(θ*_t): how far the seen tasks' loss climbs on the way, wherever the path ends)."""
    num_tasks, stacked, w, ts = _path_inputs("multitask_paths", logits_fn, params_per_task,
                                             task_data, None, counts, chunk_size, num_points)
    if jax.tree.structure(multitask_params) != jax.tree.structure(  # type: ignore[operator]  # PyTreeDef: no jaxlib stubs
            params_per_task):
        raise ValueError("multitask_params must have params_per_task's structure; got "
                         f"{jax.tree.structure(multitask_params)} and "
                         f"{jax.tree.structure(params_per_task)}")
    for m, p in zip(jax.tree.leaves(multitask_params), jax.tree.leaves(params_per_task)):
        if m.shape != (num_tasks - 1,) + p.shape[1:]:
            raise ValueError(f"multitask_params must hold T − 1 = {num_tasks - 1} solutions "
                             f"stacked like params_per_task; a leaf has shape {m.shape}, "
                             f"expected {(num_tasks - 1,) + p.shape[1:]}")
    path_losses = _task_losses_on_paths(logits_fn, ts, chunk_size)

    def seen_loss(t: int, end: Params) -> np.ndarray:
        start = task_slice(params_per_task, t)
        return np.mean([np.asarray(path_losses(start, end, task_slice(stacked, i), w[i]))
                        for i in range(t + 1)], axis=0)

    continual = np.stack([seen_loss(t, task_slice(params_per_task, t + 1))
                          for t in range(num_tasks - 1)])
    multitask = np.stack([seen_loss(t, task_slice(multitask_params, t))
                          for t in range(num_tasks - 1)])
    t = np.asarray(ts)
    return {"t": t, "continual": continual, "multitask": multitask,
            "barrier_continual": np.array([loss_barrier(t, row) for row in continual]),
            "barrier_multitask": np.array([loss_barrier(t, row) for row in multitask]),
            "rise_continual": continual.max(axis=1) - continual[:, 0],
            "rise_multitask": multitask.max(axis=1) - multitask[:, 0]}


__all__ = ["path_point", "loss_along_path", "loss_barrier", "fit_bezier", "forgetting_paths",
           "sharpness_paths", "multitask_paths"]
