"""The layers of a model's parameters: find them, read and write them, pack ``[W; b]``.

A *layer* is a params node holding a ``kernel`` of rank ≥ 2 whose optional ``bias`` has shape
``[out]`` — flax ``Dense`` (kernel ``[in, out]``), ``Conv`` and :class:`cljax.nn.Conv` (kernel
``[kh, kw, cin, out]``). It is named by its "/"-joined path in the params tree ("Dense_0",
"Block_0/Conv_1"). Its weights as one matrix are ``W̄ = [W; b]: [rows, out]`` with
``rows = prod(kernel.shape[:-1]) (+ 1 with a bias)``: a conv's kernel rows in row-major
(kh, kw, cin) order, the im2col patch order. K-FAC factors (A over the rows, G over the outputs),
the NCL preconditioner, the fused K-FAC gradient and the gradient projections (RGO, GPM) act on
this matrix. During any forward pass, :func:`capture_rows` records the rows each layer call
multiplies ``W̄`` with (layer inputs, im2col patches for convs, a 1 for the bias) and
:func:`capture` also its output cotangents, from which every per-layer and per-example gradient
quantity follows (:func:`weight_gradients`; the estimators of :mod:`cljax.importance` build on
the same interception, :func:`intercept_layer_calls`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding

from cljax.nn.conv import Conv as FastConv
from cljax.nn.conv import conv_general_dilated as fast_conv_general_dilated
from cljax.nn.conv import im2col
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


def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_name(path: Sequence[Any]) -> str:
    """'/'-joined name of a key path, e.g. ('Dense_0', 'kernel') -> 'Dense_0/kernel'."""
    return "/".join(_key_str(k) for k in path)


def leaf_paths(tree: Any) -> dict[str, Any]:
    """``{path_name: leaf}`` of a pytree, in leaf order (``{"Dense_0/kernel": …}``)."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


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
# Layer calls: recognising them, the rows they multiply, capturing inputs and output cotangents
# --------------------------------------------------------------------------------------------

CONV_TYPES: tuple[type, ...] = (nn.Conv, FastConv)
_CONV_FUNCTIONS = (None, fast_conv_general_dilated, jax.lax.conv_general_dilated)


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One recognised call of a layer: ``out = rows @ W̄`` with ``rows`` from :func:`layer_rows`.

    ``name`` is the module's scope path (the layer's name in the params tree), ``kind`` ``"dense"``
    or ``"conv"``; the conv fields are canonical (tuples per spatial axis, padding ``"SAME"`` /
    ``"VALID"`` or explicit pairs). ``kernel_index`` / ``bias_index`` locate the kernel and bias
    among ``jax.tree.leaves(params)`` when :func:`intercept_layer_calls` was given ``leaf_ids``.
    """

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    has_bias: bool
    strides: tuple[int, ...] = ()
    padding: Any = None
    input_dilation: tuple[int, ...] = ()
    kernel_dilation: tuple[int, ...] = ()
    kernel_index: int | None = None
    bias_index: int | None = None

    @property
    def shape(self) -> LayerShape:
        return LayerShape(math.prod(self.kernel_shape[:-1]) + self.has_bias,
                          self.kernel_shape[-1], self.has_bias)


class CallRecord(NamedTuple):
    """What :func:`intercept_layer_calls` saw of one ``nn.Dense`` / ``nn.Conv`` call: its
    :class:`LayerCall` (``None`` if not recognised), its input and its output's shape."""

    call: LayerCall | None
    inputs: Any
    output: jax.ShapeDtypeStruct


def is_candidate(ctx: Any) -> bool:
    """An interceptor context calling ``__call__`` of exactly ``nn.Dense``, ``nn.Conv`` or
    :class:`cljax.nn.Conv` (subclasses may compute anything and are not candidates)."""
    return ctx.method_name == "__call__" and type(ctx.module) in (nn.Dense,) + CONV_TYPES


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if v is None:
        return (1,) * n
    if isinstance(v, int):
        return (v,) * n
    return tuple(int(i) for i in v)


