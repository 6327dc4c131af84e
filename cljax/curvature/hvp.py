"""Hessian- and generalised-Gauss–Newton-vector products, for one batch or a whole task.

* :func:`hvp` — ``H v`` for any scalar ``loss_fn(params)`` by forward-over-reverse differentiation,
  ``jvp(grad(loss_fn))`` (Pearlmutter 1994; the form recommended by the JAX autodiff cookbook).
  It costs about 2–3 gradient evaluations and never builds ``H``.
* :func:`ggn_vp` — ``G v = Jᵀ H_out J v`` (Schraudolph 2002; Martens 2020), with ``J`` the Jacobian of
  the logits w.r.t. the params and, for softmax cross-entropy, ``H_out = diag(p) − p pᵀ`` per
  example; a **mean over examples**. ``G`` is positive semi-definite and equals the Hessian when the
  logits are linear in the params (it drops the term Σ_c ∂ℓ/∂z_c ∇²z_c).

Whole-task versions (:func:`task_loss`, :func:`task_value_and_grad`, :func:`task_hvp`,
:func:`task_ggn_vp`, :func:`make_task_matvec`) split the task's examples into chunks of
``chunk_size`` and accumulate over them with ``lax.scan`` inside one compiled program, so memory is
bounded by the chunk, not by the task. When ``chunk_size`` does not divide ``N`` the last chunk is
padded with zero-weight examples. A batch split over several devices (``sharding=``, found by
itself on a concrete sharded batch) is summed by each device over its own examples, chunk by
chunk, with one all-reduce at the end (:mod:`cljax.chunking`). Optional per-example ``weights``
(≥ 0) turn every "mean over examples" into ``Σ_n w_n ℓ_n / Σ_n w_n``; a 0/1 mask selects the
valid examples of a padded task.

The task loss ℓ is the mean per-example loss (softmax cross-entropy with the integer labels
``batch['y']`` unless ``per_example_loss`` is given). All products are exact, with the same scale
as ℓ (curvature of the mean, not of the sum).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from cljax.chunking import chunked_sum, resolve_sharding
from cljax.types import Array, Batch, LogitsFn, LossFn, Params
from cljax.validation import (
    check_batch,
    check_finite,
    check_positive_int,
    check_same_structure,
    is_concrete,
)

PerExampleLoss = Callable[[Array, Batch], Array]
Matvec = Callable[[Params], Params]


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------

def softmax_cross_entropy(logits: Array, batch: Batch) -> Array:
    """Per-example softmax cross-entropy ``−log softmax(logits)[y]`` → ``[B]`` (the default loss)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    y = jnp.asarray(batch["y"]).astype(jnp.int32)
    return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def _check_weight_values(weights) -> None:
    """Concrete per-example weights must be finite, >= 0 and not all zero."""
    if is_concrete(weights):
        w_np = np.asarray(weights)
        if not np.all(np.isfinite(w_np)) or np.any(w_np < 0):
            raise ValueError("weights must be finite and >= 0")
        if not np.any(w_np > 0):
            raise ValueError("weights must have at least one positive entry")


def _check_v(v: Params, params: Params) -> Params:
    check_same_structure(v, params, name="v")
    check_finite(v, name="v")
    # jvp needs tangents with the primals' dtypes.
    return jax.tree.map(lambda a, p: jnp.asarray(a, jnp.result_type(p)), v, params)


def _check_callable(fn, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable; got {type(fn).__name__}")


# --------------------------------------------------------------------------------------------
# single-batch products
# --------------------------------------------------------------------------------------------

def hvp(loss_fn: LossFn, params: Params, v: Params) -> Params:
    """Hessian-vector product ``∇²loss_fn(params) · v`` by forward-over-reverse (``jvp(grad)``).

    Args:
      loss_fn: scalar function of the params, ``loss_fn(params) -> []``.
      params: the point at which the Hessian is taken (pytree).
      v: a pytree with ``params``' structure and shapes (cast to the params' dtypes).
    Returns:
      ``H v`` with ``params``' structure.
    """
    _check_callable(loss_fn, "loss_fn")
    check_finite(params, name="params")
    v = _check_v(v, params)
    return _hvp_jit(loss_fn, params, v)


@functools.partial(jax.jit, static_argnums=0)
def _hvp_jit(loss_fn, params, v):
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _output_hessian_product(logits: Array, u: Array, batch: Batch,
                            per_example_loss: PerExampleLoss | None) -> Array:
    """Per-example ``H_out u`` with ``H_out = ∂²ℓ_n/∂z²`` (closed form for softmax CE)."""
    if per_example_loss is None:
        p = jax.nn.softmax(logits, axis=-1)
        return p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)
    grad_z = jax.grad(lambda z: jnp.sum(per_example_loss(z, batch)))
    return jax.jvp(grad_z, (logits,), (u,))[1]


