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


def _looped_under_vmap(fn):
    """``fn`` (a LAPACK call on unbatched arrays, returning one array or a tuple) whose ``vmap``
    runs the batch through ``lax.map``, each call seeing one problem (the module docstring);
    arguments not batched are broadcast to the batch."""

    @custom_vmap
    def unbatched(*args):
        return fn(*args)

    @unbatched.def_vmap
    def rule(axis_size, in_batched, *args):
        out_shape = jax.eval_shape(fn, *args)
        out_axes = jax.tree.map(lambda _: True, out_shape)
        if not any(in_batched):
            return unbatched(*args), jax.tree.map(lambda _: False, out_shape)
        args = tuple(a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a)))
                     for a, b in zip(args, in_batched))
        return lax.map(lambda xs: unbatched(*xs), args), out_axes

    return unbatched


_eigh_unbatched = _looped_under_vmap(lambda m: tuple(jnp.linalg.eigh(m)))


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


_solve_unbatched = _looped_under_vmap(jnp.linalg.solve)


def solve(a: Array, b: Array) -> Array:
    """``x`` with ``a @ x = b`` for a square ``a [n, n]`` and ``b [n, k]``, like
    ``jnp.linalg.solve`` (LU with partial pivoting); under ``vmap`` on the CPU the batch is looped
    with ``lax.map``, each LAPACK call seeing one matrix, as :func:`eigh` does (the module
    docstring: a batched LAPACK call next to other kernels of the same program can deadlock).
    Not differentiable (the Stiefel retraction solves inside the optimizer update)."""
    if jax.default_backend() != "cpu" or jnp.ndim(a) != 2:
        return jnp.linalg.solve(a, b)
    return _solve_unbatched(a, b)


_qr_unbatched = _looped_under_vmap(lambda a: tuple(jnp.linalg.qr(a)))


def qr(a: Array) -> tuple[Array, Array]:
    """``(q, r)``, the reduced QR decomposition of ``a [m, n]`` (Householder), like
    ``jnp.linalg.qr``; under ``vmap`` on the CPU the batch is looped, as :func:`eigh` does. Not
    differentiable."""
    if jax.default_backend() != "cpu" or jnp.ndim(a) != 2:
        return jnp.linalg.qr(a)
    return _qr_unbatched(a)
