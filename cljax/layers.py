"""The layers of a model's parameters: find them, read and write them, pack ``[W; b]``.

A *layer* is a params node holding a ``kernel`` of rank ≥ 2 whose optional ``bias`` has shape
``[out]`` — flax ``Dense`` (kernel ``[in, out]``), ``Conv`` and :class:`cljax.nn.Conv` (kernel
``[kh, kw, cin, out]``). It is named by its "/"-joined path in the params tree ("Dense_0",
"Block_0/Conv_1"). Its weights as one matrix are ``W̄ = [W; b]: [rows, out]`` with
``rows = prod(kernel.shape[:-1]) (+ 1 with a bias)``: a conv's kernel rows in row-major
(kh, kw, cin) order, the im2col patch order. K-FAC factors (A over the rows, G over the outputs),
the NCL preconditioner, the fused K-FAC gradient and the gradient projections (RGO, GPM) act on
this matrix, and :func:`capture_rows` records, during any forward pass, the rows it multiplies
(layer inputs, im2col patches for convs, a 1 for the bias).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding

from cljax.types import Array, Params


class LayerShape(NamedTuple):
    """A layer's ``W̄`` shape: ``rows`` (inputs, +1 with a bias) × ``out``."""

    rows: int
    out: int
    has_bias: bool


def is_layer(node: Any) -> bool:
    """A params node with a ``kernel`` of rank ≥ 2 and, if any, a bias of shape ``[out]``."""
    if not isinstance(node, Mapping) or "kernel" not in node:
        return False
    k = node["kernel"]
    if jnp.ndim(k) < 2:
        return False
    return "bias" not in node or jnp.shape(node["bias"]) == (jnp.shape(k)[-1],)


def param_layers(params: Params, layers: Any = None) -> dict[str, LayerShape]:
    """``{name: LayerShape}`` of the layers of ``params`` (all, or the ``layers`` named)."""
    found: dict[str, LayerShape] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if is_layer(node):
            k = node["kernel"]
            n = int(np.prod(jnp.shape(k)[:-1])) + ("bias" in node)
            found["/".join(path)] = LayerShape(n, int(jnp.shape(k)[-1]), "bias" in node)
        elif isinstance(node, Mapping):
            for key, v in node.items():
                walk(v, path + (str(key),))

    walk(params, ())
    if layers is None:
        return found
    layers = [layers] if isinstance(layers, str) else list(layers)
    missing = [n for n in layers if n not in found]
    if missing:
        raise ValueError(f"layers names {missing} that are not dense/conv layers of params; "
                         f"available: {sorted(found)}")
    return {n: found[n] for n in layers}


def get_layer(tree: Any, name: str) -> Any:
    """The node at the "/"-joined path ``name`` of ``tree`` (params, gradients, updates…)."""
    node = tree
    for key in name.split("/"):
        node = node[key]
    return node


def set_layer(tree: Any, name: str, new: Mapping[str, Any]) -> Any:
    """Copy of ``tree`` with the entries of ``new`` written into the node at ``name``."""
    def rec(node: Any, keys: list[str]) -> Any:
        if not keys:
            return type(node)({**node, **new})
        return type(node)({**node, keys[0]: rec(node[keys[0]], keys[1:])})
    return rec(tree, name.split("/"))


def pack(node: Mapping[str, Array], lead: int = 0) -> Array:
    """``[W; b]`` as ``[..., rows, out]`` (``lead`` leading batch axes kept)."""
    k = node["kernel"]
    m = k.shape[-1]
    w = k.reshape(k.shape[:lead] + (-1, m))
    if "bias" in node:
        w = jnp.concatenate([w, node["bias"][..., None, :]], axis=-2)
    return w


def unpack(w: Array, like: Mapping[str, Array]) -> dict[str, Array]:
    """Inverse of :func:`pack`: ``{"kernel", "bias"}`` with ``like``'s shapes and dtypes."""
    k = like["kernel"]
    if "bias" in like:
        return {"kernel": w[:-1].reshape(k.shape).astype(k.dtype),
                "bias": w[-1].astype(like["bias"].dtype)}
    return {"kernel": w.reshape(k.shape).astype(k.dtype)}