def _ggn_weighted_sum(logits_fn: LogitsFn, params: Params, batch: Batch, w: Array, v: Params,
                      per_example_loss: PerExampleLoss | None) -> Params:
    """``Σ_n w_n J_nᵀ H_out,n J_n v`` (one linearisation, then its transpose)."""
    f = lambda p: logits_fn(p, batch)
    logits, f_jvp = jax.linearize(f, params)
    jv = f_jvp(v)
    u = _output_hessian_product(logits, jv, batch, per_example_loss)
    u = u * w.astype(u.dtype).reshape((-1,) + (1,) * (u.ndim - 1))
    (gv,) = jax.linear_transpose(f_jvp, params)(u)
    return gv


def ggn_vp(logits_fn: LogitsFn, params: Params, batch: Batch, v: Params, *,
           per_example_loss: PerExampleLoss | None = None) -> Params:
    """Generalised Gauss–Newton-vector product ``G v = (1/B) Σ_n J_nᵀ H_out,n J_n v``.

    ``J_n = ∂ logits_n / ∂θ`` and, for softmax cross-entropy, ``H_out,n = diag(p_n) − p_n p_nᵀ``
    (Schraudolph 2002; Martens 2020 §8). ``G`` is PSD and equals the Hessian of the mean loss when
    the logits are linear in the params. With ``per_example_loss`` the output Hessian is that
    loss's Hessian w.r.t. the logits (computed by ``jvp(grad)``).

    Args:
      logits_fn: ``logits_fn(params, batch) -> logits[B, C]``.
      params: pytree.
      batch: dict with ``x``, ``y`` (int ``[B]``) and optional ``task``.
      v: pytree with ``params``' structure and shapes.
    Returns:
      ``G v``, a mean over the batch's examples, with ``params``' structure.
    """
    _check_callable(logits_fn, "logits_fn")
    check_batch(batch, require_y=per_example_loss is None)
    check_finite(params, name="params")
    v = _check_v(v, params)
    return _ggn_vp_jit(logits_fn, per_example_loss, params, batch, v)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _ggn_vp_jit(logits_fn, per_example_loss, params, batch, v):
    n = jnp.shape(batch["x"])[0]
    w = jnp.ones((n,), jnp.result_type(*jax.tree.leaves(params)))
    gv = _ggn_weighted_sum(logits_fn, params, batch, w, v, per_example_loss)
    return jax.tree.map(lambda g: g / n, gv)


# --------------------------------------------------------------------------------------------
# chunked whole-task products
# --------------------------------------------------------------------------------------------

def chunk_batch(batch: Batch, chunk_size: int | None, weights: Array | None = None
                ) -> tuple[Batch, Array]:
    """Reshape a task's arrays to ``[num_chunks, chunk_size, ...]`` (zero-padded) plus weights.

    Returns ``(chunks, w)`` with ``w: [num_chunks, chunk_size]`` equal to ``weights`` (default 1)
    on real examples and 0 on padding. ``chunk_size=None`` means one chunk of all ``N`` examples.
    """
    n = int(jnp.shape(batch["x"])[0])
    if n == 0:
        raise ValueError("batch must contain at least one example; got 0")
    if chunk_size is None:
        chunk_size = n
    check_positive_int(chunk_size, name="chunk_size")
    chunk_size = min(int(chunk_size), n)
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n
    if weights is None:
        weights = jnp.ones((n,), jnp.float32)
    weights = jnp.asarray(weights)
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) (one per example); got {weights.shape}")
    if not jnp.issubdtype(weights.dtype, jnp.floating):
        weights = weights.astype(jnp.float32)
    _check_weight_values(weights)

    def reshape(a):
        a = jnp.asarray(a)
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape((num_chunks, chunk_size) + a.shape[1:])

    chunks = {k: reshape(a) for k, a in batch.items()}
    return chunks, reshape(weights)


def chunk_loss_sum(logits_fn: LogitsFn, per_example_loss: PerExampleLoss | None
                   ) -> Callable[[Params, Batch, Array], Array]:
    """``f(params, chunk, w) = Σ_n w_n · loss_n`` of one chunk (softmax cross-entropy unless
    ``per_example_loss``)."""
    loss = softmax_cross_entropy if per_example_loss is None else per_example_loss

    def f(params, chunk, w):
        return jnp.sum(w * loss(logits_fn(params, chunk), chunk).astype(w.dtype))

    return f


