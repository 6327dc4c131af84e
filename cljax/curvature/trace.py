"""Hutchinson's stochastic trace estimator (Hutchinson 1990; Avron & Toledo 2011).

``tr(A) = E_v[vᵀ A v]`` for any random ``v`` with ``E[v vᵀ] = I``; Rademacher ``v`` (±1 entries)
gives the smallest variance among such distributions, ``Var = 2 Σ_{i≠j} A_ij²``. Used on network
Hessians by Yao et al. 2020 (PyHessian) as a flatness measure alongside λ_max.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from cljax.curvature.lanczos import _check_key, _flat_info
from cljax.types import Array, Params, PRNGKey
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
    """
    if not callable(matvec):
        raise TypeError(f"matvec must be callable; got {type(matvec).__name__}")
    _check_key(key)
    check_positive_int(num_samples, name="num_samples")
    _flat_info(params_like)
    return _hutchinson_jit(matvec, num_samples, params_like, key)


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


__all__ = ["TraceEstimate", "hutchinson_trace"]
