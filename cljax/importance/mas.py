"""Memory Aware Synapses importance (Aljundi et al. 2018, ECCV, eq. 2 with eq. 3's ℓ2²).

:math:`Ω_i = (1/N) Σ_n |∂ ‖f(x_n; θ)‖²₂ / ∂θ_i|`, with f the network output — here the logits that
``logits_fn`` returns, i.e. the active head's logits for a multi-head model, so inactive heads get
zero importance. The absolute value is taken **per example** before averaging (:math:`|Σ| ≠ Σ|·|`), as in
the paper's eq. 2 (Ω = mean over examples of ‖g(x_k)‖, g the gradient of ℓ2²(f) of eq. 3).

**Scale.** Mean over the examples of ``batch``. Across tasks the paper accumulates
Ω ← Ω + Ω_t; this function returns one task's Ω_t and leaves accumulation to the caller.

Fast path: a dense layer's per-example gradient is a_n g_nᵀ with g_n = J_nᵀ 2f(x_n) at the layer
output, and :math:`|a_n g_nᵀ| = |a_n||g_n|ᵀ`, so :math:`Σ_n |a_n|ᵀ|g_n|` is one matmul; conv layers need a
per-example contraction (a sum over positions sits inside the abs). See
:mod:`cljax.importance.estimation`.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from cljax import chunking, validation
from cljax.importance.estimation import check_estimator_inputs, estimate
from cljax.types import Array, Batch, Importance, LogitsFn, Params


def mas_importance(logits_fn: LogitsFn, params: Params, batch: Batch, *,
                   chunk_size: int | None = None, implementation: str = "auto",
                   sharding: NamedSharding | None = None, group_size: int = 1) -> Importance:
    """MAS importance :math:`(1/N) Σ_n |∂‖f(x_n)‖²/∂θ|` (Aljundi et al. 2018, eq. 2 with eq. 3's ℓ2²).

    Args:
      logits_fn: ``logits_fn(params, batch) -> logits[B, C]`` (examples independent).
      params: the pytree ``logits_fn`` expects.
      batch: dict with ``x`` [N, ...] and optional ``task`` [N]; labels are not used (MAS is
        unsupervised).
      chunk_size: examples per chunk; ``None`` = all at once; N is padded with zero-weight examples.
      implementation: ``"auto"`` or ``"vmap"`` (per-example fallback everywhere).
      sharding: the examples' ``NamedSharding`` when ``batch`` is split over devices (found
        by itself on a concrete sharded batch; pass it inside ``jit``): each device then
        sums its own examples, ``chunk_size`` per device (:mod:`cljax.chunking`).
      group_size: 1, the paper's absolute value per example; g > 1, the absolute value of the
        gradient of Σ‖f(x_n)‖² over each group of g consecutive examples, summed over the N / g
        groups and divided by N: :math:`(1/N) Σ_G |∂ Σ_{n∈G} ‖f(x_n)‖² / ∂θ|`, as A-GEM's code
        estimates MAS (Chaudhry et al. 2019, facebookresearch/agem ``model.py``,
        ``create_hebbian_ops``: batches of 10 of the task's training set). N must be a
        multiple of g; the groups take the per-group gradient (``implementation`` has no fast
        path to choose there).

    Returns:
      A non-negative pytree like ``params``: the mean over examples.
    """
    validation.check_positive_int(group_size, name="group_size")
    if group_size == 1:
        return estimate("mas", logits_fn, params, batch, chunk_size=chunk_size,
                        implementation=implementation, sharding=sharding, require_y=False,
                        fn_name="mas_importance")
    return _grouped_mas(logits_fn, params, batch, group_size, chunk_size, implementation,
                        sharding)


def _grouped_mas(logits_fn: LogitsFn, params: Params, batch: Batch, group_size: int,
                 chunk_size: int | None, implementation: str, sharding: NamedSharding | None
                 ) -> Importance:
    batch = check_estimator_inputs(logits_fn, params, batch, chunk_size=chunk_size,
                                   implementation=implementation, require_y=False,
                                   fn_name="mas_importance")
    n = int(batch["x"].shape[0])
    if n % group_size:
        raise ValueError(f"mas_importance: batch['x'] has {n} examples; with group_size="
                         f"{group_size} it must be a positive multiple of {group_size}")
    sharding = chunking.resolve_sharding(batch["x"], sharding)
    per_chunk = None if chunk_size is None else max(1, chunk_size // group_size)
    result = _grouped_jit(logits_fn, params, batch, group_size, per_chunk, sharding)
    leaves = jax.tree.leaves(result)
    if all(map(validation.is_concrete, leaves)) and not all(
            bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves):
        raise FloatingPointError("mas_importance: logits_fn(params, batch) gave a non-finite "
                                 "gradient (NaN or inf logits)")
    return result


@partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _grouped_jit(logits_fn: LogitsFn, params: Params, batch: Batch, group_size: int,
                 groups_per_chunk: int | None, sharding: NamedSharding | None) -> Importance:
    n = batch["x"].shape[0]
    groups = jax.tree.map(lambda a: a.reshape((n // group_size, group_size) + a.shape[1:]),
                          batch)

    def abs_gradient(group: Batch) -> Params:
        def sq_norm(p: Params) -> Array:
            return jnp.sum(jnp.square(logits_fn(p, group)))
        return jax.tree.map(jnp.abs, jax.grad(sq_norm)(params))

    def body(chunk: Batch, valid: Array, index: Array) -> Params:
        del index
        grads = jax.vmap(abs_gradient)(chunk)
        return jax.tree.map(lambda g: jnp.tensordot(valid.astype(g.dtype), g, axes=1), grads)

    total = chunking.chunked_sum(body, groups, chunk_size=groups_per_chunk, sharding=sharding)
    return jax.tree.map(lambda t: t / n, total)


__all__ = ["mas_importance"]