def _validate_task(logits_fn, params, batch, chunk_size, weights, per_example_loss,
                   sharding=None) -> NamedSharding | None:
    """Eager checks of the whole-task functions' inputs (shapes, structure, concrete values);
    returns the examples' sharding (:func:`cljax.chunking.resolve_sharding`)."""
    _check_callable(logits_fn, "logits_fn")
    if per_example_loss is not None:
        _check_callable(per_example_loss, "per_example_loss")
    check_batch(batch, require_y=per_example_loss is None)
    check_finite(params, name="params")
    check_finite(batch, name="batch")
    if chunk_size is not None:
        check_positive_int(chunk_size, name="chunk_size")
    n = int(jnp.shape(batch["x"])[0])
    if n == 0:
        raise ValueError("batch must contain at least one example; got 0")
    if weights is not None:
        if jnp.shape(weights) != (n,):
            raise ValueError(f"weights must have shape ({n},) (one per example); got "
                             f"{jnp.shape(weights)}")
        _check_weight_values(weights)
    return resolve_sharding(batch["x"], sharding)


def weighted_task_sum(body: Callable[[Batch, Array], Params], params: Params, batch: Batch,
                      weights: Array | None, chunk_size: int | None,
                      sharding: NamedSharding | None) -> tuple[Params, Array]:
    """``(Σ_chunks body(chunk, w_chunk), Σ_n w_n)``: ``body`` gets each chunk of ``batch`` and its
    weights in the params' dtype (``weights``, default 1; 0 on padding), data parallel over the
    devices of ``sharding`` (:func:`cljax.chunking.chunked_sum`)."""
    dtype = jnp.result_type(*jax.tree.leaves(params))
    n = jnp.shape(batch["x"])[0]
    w = jnp.ones((n,), dtype) if weights is None else jnp.asarray(weights).astype(dtype)

    def one(xs, valid, index):
        del index
        chunk, wc = xs
        return body(chunk, jnp.where(valid, wc, jnp.zeros((), dtype)))

    total = chunked_sum(one, (dict(batch), w), chunk_size=chunk_size, sharding=sharding)
    return total, jnp.sum(w)


_STATIC = (0, 1, 2, 3)  # logits_fn, chunk_size, per_example_loss, sharding


@functools.partial(jax.jit, static_argnums=_STATIC)
def _task_loss_jit(logits_fn, chunk_size, per_example_loss, sharding, params, batch, weights):
    f = chunk_loss_sum(logits_fn, per_example_loss)
    total, wsum = weighted_task_sum(lambda c, wc: f(params, c, wc), params, batch, weights,
                                    chunk_size, sharding)
    return total / wsum


@functools.partial(jax.jit, static_argnums=_STATIC)
def _task_value_and_grad_jit(logits_fn, chunk_size, per_example_loss, sharding, params, batch,
                             weights):
    f = jax.value_and_grad(chunk_loss_sum(logits_fn, per_example_loss))
    (val, grad), wsum = weighted_task_sum(lambda c, wc: f(params, c, wc), params, batch, weights,
                                          chunk_size, sharding)
    return val / wsum, jax.tree.map(lambda g: g / wsum, grad)


@functools.partial(jax.jit, static_argnums=_STATIC)
def _task_hvp_jit(logits_fn, chunk_size, per_example_loss, sharding, params, batch, weights, v):
    g = jax.grad(chunk_loss_sum(logits_fn, per_example_loss))
    body = lambda c, wc: jax.jvp(lambda p: g(p, c, wc), (params,), (v,))[1]
    total, wsum = weighted_task_sum(body, params, batch, weights, chunk_size, sharding)
    return jax.tree.map(lambda t: t / wsum, total)


@functools.partial(jax.jit, static_argnums=_STATIC)
def _task_ggn_vp_jit(logits_fn, chunk_size, per_example_loss, sharding, params, batch, weights,
                     v):
    body = lambda c, wc: _ggn_weighted_sum(logits_fn, params, c, wc, v, per_example_loss)
    total, wsum = weighted_task_sum(body, params, batch, weights, chunk_size, sharding)
    return jax.tree.map(lambda t: t / wsum, total)


def task_loss(logits_fn: LogitsFn, params: Params, batch: Batch, *, chunk_size: int | None = None,
              weights: Array | None = None, per_example_loss: PerExampleLoss | None = None,
              sharding: NamedSharding | None = None) -> Array:
    """The task loss ℓ(θ) = Σ_n w_n ℓ_n(θ) / Σ_n w_n over all of ``batch``, in chunks.

    ``ℓ_n`` is softmax cross-entropy unless ``per_example_loss(logits, batch) -> [B]`` is given;
    with the default weights this is the mean over the task's examples. Compiled once per
    (``logits_fn``, ``chunk_size``, ``per_example_loss``, shapes); jit-able.
    """
    sharding = _validate_task(logits_fn, params, batch, chunk_size, weights, per_example_loss,
                              sharding)
    return _task_loss_jit(logits_fn, chunk_size, per_example_loss, sharding, params, dict(batch),
                          weights)