def describe_call(module: nn.Module, x: Any, out: Any, *, leaf_ids: Mapping[int, int] | None = None
                  ) -> LayerCall | None:
    """The :class:`LayerCall` of a call ``out = module(x)``, or ``None`` when it is not a plain
    ``rows @ W̄``: a Dense with the default ``dot_general`` (any middle axes), a Conv (1–3 spatial
    dims) with one feature group, no mask, the default or the canonical CPU convolution, padding
    ``SAME`` / ``VALID`` / explicit, whose im2col patches reproduce the output positions; floating
    output with a leading batch axis. With ``leaf_ids`` ({id(leaf): index} of the params being
    traced) the kernel and bias must be found among them (else ``None``)."""
    try:
        v = module.variables["params"]
        kernel = v["kernel"]
        bias = v.get("bias") if module.use_bias else None
    except Exception:
        return None
    k_idx = b_idx = None
    if leaf_ids is not None:
        k_idx = leaf_ids.get(id(kernel))
        b_idx = leaf_ids.get(id(bias)) if bias is not None else None
        if k_idx is None or (module.use_bias and b_idx is None):
            return None
    if not hasattr(x, "shape") or not hasattr(out, "shape") or x.ndim < 2 or out.ndim < 2:
        return None
    if x.shape[0] != out.shape[0] or not jnp.issubdtype(out.dtype, jnp.floating):
        return None
    name = "/".join(module.scope.path) if module.scope is not None else ""
    kshape = tuple(int(d) for d in kernel.shape)
    if type(module) is nn.Dense:
        if module.dot_general is not None or module.dot_general_cls is not None \
                or kernel.ndim != 2:
            return None
        if x.shape[-1] != kshape[0] or out.shape[-1] != kshape[1] \
                or x.shape[:-1] != out.shape[:-1]:
            return None
        return LayerCall(name, "dense", kshape, bias is not None, kernel_index=k_idx,
                         bias_index=b_idx)
    nd = kernel.ndim - 2
    if (module.feature_group_count != 1 or module.mask is not None
            or not any(module.conv_general_dilated is f for f in _CONV_FUNCTIONS)
            or module.conv_general_dilated_cls is not None or x.ndim != nd + 2
            or nd < 1 or nd > 3):
        return None
    if isinstance(module.padding, str) and module.padding not in ("SAME", "VALID"):
        return None
    try:
        padding = canonicalize_padding(module.padding, nd)
    except Exception:
        return None
    if not isinstance(padding, str):
        padding = tuple((int(lo), int(hi)) for lo, hi in padding)   # pairs, canonicalized
    call = LayerCall(name, "conv", kshape, bias is not None, strides=_tuple(module.strides, nd),
                     padding=padding, input_dilation=_tuple(module.input_dilation, nd),
                     kernel_dilation=_tuple(module.kernel_dilation, nd), kernel_index=k_idx,
                     bias_index=b_idx)
    try:  # the im2col patches must reproduce the conv's output positions
        pshape = jax.eval_shape(lambda a: layer_inputs(a, call), x).shape
    except Exception:
        return None
    if pshape != (x.shape[0], math.prod(out.shape[1:-1]), math.prod(kshape[:-1])):
        return None
    return call


def layer_inputs(x: Array, call: LayerCall) -> Array:
    """The inputs a call multiplies its kernel with, ``[B, P, prod(kernel.shape[:-1])]``: a
    Dense's inputs (P = the middle axes, 1 for ``[B, in]``), a Conv's im2col patches (P = output
    positions) in the kernel's row-major (kh, kw, cin) order. Built from strided slices
    (:func:`cljax.nn.conv.im2col`: no convolution op, fast inside loops on the CPU); with input
    dilation, from ``lax.conv_general_dilated_patches``."""
    if call.kind == "dense":
        return x.reshape(x.shape[0], -1, x.shape[-1])
    nd = len(call.kernel_shape) - 2
    if all(d == 1 for d in call.input_dilation):
        if isinstance(call.padding, str):
            k_eff = [1 + d * (k - 1) for k, d in zip(call.kernel_shape[:nd], call.kernel_dilation)]
            pads = jax.lax.padtype_to_pads(x.shape[1:-1], k_eff, call.strides, call.padding)
        else:
            pads = call.padding
        p = im2col(x, call.kernel_shape[:nd], strides=call.strides, padding=pads,
                   kernel_dilation=call.kernel_dilation)
        return p.reshape(p.shape[0], -1, p.shape[-1])
    sp = "HWD"[:nd]
    dn = ("N" + sp + "C", sp + "IO", "N" + sp + "C")
    padding = call.padding if isinstance(call.padding, str) else list(call.padding)
    p = jax.lax.conv_general_dilated_patches(
        x, filter_shape=call.kernel_shape[:nd], window_strides=call.strides, padding=padding,
        lhs_dilation=call.input_dilation, rhs_dilation=call.kernel_dilation,
        dimension_numbers=dn)
    b, positions = p.shape[0], math.prod(p.shape[1:-1])
    cin, ksize = call.kernel_shape[-2], math.prod(call.kernel_shape[:nd])
    # conv_general_dilated_patches orders features as (cin, *kernel spatial); reorder.
    p = p.reshape(b, positions, cin, ksize).swapaxes(-1, -2)
    return p.reshape(b, positions, ksize * cin)


