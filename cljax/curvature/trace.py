"""Stochastic trace estimators: Hutchinson (Hutchinson 1990; Avron & Toledo 2011) and Hutch++
(Meyer, Musco, Musco & Woodruff 2021).

``tr(A) = E_v[vᵀ A v]`` for any random ``v`` with ``E[v vᵀ] = I``; Rademacher ``v`` (±1 entries)
gives the smallest variance among such distributions, ``Var = 2 Σ_{i≠j} A_ij²``. Used on network
Hessians by Yao et al. 2020 (PyHessian) as a flatness measure alongside λ_max.

Hutch++ spends a third of its matrix-vector products on a sketch ``Q = orth(A S)`` of A's top
eigenspace, computes that part's trace ``tr(QᵀAQ)`` exactly and runs Hutchinson only on the
deflated remainder ``(I − QQᵀ) A (I − QQᵀ)``. For a PSD A its error is O(1/m) in the number of
products m instead of Hutchinson's O(1/√m) (Meyer et al. 2021, Theorem 1.1) — the gain is largest
for the fast-decaying spectra of network Hessians / GGNs.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding

from cljax.chunking import resolve_sharding
from cljax.curvature.hvp import make_task_matvec, task_ggn_vp, task_hvp
from cljax.curvature.lanczos import (
    check_finite_result,
    check_key,
    check_matvec,
    flat_info,
    lanczos_jit,
)
from cljax.importance import exact_fisher_diagonal
from cljax.types import Array, Batch, LogitsFn, Params, PRNGKey
from cljax.validation import check_positive_int


class TraceEstimate(NamedTuple):
    """``trace``: mean of the samples; ``stderr``: their standard deviation / √n (NaN for one
    sample); ``samples: [num_samples]``: the individual ``vᵀ A v``."""

    trace: Array
    stderr: Array
    samples: Array


def hutchinson_trace(matvec: Callable[[Params], Params], params_like: Params, key: PRNGKey, *,
                     num_samples: int) -> TraceEstimate:
    """Estimate ``tr(A)`` from ``num_samples`` Rademacher probes ``vᵀ A v`` (Hutchinson 1990).

    Args:
      matvec: symmetric linear map ``v -> A v`` on pytrees shaped like ``params_like`` (e.g.
        :func:`cljax.curvature.make_task_matvec`).
      params_like: pytree giving the structure, shapes and dtype of the vectors.
      key: PRNG key for the probes.
      num_samples: number of probes (``>= 1``; ``>= 2`` for a standard error). Probes run one
        after the other (``lax.map``), so memory is that of one matvec.
    Returns:
      :class:`TraceEstimate` ``(trace, stderr, samples)``. Jit-able with ``num_samples`` static.
    Raises:
      ValueError: ``matvec`` returns another structure or shapes than ``params_like``.
      FloatingPointError: a sample is NaN/inf (checked outside ``jit`` only).
    """
    check_key(key)
    check_positive_int(num_samples, name="num_samples")
    flat_info(params_like)
    check_matvec(matvec, params_like)
    out = _hutchinson_jit(matvec, num_samples, params_like, key)
    check_finite_result(out.samples, "a Hutchinson sample")
    return out


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hutchinson_jit(matvec, num_samples, params_like, key):
    flat, unravel = ravel_pytree(params_like)

    def probe(k):
        v = jax.random.rademacher(k, flat.shape, flat.dtype)
        av = ravel_pytree(matvec(unravel(v)))[0]
        return jnp.vdot(v, av.astype(flat.dtype))

    samples = jax.lax.map(probe, jax.random.split(key, num_samples))
    trace = jnp.mean(samples)
    if num_samples > 1:
        stderr = jnp.std(samples, ddof=1) / jnp.sqrt(num_samples)
    else:
        stderr = jnp.full((), jnp.nan, flat.dtype)
    return TraceEstimate(trace, stderr, samples)


def hutchpp_trace(matvec: Callable[[Params], Params], params_like: Params, key: PRNGKey, *,
                  num_matvecs: int, sketch_size: int | None = None,
                  sketch: str = "random") -> TraceEstimate:
    """Estimate ``tr(A)`` with Hutch++ (Meyer et al. 2021, Algorithm 1) in ``num_matvecs`` products.

    With ``s = sketch_size`` (default ``num_matvecs // 3``) and ``n = num_matvecs − 2s``: Rademacher
    ``S [D, s]``, ``Q = qr(A S)`` (s products); ``t₁ = tr(QᵀAQ)`` (s products); Rademacher
    ``g_1..g_n`` and ``t₂ = (1/n) Σ_i g_iᵀ P A P g_i`` with ``P = I − QQᵀ`` (n products);
    ``tr ≈ t₁ + t₂``.

    Args:
      matvec: symmetric linear map ``v -> A v`` on pytrees shaped like ``params_like``.
      params_like: pytree giving the structure, shapes and dtype of the vectors.
      key: PRNG key for the sketch and the probes.
      num_matvecs: total products ``>= 3`` (static).
      sketch_size: columns of the sketch, ``1 <= s``, ``2s < num_matvecs``, ``s <= D``
        (``s < num_matvecs`` for ``sketch="krylov"``, default ``num_matvecs // 2`` there).
      sketch: ``"random"`` — Hutch++ as published (Q = qr(A S), then s products for tr(QᵀAQ));
        ``"krylov"`` — Q = the basis of s Lanczos iterations from a random start
        (:func:`cljax.curvature.lanczos`, full reorthogonalisation), whose tridiagonal T = QᵀAQ
        gives tr(QᵀAQ) = Σ αᵢ with no further product, so ``num_matvecs − s`` products go to
        the probes; the Krylov space also captures the top eigenvectors far better than one
        random sketch of the same size (the "Krylov-aware" variant of Chen & Hallman 2023).
    Returns:
      :class:`TraceEstimate` with ``samples [n] = t₁ + g_iᵀ P A P g_i`` (their mean is the
      estimate) and ``stderr`` = their standard deviation / √n: the sampling error of the
      Hutchinson part given the sketch (NaN for n = 1). Memory: ``2s + 1`` vectors of size D.
      Jit-able with ``num_matvecs`` / ``sketch_size`` static.
    Raises:
      ValueError: ``matvec`` returns another structure or shapes than ``params_like``.
      FloatingPointError: a sample is NaN/inf (checked outside ``jit`` only).
    """
    check_key(key)
    check_positive_int(num_matvecs, name="num_matvecs")
    if num_matvecs < 3:
        raise ValueError(f"num_matvecs must be >= 3 (sketch, its trace, one probe); got "
                         f"{num_matvecs}")
    flat, _ = flat_info(params_like)
    if sketch not in ("random", "krylov"):
        raise ValueError(f"sketch must be 'random' or 'krylov'; got {sketch!r}")
    per_column = 2 if sketch == "random" else 1
    if sketch_size is None:
        sketch_size = num_matvecs // (per_column + 1)
    check_positive_int(sketch_size, name="sketch_size")
    if per_column * sketch_size >= num_matvecs:
        raise ValueError(f"sketch_size must leave at least one probe: {per_column} * sketch_size"
                         f" < num_matvecs ({num_matvecs}); got {sketch_size}")
    if sketch_size > flat.size:
        raise ValueError(f"sketch_size must be <= the dimension of params_like ({flat.size}); "
                         f"got {sketch_size}")
    check_matvec(matvec, params_like)
    out = _hutchpp_jit(matvec, num_matvecs, sketch_size, sketch, params_like, key)
    check_finite_result(out.samples, "a Hutch++ sample")
    return out


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _hutchpp_jit(matvec, num_matvecs, sketch_size, sketch, params_like, key):
    flat, unravel = ravel_pytree(params_like)
    dtype = flat.dtype
    mv = lambda v: ravel_pytree(matvec(unravel(v)))[0].astype(dtype)
    k_s, k_g = jax.random.split(key)
    if sketch == "random":
        s = jax.random.rademacher(k_s, (sketch_size, flat.size), dtype)
        y = jax.lax.map(mv, s)                               # [s, D] = (A S)ᵀ
        q = jnp.linalg.qr(y.T)[0].T                          # [s, D], orthonormal rows
        aq = jax.lax.map(mv, q)
        t1 = jnp.sum(q * aq)                                 # tr(Qᵀ A Q)
        n = num_matvecs - 2 * sketch_size
    else:
        res = lanczos_jit(matvec, sketch_size, True, params_like, k_s)
        q = jax.vmap(lambda t: ravel_pytree(t)[0])(res.basis).astype(dtype)   # [s, D]
        t1 = jnp.sum(res.alphas).astype(dtype)               # tr(Qᵀ A Q) = tr(T)
        n = num_matvecs - sketch_size

    def probe(k):
        g = jax.random.rademacher(k, flat.shape, dtype)
        pg = g - q.T @ (q @ g)
        return jnp.vdot(pg, mv(pg))

    samples = t1 + jax.lax.map(probe, jax.random.split(k_g, n))
    trace = jnp.mean(samples)
    stderr = (jnp.std(samples, ddof=1) / jnp.sqrt(n) if n > 1
              else jnp.full((), jnp.nan, dtype))
    return TraceEstimate(trace, stderr, samples)


def ggn_split_trace(logits_fn: LogitsFn, params: Params, batch: Batch, key: PRNGKey, *,
                    num_samples: int, chunk_size: int | None = None,
                    sharding: NamedSharding | None = None) -> TraceEstimate:
    """``tr(H)`` of the mean softmax cross-entropy as an exact GGN trace plus Hutchinson on the rest.

    H = G + R with G the generalised Gauss–Newton matrix (= the Fisher for softmax CE; Martens
    2020 §9) and R = Σ_c ∂ℓ/∂z_c ∇²z_c. ``tr(G)`` is computed exactly as the sum of
    :func:`cljax.importance.exact_fisher_diagonal` (the GGN diagonal, one pass over the data in
    chunks), and only ``tr(R)`` is estimated, from ``num_samples`` Rademacher probes
    ``vᵀ(Hv − Gv)`` (:func:`cljax.curvature.task_hvp`, :func:`cljax.curvature.task_ggn_vp`).
    Near a minimum ∂ℓ/∂z is small, so R — and the variance 2‖R‖²_F of its probes — is much
    smaller than H's: on the benchmark MLP (N = 10,000) a probe of R had 1/17 of the variance of
    a probe of H (see BENCHMARKS / ``benchmarks/bench_curvature.py``).

    Args:
      logits_fn, params, batch: as for :func:`cljax.curvature.task_hvp` (integer labels
        ``batch['y']``; examples independent).
      key: PRNG key for the probes.
      num_samples: probes of R (each one HVP and one GGN-vector product), ``>= 1``.
      chunk_size: examples per chunk for every pass over the data (per device when sharded).
      sharding: the examples' ``NamedSharding`` when ``batch`` is split over devices (found by
        itself on a concrete sharded batch): every pass is data parallel (:mod:`cljax.chunking`).
    Returns:
      :class:`TraceEstimate` with ``samples [num_samples] = tr(G) + vᵀRv`` (the mean is the
      estimate; ``stderr`` their standard deviation / √n, the error of the R part only).
    """
    check_key(key)
    check_positive_int(num_samples, name="num_samples")
    make_task_matvec(logits_fn, params, batch, chunk_size=chunk_size)   # validates the inputs
    sharding = resolve_sharding(batch["x"], sharding)
    if chunk_size is not None:
        chunk_size = min(int(chunk_size), int(jnp.shape(batch["x"])[0]))
    return _ggn_split_jit(logits_fn, num_samples, chunk_size, sharding, params, dict(batch), key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _ggn_split_jit(logits_fn, num_samples, chunk_size, sharding, params, batch, key):
    diag = exact_fisher_diagonal(logits_fn, params, batch, chunk_size=chunk_size,
                                 sharding=sharding)
    tr_g = jnp.asarray(optax.tree_utils.tree_sum(diag))

    def rest(v):
        h = task_hvp(logits_fn, params, batch, v, chunk_size=chunk_size, sharding=sharding)
        g = task_ggn_vp(logits_fn, params, batch, v, chunk_size=chunk_size, sharding=sharding)
        return optax.tree_utils.tree_sub(h, g)

    est = _hutchinson_jit(rest, num_samples, params, key)
    samples = tr_g.astype(est.samples.dtype) + est.samples
    return TraceEstimate(jnp.mean(samples), est.stderr, samples)


__all__ = ["TraceEstimate", "hutchinson_trace", "hutchpp_trace", "ggn_split_trace"]
