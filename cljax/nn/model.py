"""Turn a flax module into the pure functions the rest of cljax consumes.

``Model.logits_fn(params, batch)`` is the :data:`cljax.types.LogitsFn` (evaluation mode: no
dropout); ``Model.train_logits_fn(params, batch, key)`` is the same with dropout active. Modules
whose ``__call__`` takes an ``output`` keyword (:class:`cljax.nn.MLP`, :class:`cljax.nn.CNN`)
also give ``features_fn(params, batch)`` — the representation the output layer reads (iCaRL's
nearest-mean classifier works there) — and ``all_heads_fn(params, batch) -> [B, H, C]``, every
task head's logits (LwF distils the old heads), and ``apply_fn(params, batch, key=None,
output=...)`` for any output in train mode; for other modules these are None, and methods that
need them say so.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax.numpy as jnp

from cljax.types import Array, Batch, LogitsFn, Params, PRNGKey

OUTPUTS = ("logits", "all_heads", "features")


class Model(NamedTuple):
    """A flax module with the pure functions made from it by :func:`as_model`.

    ``module`` is the flax module, ``init(key, batch)`` its parameters, ``logits_fn(params,
    batch)`` the evaluation-mode logits and ``train_logits_fn(params, batch, key)`` the same with
    dropout active. ``features_fn``, ``all_heads_fn`` and ``apply_fn`` are given for modules whose
    ``__call__`` takes an ``output`` keyword, else ``None`` (see the module docstring).
    """

    module: nn.Module
    init: Callable[[PRNGKey, Batch], Params]
    logits_fn: LogitsFn
    train_logits_fn: Callable[[Params, Batch, PRNGKey], Array]
    features_fn: Callable[[Params, Batch], Array] | None = None
    all_heads_fn: Callable[[Params, Batch], Array] | None = None
    apply_fn: Callable[..., Array] | None = None   # (params, batch, key=None, output=...)


def _takes_output(module: nn.Module) -> bool:
    try:
        return "output" in inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False


def as_model(module: nn.Module) -> Model:
    """Wrap a flax module whose ``__call__(x, task=None, *, train=False)`` returns logits
    (and, optionally, takes ``output='logits'|'all_heads'|'features'``)."""

    def apply(params: Params, batch: Batch, **kwargs: Any) -> Array:
        # without ``mutable``, apply returns the output alone (flax types it output | (output, vars))
        return cast(Array, module.apply({"params": params}, batch["x"], batch.get("task"),
                                        **kwargs))

    def init(key: PRNGKey, batch: Batch) -> Params:
        return module.init(key, jnp.asarray(batch["x"]), batch.get("task"))["params"]

    def logits_fn(params: Params, batch: Batch) -> Array:
        return apply(params, batch)

    def train_logits_fn(params: Params, batch: Batch, key: PRNGKey) -> Array:
        return apply(params, batch, train=True, rngs={"dropout": key})

    if not _takes_output(module):
        return Model(module, init, logits_fn, train_logits_fn)

    def features_fn(params: Params, batch: Batch) -> Array:
        return apply(params, batch, output="features")

    def all_heads_fn(params: Params, batch: Batch) -> Array:
        return apply(params, batch, output="all_heads")

    def apply_fn(params: Params, batch: Batch, key: PRNGKey | None = None,
                 output: str = "logits") -> Array:
        """Any ``output``; train mode (dropout) when ``key`` is given."""
        if key is None:
            return apply(params, batch, output=output)
        return apply(params, batch, train=True, output=output, rngs={"dropout": key})

    return Model(module, init, logits_fn, train_logits_fn, features_fn, all_heads_fn, apply_fn)


def rebuild(model: Model, **fields: Any) -> Model:
    """``model`` with its flax module's ``fields`` replaced (``module.clone(**fields)``), wrapped
    anew by :func:`as_model`: how a method changes the configured architecture (RGO adds its
    feature encoding layer: ``rebuild(model, feature_encoding=T)``)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(model.module)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"the model {type(model.module).__name__} has no field {unknown} to "
                         f"set; its fields are {sorted(known - {'parent', 'name'})}")
    return as_model(model.module.clone(**fields))


__all__ = ["Model", "as_model", "rebuild", "OUTPUTS"]