def task_value_and_grad(logits_fn: LogitsFn, params: Params, batch: Batch, *,
                        chunk_size: int | None = None, weights: Array | None = None,
                        per_example_loss: PerExampleLoss | None = None,
                        sharding: NamedSharding | None = None) -> tuple[Array, Params]:
    """``(ℓ(θ), ∇ℓ(θ))`` over the whole task, accumulated chunk by chunk (see :func:`task_loss`)."""
    sharding = _validate_task(logits_fn, params, batch, chunk_size, weights, per_example_loss,
                              sharding)
    return _task_value_and_grad_jit(logits_fn, chunk_size, per_example_loss, sharding, params,
                                    dict(batch), weights)


def task_hvp(logits_fn: LogitsFn, params: Params, batch: Batch, v: Params, *,
             chunk_size: int | None = None, weights: Array | None = None,
             per_example_loss: PerExampleLoss | None = None,
             sharding: NamedSharding | None = None) -> Params:
    """``∇²ℓ(θ) v`` for the whole-task loss of :func:`task_loss`: one ``jvp(grad)`` per chunk,
    summed inside a ``lax.scan`` (memory bounded by the chunk)."""
    sharding = _validate_task(logits_fn, params, batch, chunk_size, weights, per_example_loss,
                              sharding)
    v = _check_v(v, params)
    return _task_hvp_jit(logits_fn, chunk_size, per_example_loss, sharding, params, dict(batch),
                         weights, v)


def task_ggn_vp(logits_fn: LogitsFn, params: Params, batch: Batch, v: Params, *,
                chunk_size: int | None = None, weights: Array | None = None,
                per_example_loss: PerExampleLoss | None = None,
                sharding: NamedSharding | None = None) -> Params:
    """GGN-vector product (:func:`ggn_vp`) of the whole-task loss, accumulated over chunks."""
    sharding = _validate_task(logits_fn, params, batch, chunk_size, weights, per_example_loss,
                              sharding)
    v = _check_v(v, params)
    return _task_ggn_vp_jit(logits_fn, chunk_size, per_example_loss, sharding, params,
                            dict(batch), weights, v)


def make_task_loss(logits_fn: LogitsFn, batch: Batch, *, chunk_size: int | None = None,
                   weights: Array | None = None,
                   per_example_loss: PerExampleLoss | None = None,
                   sharding: NamedSharding | None = None) -> LossFn:
    """``params -> ℓ(params)`` over the whole task (a :data:`LossFn` for :func:`hvp` and
    :func:`cljax.curvature.top_eigenvalues`). For large tasks prefer :func:`make_task_matvec`,
    whose Hessian products keep memory bounded by the chunk."""
    _check_callable(logits_fn, "logits_fn")
    check_batch(batch, require_y=per_example_loss is None)
    if chunk_size is not None:
        check_positive_int(chunk_size, name="chunk_size")

    def loss(params: Params) -> Array:
        return task_loss(logits_fn, params, batch, chunk_size=chunk_size, weights=weights,
                         per_example_loss=per_example_loss, sharding=sharding)

    return loss


def make_task_matvec(logits_fn: LogitsFn, params: Params, batch: Batch, *,
                     curvature: Literal["hessian", "ggn"] = "hessian",
                     chunk_size: int | None = None, weights: Array | None = None,
                     per_example_loss: PerExampleLoss | None = None,
                     sharding: NamedSharding | None = None) -> Matvec:
    """``v -> H v`` (``curvature="hessian"``) or ``v -> G v`` (``"ggn"``) of the whole-task loss at
    ``params``, chunked; the matvec that :func:`cljax.curvature.top_eigenvalues_matvec`,
    :func:`cljax.curvature.hutchinson_trace` and :func:`cljax.curvature.spectral_density` take."""
    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn'; got {curvature!r}")
    sharding = _validate_task(logits_fn, params, batch, chunk_size, weights, per_example_loss,
                              sharding)
    product = task_hvp if curvature == "hessian" else task_ggn_vp

    def matvec(v: Params) -> Params:
        return product(logits_fn, params, batch, v, chunk_size=chunk_size, weights=weights,
                       per_example_loss=per_example_loss, sharding=sharding)

    return matvec


__all__ = ["softmax_cross_entropy", "hvp", "ggn_vp", "chunk_batch", "task_loss",
           "task_value_and_grad", "task_hvp", "task_ggn_vp", "make_task_loss", "make_task_matvec",
           "PerExampleLoss", "Matvec", "chunk_loss_sum", "weighted_task_sum"]
