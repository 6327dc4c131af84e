"""k-means and product quantisation (PQ), on the device, jit-able, with static shapes.

Product quantisation (Jégou, Douze & Schmid 2011, "Product quantization for nearest neighbor
search", TPAMI) splits a D-dim vector into ``m`` sub-vectors of ``d = D / m``
dimensions and quantises each with its own codebook of ``K`` centroids fitted by k-means on that
sub-space: a vector is stored as ``m`` codes (uint8 here, so ``K ≤ 256``) and reconstructed as
the concatenation of the chosen centroids. REMIND (Hayes et al. 2020) stores the mid-
network feature maps of a replay memory this way (``m = 32`` codebooks of ``K = 256`` codes per
512-channel location, fitted once on the base-initialisation data).

* :func:`kmeans_init` — initial centroids from a key: k-means++ (Arthur & Vassilvitskii 2007:
  each new centroid drawn with probability ∝ weight × squared distance to the nearest chosen
  one) or random rows (∝ weight, without replacement as far as the rows allow);
* :func:`lloyd` — a fixed number of Lloyd iterations (assign each row to its nearest centroid,
  move each centroid to the weighted mean of its rows; a centroid without rows stays put);
* :func:`kmeans` — the two together; :func:`nearest` — the assignment step;
* :func:`fit_codebooks`, :func:`pq_encode`, :func:`pq_decode` — PQ over the last axis, and
  :func:`pq_distortion`, the mean squared reconstruction error.

Rows carry weights (``weights``, ≥ 0): padding rows of a fixed-size array get weight 0 and take
no part in the fit. Distances are squared Euclidean; the assignment computes
``‖c‖² − 2 x·c`` with matrix products at ``Precision.HIGHEST`` (no TF32 on GPUs), and sub-spaces
are processed one after the other (``lax.map``), so memory stays ``O(N·K)`` however many
codebooks there are.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax.types import Array, PRNGKey
from cljax.validation import check_choice, check_positive_int, is_concrete

INITS = ("kmeans++", "random")
"""How :func:`kmeans_init` chooses the initial centroids."""
MAX_CODES = 256
"""Codes are stored as uint8: at most 256 centroids per codebook."""
BATCHED_ENCODE_MAX = 1 << 24
"""Largest rows × sub-spaces × codes whose distances :func:`pq_encode` holds at once (64 MiB
in float32); above it, one sub-space at a time."""


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def _check_points(points: Any, name: str = "points") -> None:
    if jnp.ndim(points) != 2 or not jnp.issubdtype(jnp.asarray(points).dtype, jnp.floating):
        raise ValueError(f"{name} must be a float array [N, D] (N rows of D features); got "
                         f"{jnp.asarray(points).dtype}{jnp.shape(points)}")
    if jnp.shape(points)[0] < 1 or jnp.shape(points)[1] < 1:
        raise ValueError(f"{name} must hold at least one row of at least one feature; got "
                         f"shape {jnp.shape(points)}")


def _check_weights(weights: Any, n: int) -> None:
    if weights is None:
        return
    if jnp.shape(weights) != (n,):
        raise ValueError(f"weights must have shape ({n},), one per row; got {jnp.shape(weights)}")
    if is_concrete(weights):
        w = np.asarray(weights, np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and >= 0 (0: a padding row)")
        if not np.any(w > 0):
            raise ValueError("weights must give at least one row a positive weight")


def _check_num_codes(num_codes: Any) -> None:
    check_positive_int(num_codes, name="num_codes")
    if num_codes > MAX_CODES:
        raise ValueError(f"num_codes must be <= {MAX_CODES} (codes are stored as uint8); got "
                         f"{num_codes}")


def _check_iters(iters: Any) -> None:
    if not isinstance(iters, (int, np.integer)) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"iters must be an int >= 0 (Lloyd iterations); got {iters!r}")


def _check_codebooks(codebooks: Any) -> None:
    if jnp.ndim(codebooks) != 3 or not jnp.issubdtype(jnp.asarray(codebooks).dtype,
                                                      jnp.floating):
        raise ValueError(f"codebooks must be a float array [m, K, d] (m sub-spaces of K "
                         f"centroids of d dims, fit_codebooks' output); got "
                         f"{jnp.asarray(codebooks).dtype}{jnp.shape(codebooks)}")
    if jnp.shape(codebooks)[1] > MAX_CODES:
        raise ValueError(f"codebooks hold at most {MAX_CODES} centroids each (uint8 codes); got "
                         f"{jnp.shape(codebooks)[1]}")


def _weights(weights: Array | None, n: int, dtype: Any) -> Array:
    return jnp.ones((n,), dtype) if weights is None else jnp.asarray(weights, dtype)


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------

def nearest(points: Array, centroids: Array) -> Array:
    """Index of each row's nearest centroid (squared Euclidean; ties: the lowest index),
    ``int32 [N]``: argmin over k of ``‖c_k‖² − 2 x·c_k`` (``‖x‖²`` is the same for every k)."""
    _check_points(points)
    _check_points(centroids, "centroids")
    if jnp.shape(points)[1] != jnp.shape(centroids)[1]:
        raise ValueError(f"points [N, {jnp.shape(points)[1]}] and centroids "
                         f"[K, {jnp.shape(centroids)[1]}] must have the same width")
    cross = jnp.matmul(points, centroids.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.sum(centroids * centroids, axis=-1)[None, :] - 2.0 * cross
    return first_argmin(d)


def first_argmin(values: Array) -> Array:
    """``jnp.argmin(values, axis=-1)`` (the first minimum; the first NaN where a row has one),
    ``int32``, computed as two plain min-reductions: XLA's CPU argmin is a variadic reduction
    several times slower, and PQ encodes every REMIND step."""
    values = jnp.asarray(values)
    if jnp.ndim(values) < 1 or jnp.shape(values)[-1] == 0:
        raise ValueError(f"values must have a non-empty last axis; got shape {jnp.shape(values)}")
    k = values.shape[-1]
    iota = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
    low = jnp.min(values, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(values == low, iota, k), axis=-1)
    if not jnp.issubdtype(values.dtype, jnp.floating):
        return first
    nan = jnp.min(jnp.where(jnp.isnan(values), iota, k), axis=-1)
    return jnp.where(nan < k, nan, first)


def kmeans_init(points: Array, key: PRNGKey, num_codes: int, *, weights: Array | None = None,
                init: str = "kmeans++") -> Array:
    """Initial centroids ``[num_codes, D]`` chosen among the rows of ``points`` (``[N, D]``).

    ``init="kmeans++"``: the first centroid a row drawn ∝ its weight, each next one a row drawn
    ∝ weight × squared distance to the nearest centroid chosen so far (Arthur & Vassilvitskii
    2007, "k-means++: the advantages of careful seeding"; rows ∝ weight alone once every weighted row is a centroid).
    ``init="random"``: ``num_codes`` distinct rows drawn ∝ weight (Gumbel top-k); when fewer
    rows have a positive weight, the rest are drawn again among them (duplicates).
    """
    check_choice(init, INITS, name="init")
    _check_points(points)
    check_positive_int(num_codes, name="num_codes")
    n, _ = points.shape
    _check_weights(weights, n)
    w = _weights(weights, n, points.dtype)
    log_w = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
    k_first, k_rest = jax.random.split(key)
    if init == "random":
        scores = log_w + jax.random.gumbel(k_first, (n,), points.dtype)
        idx = jax.lax.top_k(scores, min(num_codes, n))[1]
        if num_codes > n:
            idx = jnp.concatenate([idx, jnp.zeros((num_codes - n,), idx.dtype)])
        again = jax.random.categorical(k_rest, log_w, shape=(num_codes,))
        idx = jnp.where(jnp.arange(num_codes) < n, idx, again)
        idx = jnp.where(w[idx] > 0, idx, again)
        return points[idx]

    first = jax.random.categorical(k_first, log_w)
    centroids = jnp.zeros((num_codes,) + points.shape[1:], points.dtype).at[0].set(points[first])
    d2 = jnp.sum(jnp.square(points - points[first]), axis=-1)
    keys = jax.random.split(k_rest, num_codes)

    def pick(k, carry):
        centroids, d2 = carry
        p = w * d2
        logits = jnp.where(jnp.sum(p) > 0,
                           jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf), log_w)
        i = jax.random.categorical(keys[k], logits)
        d2 = jnp.minimum(d2, jnp.sum(jnp.square(points - points[i]), axis=-1))
        return centroids.at[k].set(points[i]), d2

    return jax.lax.fori_loop(1, num_codes, pick, (centroids, d2))[0]


def lloyd(points: Array, centroids: Array, *, iters: int, weights: Array | None = None) -> Array:
    """``iters`` Lloyd iterations from ``centroids`` (``[K, D]``): assign every row to its
    nearest centroid (:func:`nearest`), then move each centroid to the weighted mean of its
    rows; a centroid whose rows weigh 0 stays where it is (Lloyd 1982, "Least squares
    quantization in PCM")."""
    _check_points(points)
    _check_points(centroids, "centroids")
    _check_iters(iters)
    n = points.shape[0]
    _check_weights(weights, n)
    w = _weights(weights, n, points.dtype)
    k = centroids.shape[0]
    centroids = centroids.astype(points.dtype)

    def step(_, c):
        a = nearest(points, c)
        sums = jax.ops.segment_sum(points * w[:, None], a, num_segments=k)
        mass = jax.ops.segment_sum(w, a, num_segments=k)
        return jnp.where(mass[:, None] > 0, sums / jnp.where(mass > 0, mass, 1.0)[:, None], c)

    return jax.lax.fori_loop(0, iters, step, centroids)


def kmeans(points: Array, key: PRNGKey, num_codes: int, *, iters: int = 20,
           weights: Array | None = None, init: str = "kmeans++") -> Array:
    """k-means: :func:`kmeans_init` from ``key``, then ``iters`` :func:`lloyd` iterations;
    returns the centroids ``[num_codes, D]``."""
    c0 = kmeans_init(points, key, num_codes, weights=weights, init=init)
    return lloyd(points, c0, iters=iters, weights=weights)


# --------------------------------------------------------------------------------------------
# Product quantisation
# --------------------------------------------------------------------------------------------

def _subspaces(features: Array, m: int, name: str = "features") -> Array:
    """``[..., D]`` → ``[m, N, D / m]`` (N = the leading axes' product)."""
    d_all = jnp.shape(features)[-1]
    if d_all % m:
        raise ValueError(f"the last axis of {name} ({d_all}) must split into {m} sub-vectors "
                         f"of equal width: num_subvectors must divide it")
    x = jnp.reshape(features, (-1, m, d_all // m))
    return jnp.transpose(x, (1, 0, 2))


def fit_codebooks(features: Array, key: PRNGKey, num_subvectors: int, num_codes: int,
                  iters: int = 20, *, weights: Array | None = None,
                  init: str = "kmeans++") -> Array:
    """PQ codebooks ``[m, K, D/m]`` of ``features`` (``[N, D]``): the rows split into
    ``m = num_subvectors`` sub-vectors of ``D/m`` dims, one :func:`kmeans` of ``K = num_codes``
    centroids per sub-space (Jégou et al. 2011), each from its own key (``key``
    split ``m`` ways) and with the rows' ``weights`` (0: a padding row)."""
    _check_points(features, "features")
    check_positive_int(num_subvectors, name="num_subvectors")
    _check_num_codes(num_codes)
    _check_iters(iters)
    check_choice(init, INITS, name="init")
    _check_weights(weights, features.shape[0])
    sub = _subspaces(features, num_subvectors)
    keys = jax.random.split(key, num_subvectors)
    return jax.lax.map(lambda a: kmeans(a[0], a[1], num_codes, iters=iters, weights=weights,
                                        init=init), (sub, keys))


def pq_encode(features: Array, codebooks: Array) -> Array:
    """Codes of ``features`` (``[..., D]``): for each of the ``m`` sub-vectors the index of its
    nearest centroid in that sub-space's codebook (:func:`nearest`); ``uint8 [..., m]``."""
    _check_codebooks(codebooks)
    if jnp.ndim(features) < 1 or not jnp.issubdtype(jnp.asarray(features).dtype, jnp.floating):
        raise ValueError(f"features must be a float array [..., D]; got "
                         f"{jnp.asarray(features).dtype}{jnp.shape(features)}")
    m, _, d = codebooks.shape
    if jnp.shape(features)[-1] != m * d:
        raise ValueError(f"features' last axis must be m × d = {m} × {d} = {m * d} (the "
                         f"codebooks' sub-spaces); got {jnp.shape(features)[-1]}")
    lead = jnp.shape(features)[:-1]
    if math.prod(lead) == 0:
        return jnp.zeros(lead + (m,), jnp.uint8)
    sub = _subspaces(features, m)
    books = codebooks.astype(sub.dtype)
    if sub.shape[1] * m * codebooks.shape[1] <= BATCHED_ENCODE_MAX:      # one batched matmul
        codes = jax.vmap(nearest)(sub, books)
    else:                                        # a sub-space at a time: bounded memory
        codes = jax.lax.map(lambda a: nearest(a[0], a[1]), (sub, books))
    return jnp.reshape(codes.T.astype(jnp.uint8), lead + (m,))


def pq_decode(codes: Array, codebooks: Array) -> Array:
    """Reconstruction of ``codes`` (``[..., m]``, integers < K): the concatenated centroids
    ``[..., m·d]``, in the codebooks' dtype."""
    _check_codebooks(codebooks)
    m, k, d = codebooks.shape
    if jnp.ndim(codes) < 1 or jnp.shape(codes)[-1] != m or not jnp.issubdtype(
            jnp.asarray(codes).dtype, jnp.integer):
        raise ValueError(f"codes must be an integer array [..., {m}] (one code per codebook); "
                         f"got {jnp.asarray(codes).dtype}{jnp.shape(codes)}")
    if is_concrete(codes) and np.size(codes):
        lo, hi = int(np.min(np.asarray(codes))), int(np.max(np.asarray(codes)))
        if lo < 0 or hi >= k:
            raise ValueError(f"codes must lie in [0, {k}) (the codebooks' size); got "
                             f"[{lo}, {hi}]")
    parts = codebooks[jnp.arange(m), jnp.asarray(codes).astype(jnp.int32)]   # [..., m, d]
    return jnp.reshape(parts, jnp.shape(codes)[:-1] + (m * d,))


def pq_distortion(features: Array, codebooks: Array, *, weights: Array | None = None) -> Array:
    """Mean (weighted over rows) squared Euclidean error of reconstructing ``features``
    (``[N, D]``) by ``pq_decode(pq_encode(features))``."""
    _check_points(features, "features")
    _check_weights(weights, features.shape[0])
    err = jnp.sum(jnp.square(features - pq_decode(pq_encode(features, codebooks), codebooks)),
                  axis=-1)
    w = _weights(weights, features.shape[0], err.dtype)
    return jnp.sum(err * w) / jnp.sum(w)


__all__ = ["INITS", "MAX_CODES", "BATCHED_ENCODE_MAX", "nearest", "first_argmin", "kmeans_init",
           "lloyd", "kmeans", "fit_codebooks", "pq_encode", "pq_decode", "pq_distortion"]
