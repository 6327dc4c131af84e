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

from typing import Any, Callable, Mapping

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any
Importance = Any
Batch = Mapping[str, Array]
LogitsFn = Callable[[Params, Batch], Array]
LossFn = Callable[[Params], Array]

__all__ = ["Array", "PRNGKey", "Params", "Importance", "Batch", "LogitsFn", "LossFn"]
