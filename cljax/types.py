"""Type aliases shared across cljax.

Everything that flows between cljax's pieces is a pytree or an array:

* ``Params``: any pytree of arrays (e.g. a flax ``params`` dict).
* ``Batch``: a dict with ``x`` (inputs, leading axis = examples), ``y`` (int labels ``[B]``) and,
  for multi-head / task-incremental models, ``task`` (int task id per example, ``[B]``).
* ``LogitsFn``: ``logits_fn(params, batch) -> logits[B, C]``; the only thing estimators, curvature
  tools and transforms need to know about a model, so they work for any model, flax or not.
* ``Importance``: a pytree with the params' structure, shapes and dtypes (Fisher, MAS, SI's Ω, ...).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any
Importance = Any
Batch = Mapping[str, Array]
LogitsFn = Callable[[Params, Batch], Array]
LossFn = Callable[[Params], Array]



class KFACFactors(NamedTuple):
    """Kronecker factors of one dense or conv layer (Martens & Grosse 2015; Grosse & Martens 2016).

    Flax layout: a dense layer computes ``s = a @ W + b`` with ``W: [in, out]``. With the bias folded
    in, ``W̄ = [W; b]: [in+1, out]`` and ``ā = [a, 1]``:

    * ``A = E[ā āᵀ]``: ``[in+1, in+1]`` (bias last; ``[in, in]`` for a layer without bias);
    * ``G = E[g gᵀ]``: ``[out, out]``, ``g = ∂ log p(y|x) / ∂s``.

    The Fisher block is approximated as ``F ≈ A ⊗ G`` in the sense that, for a change ΔW̄,
    ``vec(ΔW̄)ᵀ F vec(ΔW̄) ≈ tr(ΔW̄ᵀ A ΔW̄ G)``. For a conv layer with kernel ``[kh, kw, cin, cout]``,
    ``in = kh·kw·cin`` (patches in the kernel's row-major order) and G averages over spatial positions.
    """

    A: Array
    G: Array


__all__ = ["Array", "KFACFactors", "PRNGKey", "Params", "Importance", "Batch", "LogitsFn", "LossFn"]