def layer_rows(x: Array, call: LayerCall) -> Array:
    """The rows a call multiplies ``W̄ = [W; b]`` with, ``[B, P, rows]``: :func:`layer_inputs`
    with a 1 appended for the bias."""
    a = layer_inputs(x, call)
    if call.has_bias:
        a = jnp.concatenate([a, jnp.ones(a.shape[:-1] + (1,), a.dtype)], axis=-1)
    return a


WeightOffsets = Mapping[str, Callable[[Array], Array]]


def _check_offsets(offsets: Any) -> dict[str, Callable[[Array], Array]]:
    if offsets is None:
        return {}
    if not isinstance(offsets, Mapping) or not all(
            isinstance(k, str) and callable(v) for k, v in offsets.items()):
        raise TypeError(f"weight_offsets must be a dict {{layer name: fn(rows) -> rows @ ΔW̄}}; "
                        f"got {offsets!r}")
    return dict(offsets)


def intercept_layer_calls(fn: Callable[..., Any], *args: Any,
                          perturbations: Sequence[Array | None] | None = None,
                          leaf_ids: Mapping[int, int] | None = None,
                          weight_offsets: WeightOffsets | None = None, **kwargs: Any
                          ) -> tuple[Any, list[CallRecord]]:
    """Run ``fn(*args, **kwargs)`` (built from flax linen modules) under
    ``flax.linen.intercept_methods`` and record every candidate call (:func:`is_candidate`, in
    call order) as a :class:`CallRecord`; with ``perturbations``, the i-th candidate call's output
    gets ``perturbations[i]`` added (``None``: left alone). Differentiating ``fn``'s output w.r.t.
    zero perturbations gives the calls' output cotangents (:func:`capture`).

    ``weight_offsets`` ({layer name: ``f``}) makes every recognised call of a named layer compute
    with ``W̄ + ΔW̄`` where ``f(rows) = rows @ ΔW̄`` (``[B, P, rows]`` → ``[B, P, out]``): ``f``
    of the call's :func:`layer_rows` is added to its output (before any perturbation), so an
    offset kept in factored form is never formed densely (deferred OGD,
    :mod:`cljax.transforms.ogd`). A named layer that ``fn`` never calls recognisably is an
    error."""
    offsets = _check_offsets(weight_offsets)
    records: list[CallRecord] = []

    def interceptor(next_fun, call_args, call_kwargs, ctx):
        if not is_candidate(ctx):
            return next_fun(*call_args, **call_kwargs)
        x = call_args[0] if call_args else call_kwargs.get("inputs")
        out = next_fun(*call_args, **call_kwargs)
        i = len(records)
        call = describe_call(ctx.module, x, out, leaf_ids=leaf_ids)
        records.append(CallRecord(call, x, jax.ShapeDtypeStruct(out.shape, out.dtype)))
        if call is not None and call.name in offsets:
            delta = offsets[call.name](layer_rows(jnp.asarray(x), call))
            out = out + jnp.reshape(delta, out.shape).astype(out.dtype)
        eps = perturbations[i] if perturbations is not None and i < len(perturbations) else None
        if eps is not None:
            out = out + eps.astype(out.dtype)
        return out

    with nn.intercept_methods(interceptor):
        out = fn(*args, **kwargs)
    if perturbations is not None and len(records) != len(perturbations):
        raise RuntimeError(f"fn made {len(records)} Dense/Conv calls, {len(perturbations)} were "
                           "perturbed: its calls must not depend on the values of its inputs")
    missing = sorted(set(offsets) - {r.call.name for r in records if r.call is not None})
    if missing:
        raise ValueError(f"weight_offsets names layers {missing} that fn never calls as a "
                         f"recognised Dense/Conv; it calls "
                         f"{sorted({r.call.name for r in records if r.call is not None})}")
    return out, records