def check_factors(factors: Any, shapes: Mapping[str, tuple[int, int]], *,
                  name: str = "factors") -> None:
    """``factors``: {layer: (A [rows, rows], G [out, out])} naming only layers of ``shapes``."""
    if not isinstance(factors, Mapping):
        raise TypeError(f"{name} must be a dict {{layer name: KFACFactors(A, G)}}; got "
                        f"{type(factors).__name__}")
    unknown = [k for k in factors if k not in shapes]
    if unknown:
        raise ValueError(f"{name} names layers {unknown} that are not tracked factor layers of "
                         f"params; tracked: {sorted(shapes)}")
    for layer, f in factors.items():
        if not isinstance(f, tuple) or len(f) != 2:
            raise TypeError(f"{name}[{layer!r}] must be KFACFactors(A, G); got "
                            f"{type(f).__name__}")
        n, m = shapes[layer]
        if jnp.shape(f[0]) != (n, n) or jnp.shape(f[1]) != (m, m):
            raise ValueError(f"{name}[{layer!r}] must have A: {(n, n)} and G: {(m, m)} "
                             f"(A over [inputs, 1 for the bias], G over outputs); got "
                             f"A: {jnp.shape(f[0])}, G: {jnp.shape(f[1])}")


# --------------------------------------------------------------------------------------------
# Capturing layer inputs
# --------------------------------------------------------------------------------------------

def _conv_types() -> tuple[type, ...]:
    from cljax.nn.conv import Conv as FastConv   # deferred: cljax.nn imports this module's users
    return (nn.Conv, FastConv)


def layer_rows(module: nn.Module, x: Array) -> Array:
    """The rows a recognised layer's ``W̄`` multiplies, ``[B, P, rows]``: a Dense's inputs (P = the
    middle axes, 1 for ``[B, in]``), a Conv's im2col patches (P = output positions), with a 1
    appended for the bias."""
    if type(module) is nn.Dense:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
        bias = module.use_bias
    else:
        from cljax.nn.conv import im2col

        nd = x.ndim - 2
        ks = tuple(module.kernel_size)
        strides = (1,) * nd if module.strides is None else (
            (module.strides,) * nd if isinstance(module.strides, int) else tuple(module.strides))
        kd = (1,) * nd if module.kernel_dilation is None else (
            (module.kernel_dilation,) * nd if isinstance(module.kernel_dilation, int)
            else tuple(module.kernel_dilation))
        padding = canonicalize_padding(module.padding, nd)
        if isinstance(padding, str):
            k_eff = [1 + d * (k - 1) for k, d in zip(ks, kd)]
            padding = jax.lax.padtype_to_pads(x.shape[1:-1], k_eff, strides, padding)
        p = im2col(x, ks, strides=strides, padding=padding, kernel_dilation=kd)
        a = p.reshape(p.shape[0], -1, p.shape[-1])
        bias = module.use_bias
    if bias:
        a = jnp.concatenate([a, jnp.ones(a.shape[:-1] + (1,), a.dtype)], axis=-1)
    return a


def is_recognised(module: nn.Module) -> bool:
    """A flax module whose calls :func:`capture_rows` records (Dense, Conv without groups, masks
    or input dilation)."""
    if type(module) is nn.Dense:
        return True
    if type(module) in _conv_types():
        return (module.feature_group_count == 1 and module.mask is None
                and not any(d != 1 for d in np.atleast_1d(module.input_dilation or 1)))
    return False


def capture_rows(fn: Callable[..., Any], *args: Any, layers: Any = None, **kwargs: Any
                 ) -> tuple[Any, dict[str, list[Array]]]:
    """Run ``fn(*args, **kwargs)`` (built from flax linen modules) and capture the rows
    (:func:`layer_rows`, ``[B, P, rows]``) every recognised layer call multiplies its ``W̄`` with:
    ``(output, {layer name: [rows of each call, in call order]})``. Recognised: ``nn.Dense``,
    ``nn.Conv`` and :class:`cljax.nn.Conv` without groups, masks or input dilation; ``layers``
    restricts the names. The captured rows are part of the traced computation (differentiable,
    usable inside ``jit``); names are the modules' scope paths, those of the params tree."""
    wanted = None if layers is None else set([layers] if isinstance(layers, str) else layers)
    captured: dict[str, list[Array]] = {}

    def interceptor(next_fun, call_args, call_kwargs, ctx):
        module = ctx.module
        if ctx.method_name == "__call__" and module.scope is not None and is_recognised(module):
            name = "/".join(module.scope.path)
            if wanted is None or name in wanted:
                x = call_args[0] if call_args else call_kwargs["inputs"]
                captured.setdefault(name, []).append(layer_rows(module, jnp.asarray(x)))
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
        out = fn(*args, **kwargs)
    return out, captured


def mean_rows(captured: Mapping[str, list[Array]]) -> dict[str, Array]:
    """Each layer's mean row over its calls, examples and positions, ``[rows]`` (RGO's per-step
    mean input)."""
    return {name: jnp.mean(jnp.concatenate([r.reshape(-1, r.shape[-1]) for r in rows]), axis=0)
            for name, rows in captured.items()}


__all__ = ["LayerShape", "is_layer", "param_layers", "get_layer", "set_layer", "pack", "unpack",
           "check_factors", "is_recognised", "layer_rows", "capture_rows", "mean_rows"]
