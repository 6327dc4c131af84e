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


MASKED_LOGIT = -1e9
"""The logit :func:`mask_task_logits` gives a masked class: exp(−1e9 − max) is 0 in float32, so
its softmax probability is exactly 0, while the value stays finite (a distillation term
p·log p or a logit regression over the masked entries is 0, not NaN as with −inf)."""


def mask_task_logits(model: Model, mask: Array) -> Model:
    """``model`` with the logits outside each example's task masked (:data:`MASKED_LOGIT`):
    ``mask`` is bool ``[T, C]`` (task t may predict the classes where ``mask[t]``), read at
    ``batch['task']``. Task-IL with one head (:func:`cljax.data.make_scenario`,
    ``task_heads="masked"``); every logit function of the model is masked the same way, the
    features are not."""
    mask = jnp.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be bool [T, C]; got shape {mask.shape}")

    def masked(out: Array, batch: Batch) -> Array:
        keep = mask[batch["task"]]                                # [B, C]
        keep = keep if out.ndim == 2 else keep[:, None, :]        # all heads: [B, H, C]
        return jnp.where(keep, out, jnp.asarray(MASKED_LOGIT, out.dtype))

    def logits_fn(params: Params, batch: Batch) -> Array:
        return masked(model.logits_fn(params, batch), batch)

    def train_logits_fn(params: Params, batch: Batch, key: PRNGKey) -> Array:
        return masked(model.train_logits_fn(params, batch, key), batch)

    all_heads_fn = apply_fn = None
    if model.all_heads_fn is not None:
        base_all = model.all_heads_fn

        def all_heads_fn(params: Params, batch: Batch) -> Array:
            return masked(base_all(params, batch), batch)
    if model.apply_fn is not None:
        base_apply = model.apply_fn

        def apply_fn(params: Params, batch: Batch, key: PRNGKey | None = None,
                     output: str = "logits") -> Array:
            out = base_apply(params, batch, key, output=output)
            return out if output == "features" else masked(out, batch)

    return model._replace(logits_fn=logits_fn, train_logits_fn=train_logits_fn,
                          all_heads_fn=all_heads_fn, apply_fn=apply_fn)


__all__ = ["Model", "as_model", "rebuild", "OUTPUTS", "MASKED_LOGIT", "mask_task_logits"]
