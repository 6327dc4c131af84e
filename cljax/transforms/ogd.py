"""Orthogonal Gradient Descent (OGD; Farajtabar, Azizan, Mott & Li 2020, AISTATS) as a transform.

OGD keeps an orthonormal set of directions in parameter space — the gradients of the model's
ground-truth logit at examples of the past tasks (OGD-GTL, their best variant), orthonormalised
by Gram–Schmidt as they are added — and removes their span from every new gradient:
g̃ = g − Σ_i (gᵀu_i) u_i (their eq. 4–5).

Fixed shapes: the store is the params pytree with a leading ``capacity`` axis (for ``capacity``
directions) and a fill count, so nothing recompiles as it fills; memory is capacity × params
(e.g. 200 examples per task × 10 tasks on a 784-100-100-10 MLP: 2000 × 89,610 floats, 717 MB).
Directions whose residual after Gram–Schmidt is below ``tol`` × their norm (already in the span)
are not stored. When the store is full, further directions are dropped and counted in
``dropped``; a concrete (eager) call raises instead. Size the capacity to the stream
(:func:`cljax.methods.ogd` does: examples per task × tasks), and it is never exhausted.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.transforms.common import require_state
from cljax.types import Array, Params
from cljax.validation import check_finite, check_positive_int, is_concrete


class OGDState(NamedTuple):
    """OGD's store: ``basis`` (params' structure, leaves ``[capacity, *shape]``, the first
    ``size`` rows orthonormal as vectors over all leaves), ``size``, ``dropped``."""

    basis: Params
    size: Array
    dropped: Array


def init_ogd(params: Params, *, capacity: int) -> OGDState:
    """An empty store for ``capacity`` directions of ``params``' shape."""
    check_positive_int(capacity, name="capacity")
    return OGDState(jax.tree.map(lambda p: jnp.zeros((capacity,) + p.shape, p.dtype), params),
                    jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _dots(basis: Params, v: Params) -> Array:
    return sum(jnp.tensordot(b.astype(jnp.float32), x.astype(jnp.float32), axes=x.ndim)
               for b, x in zip(jax.tree.leaves(basis), jax.tree.leaves(v)))


def _combine(coef: Array, basis: Params) -> Params:
    return jax.tree.map(lambda b: jnp.tensordot(coef.astype(b.dtype), b, axes=1), basis)


def _norm(v: Params) -> Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(v)))


def ogd_project(updates: Params, state: OGDState) -> Params:
    """g − Σ_{i < size} (gᵀu_i) u_i."""
    capacity = jax.tree.leaves(state.basis)[0].shape[0]
    coef = _dots(state.basis, updates) * (jnp.arange(capacity) < state.size)
    return jax.tree.map(lambda g, c: (g - c).astype(g.dtype), updates,
                        _combine(coef, state.basis))


def ogd_add(state: OGDState, directions: Params, *, tol: float = 1e-6) -> OGDState:
    """Orthonormalise ``directions`` (params' structure, leaves ``[n, *shape]``) against the store
    and each other (Gram–Schmidt, applied twice for float32 stability) and append them."""
    if not isinstance(state, OGDState):
        raise TypeError(f"state must be an OGDState (init_ogd(params, capacity=...)); got "
                        f"{type(state).__name__}")
    check_finite(directions, name="directions")
    leaves = jax.tree.leaves(directions)
    n = leaves[0].shape[0]
    capacity = jax.tree.leaves(state.basis)[0].shape[0]
    if is_concrete(state.size) and int(state.size) + n > capacity:
        raise ValueError(f"the OGD store holds {int(state.size)} of {capacity} directions; "
                         f"{n} more may not fit: create it with a larger capacity")
    mask = lambda size: (jnp.arange(capacity) < size).astype(jnp.float32)   # noqa: E731

    def add(i, s: OGDState) -> OGDState:
        v = jax.tree.map(lambda d: d[i], directions)
        norm0 = _norm(v)
        for _ in range(2):
            v = jax.tree.map(lambda a, b: (a - b).astype(a.dtype), v,
                             _combine(_dots(s.basis, v) * mask(s.size), s.basis))
        norm = _norm(v)
        keep = norm > tol * jnp.maximum(norm0, jnp.finfo(jnp.float32).tiny)
        room = s.size < capacity
        u = jax.tree.map(lambda x: x / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny).astype(
            x.dtype), v)
        write = keep & room
        basis = jax.tree.map(lambda b, x: b.at[jnp.minimum(s.size, capacity - 1)].set(
            jnp.where(write, x, b[jnp.minimum(s.size, capacity - 1)])), s.basis, u)
        return OGDState(basis, s.size + write.astype(jnp.int32),
                        s.dropped + (keep & ~room).astype(jnp.int32))

    return jax.lax.fori_loop(0, n, add, state)


def ogd_projection() -> optax.GradientTransformationExtraArgs:
    """OGD's projection against the store given as ``ogd_state=`` (first in the chain; the paper
    steps with plain SGD)."""

    def init_fn(params: Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, ogd_state: OGDState | None = None, **extra):
        del params, extra
        require_state(ogd_state, OGDState, arg="ogd_state", fn="ogd_projection.update")
        return ogd_project(updates, ogd_state), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["OGDState", "init_ogd", "ogd_add", "ogd_project", "ogd_projection"]
