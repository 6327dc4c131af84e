"""Symmetric eigendecomposition, linear solves and QR, safe under ``vmap`` on the CPU.

With jax 0.10.2 on the CPU, a *batched* ``jnp.linalg.eigh`` (what ``vmap`` over runs or seeds makes
of it) splits the batch over the intra-op thread pool and blocks the calling thread until the
pieces finish; next to other kernels of the same program the program can deadlock: every thread
waits, no CPU is used, the step never returns. Measured here: a jitted ``vmap`` (4 runs) of four
damped K-FAC inverses (785², 400², 401², 400²) hung within 4 to 11 calls, and still hung with the
four eigh calls serialised by ``lax.optimization_barrier``; one batched eigh alone did not (200
calls). A vmapped NCL K-FAC sweep hung at a task boundary (native stacks: two
``lapack_ssyevd_ffi`` → ``ParallelBatchMap`` → ``BlockingCounter::Wait``, all other threads idle).

:func:`eigh` gives the same result, but on the CPU its batching rule loops over the batch with
``lax.map``, so each LAPACK call sees one matrix and runs inline; the same jitted ``vmap`` then ran
150 calls without a hang (timed by a one-off script, not a benchmark: 0.3–0.5 s a call, as
before). On other backends it is ``jnp.linalg.eigh``.

:func:`solve` (LU) and :func:`qr` (Householder), used by the Stiefel retraction
(:mod:`cljax.transforms.stiefel`), are looped under ``vmap`` on the CPU by the same rule, as a
precaution: they were not seen to hang.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

from cljax.types import Array


@custom_vmap
def _eigh_unbatched(m: Array) -> tuple[Array, Array]:
    w, u = jnp.linalg.eigh(m)
    return w, u


@_eigh_unbatched.def_vmap
def _eigh_vmap(axis_size, in_batched, m):
    del axis_size
    (batched,) = in_batched
    if not batched:
        return _eigh_unbatched(m), (False, False)
    return lax.map(_eigh_unbatched, m), (True, True)


@jax.custom_jvp
def _eigh_cpu(m: Array) -> tuple[Array, Array]:
    return _eigh_unbatched(m)


@_eigh_cpu.defjvp
def _eigh_cpu_jvp(primals, tangents):
    """First-order perturbation theory (distinct eigenvalues), as jax's own eigh JVP:
    dw = diag(Uᵀ dM U), dU = U (F ∘ Uᵀ dM U) with F_ij = 1 / (w_j − w_i), F_ii = 0."""
    (m,), (dm,) = primals, tangents
    w, u = _eigh_cpu(m)
    dm = 0.5 * (dm + dm.T)
    vdv = u.T @ dm @ u
    gap = w[None, :] - w[:, None]
    f = jnp.where(gap == 0, 0.0, 1.0 / jnp.where(gap == 0, 1.0, gap))
    return (w, u), (jnp.diagonal(vdv), u @ (f * vdv))


def eigh(m: Array) -> tuple[Array, Array]:
    """``(eigenvalues ascending, eigenvectors)`` of a symmetric ``[n, n]`` matrix, like
    ``jnp.linalg.eigh`` (same values, same JVP); under ``vmap`` on the CPU the batch is looped
    (see the module docstring)."""
    if jax.default_backend() != "cpu" or jnp.ndim(m) != 2:
        return jnp.linalg.eigh(m)  # an explicit batch keeps numpy semantics
    return _eigh_cpu(m)


@custom_vmap
def _solve_unbatched(a: Array, b: Array) -> Array:
    return jnp.linalg.solve(a, b)


@_solve_unbatched.def_vmap
def _solve_vmap(axis_size, in_batched, a, b):
    a_batched, b_batched = in_batched
    if not (a_batched or b_batched):
        return _solve_unbatched(a, b), False
    a = a if a_batched else jnp.broadcast_to(a, (axis_size, *a.shape))
    b = b if b_batched else jnp.broadcast_to(b, (axis_size, *b.shape))
    return lax.map(lambda ab: _solve_unbatched(*ab), (a, b)), True


def solve(a: Array, b: Array) -> Array:
    """``x`` with ``a @ x = b`` for a square ``a [n, n]`` and ``b [n, k]``, like
    ``jnp.linalg.solve`` (LU with partial pivoting); under ``vmap`` on the CPU the batch is looped
    with ``lax.map``, each LAPACK call seeing one matrix, as :func:`eigh` does (the module
    docstring: a batched LAPACK call next to other kernels of the same program can deadlock).
    Not differentiable (the Stiefel retraction solves inside the optimizer update)."""
    if jax.default_backend() != "cpu" or jnp.ndim(a) != 2:
        return jnp.linalg.solve(a, b)
    return _solve_unbatched(a, b)


@custom_vmap
def _qr_unbatched(a: Array) -> tuple[Array, Array]:
    q, r = jnp.linalg.qr(a)
    return q, r


@_qr_unbatched.def_vmap
def _qr_vmap(axis_size, in_batched, a):
    del axis_size
    (batched,) = in_batched
    if not batched:
        return _qr_unbatched(a), (False, False)
    return lax.map(_qr_unbatched, a), (True, True)


def qr(a: Array) -> tuple[Array, Array]:
    """``(q, r)``, the reduced QR decomposition of ``a [m, n]`` (Householder), like
    ``jnp.linalg.qr``; under ``vmap`` on the CPU the batch is looped, as :func:`eigh` does. Not
    differentiable."""
    if jax.default_backend() != "cpu" or jnp.ndim(a) != 2:
        return jnp.linalg.qr(a)
    return _qr_unbatched(a)
