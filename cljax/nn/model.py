"""Turn a flax module into the pure functions the rest of cljax consumes.

``Model.logits_fn(params, batch)`` is the :data:`cljax.types.LogitsFn` (evaluation mode: no
dropout); ``Model.train_logits_fn(params, batch, key)`` is the same with dropout active.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.types import Array, Batch, LogitsFn, Params, PRNGKey


class Model(NamedTuple):
    module: nn.Module
    init: Callable[[PRNGKey, Batch], Params]
    logits_fn: LogitsFn
    train_logits_fn: Callable[[Params, Batch, PRNGKey], Array]


def as_model(module: nn.Module) -> Model:
    """Wrap a flax module whose ``__call__(x, task=None, *, train=False)`` returns logits."""

    def init(key: PRNGKey, batch: Batch) -> Params:
        return module.init(key, jnp.asarray(batch["x"]), batch.get("task"))["params"]

    def logits_fn(params: Params, batch: Batch) -> Array:
        return module.apply({"params": params}, batch["x"], batch.get("task"))

    def train_logits_fn(params: Params, batch: Batch, key: PRNGKey) -> Array:
        return module.apply({"params": params}, batch["x"], batch.get("task"), train=True,
                            rngs={"dropout": key})

    return Model(module, init, logits_fn, train_logits_fn)


__all__ = ["Model", "as_model"]