def with_weight_offsets(fn: Callable[..., Any], *args: Any, weight_offsets: WeightOffsets,
                        **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the named layers computing with ``W̄ + ΔW̄``
    (``weight_offsets`` as in :func:`intercept_layer_calls`)."""
    return intercept_layer_calls(fn, *args, weight_offsets=weight_offsets, **kwargs)[0]


def _wanted(layers: Any) -> set[str] | None:
    return None if layers is None else set([layers] if isinstance(layers, str) else layers)


def capture_rows(fn: Callable[..., Any], *args: Any, layers: Any = None, **kwargs: Any
                 ) -> tuple[Any, dict[str, list[Array]]]:
    """Run ``fn(*args, **kwargs)`` and capture the rows (:func:`layer_rows`, ``[B, P, rows]``)
    every recognised layer call (:func:`describe_call`) multiplies its ``W̄`` with:
    ``(output, {layer name: [rows of each call, in call order]})``; ``layers`` restricts the
    names. The rows are part of the traced computation (differentiable, usable inside ``jit``)."""
    wanted = _wanted(layers)
    out, records = intercept_layer_calls(fn, *args, **kwargs)
    captured: dict[str, list[Array]] = {}
    for r in records:
        if r.call is not None and (wanted is None or r.call.name in wanted):
            captured.setdefault(r.call.name, []).append(layer_rows(jnp.asarray(r.inputs), r.call))
    return out, captured


class Capture(NamedTuple):
    """:func:`capture`'s result: ``output`` of the function, ``rows`` {layer: [rows of each call
    ``[B, P, rows]``]}, ``cotangents(ct)`` → {layer: [output cotangent of each call
    ``[B, P, out]``]} for a cotangent ``ct`` of ``output`` (the vector-Jacobian product) and
    ``vjp(ct)`` → ``(cotangents(ct), cotangents of the positional arguments named by argnums)``,
    one backward pass for both; ``aux`` is ``fn``'s auxiliary output under ``has_aux``."""

    output: Any
    rows: dict[str, list[Array]]
    cotangents: Callable[[Any], dict[str, list[Array]]]
    vjp: Callable[[Any], tuple[dict[str, list[Array]], tuple[Any, ...]]]
    aux: Any = None


