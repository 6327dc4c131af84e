"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017, ICML): path integral and importance.

During task μ every step accumulates, per parameter (the path integral of §3, discretised):

    ω_i^μ ← ω_i^μ − g_i · Δθ_i,

where Δθ is the update **actually applied** (after the optimizer: Adam's scaling, momentum,
learning rate, clipping, …) and g the gradient of the **task loss alone** — the unregularised
gradient, as in the authors' code: ω measures how much each parameter's movement reduced the
current task's loss, and the surrogate penalty's own gradient would otherwise be counted as
"work on the task". At the end of the task (eq. 5):

    Ω_i ← Ω_i + ω_i^μ / ((θ_i(t^μ) − θ_i(t^{μ−1}))² + ξ),   then ω ← 0.

Two ways to put the path integral in an optax chain, both keeping ω in the optimizer state and
updating it inside the jitted step:

* :func:`with_path_integral` ``(inner)`` — wrap the whole update rule. The gradient entering the
  wrapper is the one fed to ω and the update leaving ``inner`` is Δθ. Chain penalty transforms
  *inside* ``inner`` (e.g. ``with_path_integral(optax.chain(si_penalty, optax.adam(1e-3)))``) so
  that ω sees the task gradient while Δθ includes the penalty's effect. If you instead add the
  penalty to the loss you differentiate, ω receives the regularised gradient — avoid that.
* :func:`track_path_integral` ``()`` — a ``GradientTransformationExtraArgs`` chained **after** the
  optimizer (last in the chain, so its input is the final update), receiving the task gradient
  as the extra argument ``task_grads=``. It passes updates through unchanged.

The step must apply the returned updates unchanged (``optax.apply_updates``) for Δθ to be exact.

**Negative Ω.** ω can be negative when noise or the penalty moves a parameter uphill for the
task loss. :func:`si_importance` clips the task's contribution at 0 by default
(``clip_negative=True``): a negative importance would make the quadratic penalty non-convex and
reward moving away from the anchor. ``clip_negative=False`` reproduces the original code
exactly. (Avalanche instead clamps with a *maximum* of 1e-3 and no minimum; we do not.)
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import validation
from cljax.types import Array, Importance, Params


class PathIntegralState(NamedTuple):
    """ω, the running path integral −Σ_t g(t)·Δθ(t) for the current task (params-shaped): SI's
    path-integral state wherever it is kept (the optax wrappers below, the ``si`` method)."""

    omega: Params


def init_path_integral(params: Params) -> PathIntegralState:
    """ω = 0 with ``params``' structure, shapes and dtypes (a task's start)."""
    return PathIntegralState(optax.tree_utils.tree_zeros_like(params))


class WithPathIntegralState(NamedTuple):
    """State of :func:`with_path_integral`: the wrapped optimizer's state and the path integral."""

    inner_state: optax.OptState
    path_integral: PathIntegralState


def accumulate_path_integral(omega: Params, grads: Params, updates: Params) -> Params:
    """One step of SI's path integral, ω ← ω − g·Δθ (Zenke et al. 2017, §3), in ω's dtypes.

    ``grads`` is the task-loss gradient at the step's parameters and ``updates`` the update
    actually applied (Δθ); all three share the params' structure.
    """
    return jax.tree.map(lambda w, g, u: (w - g.astype(w.dtype) * u.astype(w.dtype)).astype(w.dtype),
                        omega, grads, updates)


def _check_same(tree: Any, ref: Any, name: str, ref_name: str) -> None:
    validation.check_same_structure(tree, ref, name=name, reference_name=ref_name)


