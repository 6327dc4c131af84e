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

from jax.sharding import NamedSharding

from cljax.importance.estimation import estimate
from cljax.types import Batch, Importance, LogitsFn, Params


def mas_importance(logits_fn: LogitsFn, params: Params, batch: Batch, *,
                   chunk_size: int | None = None, implementation: str = "auto",
                   sharding: NamedSharding | None = None) -> Importance:
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

    Returns:
      A non-negative pytree like ``params``: the mean over examples.
    """
    return estimate("mas", logits_fn, params, batch, chunk_size=chunk_size,
                    implementation=implementation, sharding=sharding, require_y=False,
                    fn_name="mas_importance")


__all__ = ["mas_importance"]
