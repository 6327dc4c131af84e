"""Spectral density of a Hessian / GGN by stochastic Lanczos quadrature (SLQ).

For a unit random vector v, the Lanczos tridiagonal ``T_m`` built from v gives a Gauss quadrature
rule for the spectral measure of A seen from v: nodes θ_j (eigenvalues of ``T_m``) and weights
τ_j = (first component of the j-th eigenvector of ``T_m``)², Σ_j τ_j = 1. Averaging over
``num_runs`` random vectors and smoothing every node with a Gaussian of width σ gives

    φ(t) = (1/R) Σ_r Σ_j τ_j^(r) N(t; θ_j^(r), σ²),

an estimate of the smoothed eigenvalue density (1/D) Σ_i N(t; λ_i, σ²) that integrates to 1
(Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019 §3; Yao et al. 2020 PyHessian).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cljax.curvature.lanczos import check_key, check_num_iters, flat_info, lanczos, tridiagonal_eigh
from cljax.types import Array, Params, PRNGKey
from cljax.validation import check_positive_int


class SpectralDensity(NamedTuple):
    """``grid: [G]`` eigenvalue axis and ``density: [G]`` (integrates to 1 over a grid that
    covers the spectrum ± a few σ)."""

    grid: Array
    density: Array


def slq_nodes_weights(matvec: Callable[[Params], Params], params_like: Params, key: PRNGKey, *,
                      num_iters: int, num_runs: int) -> tuple[Array, Array]:
    """Gauss-quadrature nodes and weights ``([R, m], [R, m])`` of stochastic Lanczos quadrature:
    one Lanczos run of ``num_iters`` per random start (runs are sequential, ``lax.map``). Each
    run's weights sum to 1."""
    if not callable(matvec):
        raise TypeError(f"matvec must be callable; got {type(matvec).__name__}")
    check_key(key)
    check_positive_int(num_runs, name="num_runs")
    flat, _ = flat_info(params_like)
    check_num_iters(num_iters, flat.size)

    def run(k):
        res = lanczos(matvec, params_like, k, num_iters=num_iters)
        theta, s = tridiagonal_eigh(res.alphas, res.betas)
        return theta, s[0] ** 2

    return jax.lax.map(run, jax.random.split(key, num_runs))


def gaussian_density(nodes: Array, weights: Array, grid: Array, sigma: float | Array) -> Array:
    """``φ(t) = mean_r Σ_j w_rj N(t; θ_rj, σ²)`` on ``grid`` (``nodes, weights: [R, m]``)."""
    nodes = jnp.atleast_2d(nodes)
    weights = jnp.atleast_2d(weights)
    grid = jnp.asarray(grid, nodes.dtype)
    z = (grid[:, None, None] - nodes[None]) / sigma
    phi = jnp.exp(-0.5 * z ** 2) / (sigma * jnp.sqrt(2 * jnp.pi))
    return jnp.sum(phi * weights[None], axis=(1, 2)) / nodes.shape[0]


def spectral_density(matvec: Callable[[Params], Params], params_like: Params, key: PRNGKey, *,
                     num_iters: int, num_runs: int, grid: int | Array = 1000,
                     sigma: float | None = None) -> SpectralDensity:
    """Smoothed eigenvalue density of a symmetric linear map by stochastic Lanczos quadrature
    (Ghorbani et al. 2019; Yao et al. 2020).

    Args:
      matvec: ``v -> A v`` on pytrees shaped like ``params_like`` (e.g. a whole-task Hessian
        product from :func:`cljax.curvature.make_task_matvec`).
      params_like: pytree giving the vectors' structure, shapes and dtype.
      key: PRNG key (starting vectors).
      num_iters: Lanczos iterations per run (1 <= num_iters <= D); ~80 resolves most spectra.
      num_runs: number of random starting vectors averaged (>= 1).
      grid: number of grid points (the grid then spans [min node − 5σ, max node + 5σ], so the
        density integrates to 1 up to the trapezoid rule) or an explicit 1-D array of points.
      sigma: Gaussian smoothing width; default 1 % of the spread of the Ritz values
        (``0.01 · (max θ − min θ)``, or ``1e-3 · max(1, |θ|)`` when all nodes coincide).
    Returns:
      :class:`SpectralDensity` ``(grid, density)``.
    """
    if sigma is not None and (not np.isfinite(sigma) or sigma <= 0):
        raise ValueError(f"sigma must be a positive finite number or None; got {sigma}")
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        if grid < 2:
            raise ValueError(f"grid must be >= 2 points or an array; got {grid}")
    else:
        g = jnp.asarray(grid)
        if g.ndim != 1 or g.shape[0] < 2:
            raise ValueError(f"grid must be an int >= 2 or a 1-D array of >= 2 points; got shape "
                             f"{g.shape}")
        if not jnp.issubdtype(g.dtype, jnp.floating):
            g = g.astype(jnp.result_type(float))
        grid = g
    nodes, weights = slq_nodes_weights(matvec, params_like, key, num_iters=num_iters,
                                       num_runs=num_runs)
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    width: float | Array
    if sigma is None:
        spread = hi - lo
        width = jnp.where(spread > 0, 0.01 * spread, 1e-3 * jnp.maximum(1.0, jnp.abs(hi)))
    else:
        width = sigma
    if isinstance(grid, (int, np.integer)):
        grid = jnp.linspace(lo - 5 * width, hi + 5 * width, int(grid), dtype=nodes.dtype)
    return SpectralDensity(grid, gaussian_density(nodes, weights, grid, width))


__all__ = ["SpectralDensity", "slq_nodes_weights", "gaussian_density", "spectral_density"]