def track_path_integral() -> optax.GradientTransformationExtraArgs:
    """SI path integral as the last link of an optax chain (Zenke et al. 2017, §3).

    ``update(updates, state, params=None, *, task_grads)``: ``updates`` are the final updates Δθ
    (returned unchanged), ``task_grads`` the gradient of the unregularised task loss at the step's
    params; ω ← ω − task_grads · Δθ. Use inside ``optax.chain(..., track_path_integral())`` and
    call ``tx.update(grads, state, params, task_grads=task_grads)`` (optax.chain forwards extra
    args to the links that accept them).
    """

    def init_fn(params: Params) -> PathIntegralState:
        return init_path_integral(params)

    def update_fn(updates, state, params=None, *, task_grads=None, **extra_args):
        del params, extra_args
        if task_grads is None:
            raise ValueError("track_path_integral needs the task-loss gradient: call "
                             "tx.update(grads, state, params, task_grads=task_grads)")
        _check_same(task_grads, state.omega, "task_grads", "params")
        _check_same(updates, state.omega, "updates", "params")
        return updates, PathIntegralState(accumulate_path_integral(state.omega, task_grads, updates))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_path_integral(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` so its state also tracks SI's ω (Zenke et al. 2017, §3).

    The gradient passed to ``update`` feeds ω (pass the task-loss gradient and put penalties inside
    ``inner``); the update ``inner`` returns is Δθ. Extra args are forwarded to ``inner``.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: Params) -> WithPathIntegralState:
        return WithPathIntegralState(inner.init(params), init_path_integral(params))

    def update_fn(grads, state, params=None, **extra_args):
        _check_same(grads, state.path_integral.omega, "grads", "params")
        updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
        omega = accumulate_path_integral(state.path_integral.omega, grads, updates)
        return updates, WithPathIntegralState(inner_state, PathIntegralState(omega))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def reset_path_integral(opt_state: Any) -> Any:
    """Task boundary: a new optimizer state with every ω set to 0, everything else unchanged.

    Accepts any optimizer state pytree containing :class:`PathIntegralState` nodes (a bare
    state, a :class:`WithPathIntegralState`, or an ``optax.chain`` tuple). Pure; raises if there is
    no path integral in ``opt_state``.
    """
    found = []

    def reset(node):
        if isinstance(node, PathIntegralState):
            found.append(True)
            return init_path_integral(node.omega)
        return node

    new = jax.tree.map(reset, opt_state, is_leaf=lambda n: isinstance(n, PathIntegralState))
    if not found:
        raise ValueError("opt_state holds no PathIntegralState; build the optimizer with "
                         "track_path_integral() or with_path_integral(...)")
    return new


def get_path_integral(opt_state: Any) -> Params:
    """The ω pytree held in ``opt_state`` (the first :class:`PathIntegralState` found)."""
    found = []
    jax.tree.map(lambda n: found.append(n) if isinstance(n, PathIntegralState) else None,
                 opt_state, is_leaf=lambda n: isinstance(n, PathIntegralState))
    if not found:
        raise ValueError("opt_state holds no PathIntegralState; build the optimizer with "
                         "track_path_integral() or with_path_integral(...)")
    return found[0].omega


def si_importance(omega: Params, delta_params: Params, *, xi: float | Array = 0.1,
                  clip_negative: bool = True) -> Importance:
    """One task's SI importance ω / (Δθ² + ξ) (Zenke et al. 2017, eq. 5).

    Args:
      omega: the task's path integral (e.g. ``get_path_integral(opt_state)``).
      delta_params: θ(end of task) − θ(start of task), params-shaped.
      xi: damping ξ > 0 (0.1 in the paper's permuted MNIST; 1e-3 for split MNIST).
      clip_negative: clip the contribution at 0 (default; see the module docstring).

    Returns:
      The contribution to add to the running Ω (Ω ← Ω + si_importance(...)); params-shaped, with
      ω's dtypes. Its scale is that of ω: a sum over the task's steps, not a mean over examples.
    """
    validation.check_same_structure(delta_params, omega, name="delta_params",
                                    reference_name="omega")
    if validation.is_concrete(xi) and not float(xi) > 0:
        raise ValueError(f"xi must be > 0; got {xi}")
    validation.check_finite(omega, name="omega")
    validation.check_finite(delta_params, name="delta_params")

    def one(w, d):
        r = w / (jnp.square(d.astype(w.dtype)) + jnp.asarray(xi, w.dtype))
        return (jnp.maximum(r, 0) if clip_negative else r).astype(w.dtype)

    return jax.tree.map(one, omega, delta_params)


__all__ = ["PathIntegralState", "WithPathIntegralState", "init_path_integral",
           "accumulate_path_integral", "track_path_integral",
           "with_path_integral", "reset_path_integral", "get_path_integral", "si_importance"]