def capture(fn: Callable[..., Any], *args: Any, layers: Any = None, argnums: Sequence[int] = (),
            has_aux: bool = False, weight_offsets: WeightOffsets | None = None,
            **kwargs: Any) -> Capture:
    """One forward pass of ``fn(*args, **kwargs)`` capturing, for every recognised layer call, the
    rows it multiplies ``W̄`` with and (by a VJP w.r.t. zero perturbations of its output) its
    output cotangents: ``∂⟨ct, fn⟩/∂W̄ = Σ_calls Σ_{b,p} rows_{bp} ⊗ cot_{bp}``
    (:func:`weight_gradients`) — the per-layer gradient built from per-example pieces, as K-FAC
    (Martens & Grosse 2015, eq. 1–2), GPM's representations and per-example Fisher terms use.
    ``argnums`` names positional arguments (e.g. 0 for the params) whose cotangents
    :attr:`Capture.vjp` returns from the same backward pass; with ``has_aux``, ``fn`` returns
    ``(output, aux)`` and only ``output`` is differentiated. ``weight_offsets``: as in
    :func:`intercept_layer_calls` (the cotangents are those of the offset outputs)."""
    wanted = _wanted(layers)
    _check_offsets(weight_offsets)
    argnums = tuple(argnums)
    if any(not isinstance(i, int) or not 0 <= i < len(args) for i in argnums):
        raise ValueError(f"argnums must index the {len(args)} positional arguments; got {argnums}")
    abstract: list[CallRecord] = []

    def split(result: Any) -> tuple[Any, Any]:
        if not has_aux:
            return result, None
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ValueError("with has_aux=True, fn must return a pair (output, aux); got "
                             f"{type(result).__name__}")
        return result

    def trace(*a: Any) -> Any:
        out, records = intercept_layer_calls(fn, *a, weight_offsets=weight_offsets, **kwargs)
        abstract.extend(r._replace(inputs=None) for r in records)   # static parts only
        return split(out)[0]

    jax.eval_shape(trace, *args)
    keep = [r.call is not None and (wanted is None or r.call.name in wanted) for r in abstract]

    def forward(eps: list[Array | None], *diff: Any
                ) -> tuple[Any, tuple[dict[str, list[Array]], Any]]:
        full = list(args)
        for i, a in zip(argnums, diff):
            full[i] = a
        result, records = intercept_layer_calls(fn, *full, perturbations=eps,
                                                weight_offsets=weight_offsets, **kwargs)
        out, aux = split(result)
        rows: dict[str, list[Array]] = {}
        for r, k in zip(records, keep):
            if k:
                assert r.call is not None          # keep: a described layer call
                rows.setdefault(r.call.name, []).append(layer_rows(jnp.asarray(r.inputs), r.call))
        return out, (rows, aux)

    zeros = [jnp.zeros(r.output.shape, r.output.dtype) if k else None
             for r, k in zip(abstract, keep)]
    out, vjp_fn, (rows, aux) = jax.vjp(forward, zeros, *[args[i] for i in argnums], has_aux=True)

    def vjp(ct: Any) -> tuple[dict[str, list[Array]], tuple[Any, ...]]:
        eps_bar, *arg_bars = vjp_fn(ct)
        cots: dict[str, list[Array]] = {}
        for r, k, g in zip(abstract, keep, eps_bar):
            if k:
                assert r.call is not None
                cots.setdefault(r.call.name, []).append(g.reshape(g.shape[0], -1, g.shape[-1]))
        return cots, tuple(arg_bars)

    return Capture(out, rows, lambda ct: vjp(ct)[0], vjp, aux)


def weight_gradients(rows: Mapping[str, list[Array]], cotangents: Mapping[str, list[Array]]
                     ) -> dict[str, Array]:
    """Each layer's ``W̄`` gradient ``Σ_calls Σ_{b,p} rows ⊗ cot``, ``[rows, out]``
    (:func:`unpack` it into ``{"kernel", "bias"}``)."""
    if set(rows) != set(cotangents):
        raise ValueError(f"rows and cotangents must name the same layers; got {sorted(rows)} and "
                         f"{sorted(cotangents)}")
    # cast: every layer has at least one call (sum's start 0 never comes back alone)
    return {name: cast(Array, sum(jnp.einsum("bpr,bpo->ro", a, g)
                                  for a, g in zip(rows[name], cotangents[name])))
            for name in rows}


def mean_rows(captured: Mapping[str, list[Array]]) -> dict[str, Array]:
    """Each layer's mean row over its calls, examples and positions, ``[rows]`` (RGO's per-step
    mean input)."""
    return {name: jnp.mean(r, axis=0) for name, r in all_rows(captured).items()}


def all_rows(captured: Mapping[str, list[Array]]) -> dict[str, Array]:
    """Each layer's every row, ``[Σ_calls B·P, rows]`` (examples, positions and calls stacked):
    the rows whose mean outer product is the layer's input second moment (the K-FAC A factor)."""
    return {name: jnp.concatenate([r.reshape(-1, r.shape[-1]) for r in rows])
            for name, rows in captured.items()}


def example_rows(captured: Mapping[str, list[Array]]) -> dict[str, Array]:
    """Each layer's per-example mean row over its positions, ``[calls·B, rows]`` (the calls
    stacked): the rows of a rank-B update where :func:`mean_rows` gives a rank-1 one."""
    return {name: jnp.concatenate([jnp.mean(r, axis=1) for r in rows])
            for name, rows in captured.items()}


__all__ = ["LayerShape", "is_layer", "param_layers", "path_name", "leaf_paths", "get_layer",
           "set_layer", "pack", "unpack",
           "check_factors", "LayerCall", "CallRecord", "CONV_TYPES", "is_candidate",
           "describe_call", "layer_inputs", "layer_rows", "intercept_layer_calls", "WeightOffsets",
           "with_weight_offsets", "capture_rows",
           "Capture", "capture", "weight_gradients", "mean_rows", "example_rows", "all_rows"]
