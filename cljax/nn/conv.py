"""A convolution that stays on XLA's fast CPU kernel inside ``lax.scan`` / ``vmap`` / ``while_loop``.

**Why XLA's CPU convolutions are slow inside loops.** XLA's CPU backend runs a convolution on its
fast library kernel (YNNPACK / Eigen, ``__ynn_fusion`` in the optimised HLO) only when the
convolution is *canonical*: input ``NHWC``, kernel ``HWIO``, output ``NHWC``
(``dim_labels=b01f_01io->b01f``, ``PotentiallyImplementedAsEigenConvolution`` in
``xla/service/cpu/ir_emission_utils.cc``). The forward convolution of a flax ``nn.Conv`` is
canonical; the two convolutions that JAX's transpose rules emit for its gradient are not (the
kernel gradient is ``f01b_i01o->01bf``, the input gradient has its kernel as ``01oi``). At the top
level of a program the pass ``ConvCanonicalization`` (``xla/service/cpu/conv_canonicalization.h``:
"canonicalizes the dimension numbers of all **top-level** convolutions") rewrites them into
transposes plus a canonical convolution. It visits the entry computation only, so inside a
``while`` body — every ``lax.scan``, ``lax.map``, ``fori_loop``, i.e. ``cljax.training``'s
``fit``, the evaluation chunks, the estimators' and HVPs' chunk loops — the gradient
convolutions stay non-canonical and are compiled by XLA's generic loop emitter
(``conv_general_dilated.N_elemental_kernel_module`` in an ``--xla_dump_to`` dump): measured
22× slower for the kernel gradient and 4× for the input gradient of a 3×3, 32→32 conv on 32×32
images, batch 128. Unrolling only helps when the loop disappears entirely; the CPU flags
``--xla_cpu_use_onednn`` / ``--xla_cpu_experimental_onednn_custom_call`` change nothing.

**The fix here.** :data:`canonical_conv_p` is a convolution primitive that lowers to XLA's own
canonical convolution and whose transpose rules are again canonical convolutions — the
canonicalisation done by hand, with explicit transposes (the same padding algebra as
``jax.lax``'s own ``_conv_general_dilated_transpose_{lhs,rhs}``). Its JVP is bilinear (the
primitive itself), so ``grad``, ``jvp`` (Hessian-vector products), ``linearize`` /
``linear_transpose`` (GGN products) and ``vmap`` all work, to any order, and every convolution
of the differentiated program stays canonical. Under ``vmap`` with both operands batched
(several seeds' params) it maps over the vmapped axis (``lax.map``; canonical convolutions are
fast inside loops) instead of XLA's feature-grouped convolution.

:class:`Conv` is ``flax.linen.Conv`` with this convolution as its ``conv_general_dilated``: same
fields, parameter names, shapes (``kernel`` [*kernel_size, in, features], ``bias`` [features]),
initialisation and outputs. **Backend choice:** :func:`conv_general_dilated` uses the canonical
primitive only when ``jax.default_backend() == "cpu"`` (and the layout is channels-last,
``feature_group_count == batch_group_count == 1``, 1 or 2 spatial dims); on GPU / TPU it calls
``lax.conv_general_dilated`` (cuDNN and the TPU compiler handle the gradient convolutions inside
loops themselves). Pass ``conv_general_dilated=jax.lax.conv_general_dilated`` to a
:class:`Conv` to force XLA's native convolution on the CPU too.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.typing import ArrayLike

from cljax.types import Array

_SPECS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def _pairs(padding: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(int(i) for i in v)


def _xla_conv(x, w, *, window_strides, padding, lhs_dilation, rhs_dilation, precision):
    nd = x.ndim - 2
    return lax.conv_general_dilated(x, w, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=_SPECS[nd],
                                    precision=precision)


canonical_conv_p = Primitive("cljax_canonical_conv")
"""Channels-last convolution ``(x [N, *S, I], w [*K, I, O]) -> [N, *S', O]`` whose derivatives are
canonical convolutions too. Parameters: ``window_strides``, ``padding`` (explicit pairs),
``lhs_dilation``, ``rhs_dilation`` (tuples of ints) and ``precision``."""
canonical_conv_p.def_impl(_xla_conv)


def _abstract_eval(x, w, **params):
    out = jax.eval_shape(partial(_xla_conv, **params), jax.ShapeDtypeStruct(x.shape, x.dtype),
                         jax.ShapeDtypeStruct(w.shape, w.dtype))
    return jax.core.ShapedArray(out.shape, out.dtype)


canonical_conv_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(canonical_conv_p, mlir.lower_fun(_xla_conv, multiple_results=False))


def _dilate(shape: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    return np.array([0 if s == 0 else 1 + d * (s - 1) for s, d in zip(shape, dilation)])


def _transpose_lhs(g, x, w, *, window_strides, padding, lhs_dilation, rhs_dilation, precision):
    """∂/∂x: correlate the cotangent with the spatially reversed, in/out-swapped kernel."""
    nd = w.ndim - 2
    in_sp, k_sp, out_sp = x.aval.shape[1:-1], w.shape[:nd], g.shape[1:-1]
    lhs_d = _dilate(in_sp, lhs_dilation)
    rhs_d = _dilate(k_sp, rhs_dilation)
    out_d = _dilate(out_sp, window_strides)
    before = rhs_d - np.array([lo for lo, _ in padding]) - 1
    after = lhs_d + rhs_d - 1 - out_d - before
    w_t = jnp.swapaxes(lax.rev(w, tuple(range(nd))), -1, -2)
    out = canonical_conv_p.bind(g, w_t, window_strides=_ints(lhs_dilation),
                                padding=_pairs(zip(before, after)),
                                lhs_dilation=_ints(window_strides),
                                rhs_dilation=_ints(rhs_dilation), precision=precision)
    return out.astype(x.aval.dtype)


def _transpose_rhs(g, x, w, *, window_strides, padding, lhs_dilation, rhs_dilation, precision):
    """∂/∂w: a canonical convolution of x [I, *S, N] with the cotangent [*S', N, O]."""
    nd = x.ndim - 2
    in_sp, k_sp, out_sp = x.shape[1:-1], w.aval.shape[:nd], g.shape[1:-1]
    lhs_d = _dilate(in_sp, lhs_dilation)
    rhs_d = _dilate(k_sp, rhs_dilation)
    out_d = _dilate(out_sp, window_strides)
    lo = np.array([p for p, _ in padding])
    hi = (out_d - lhs_d) + (rhs_d - lo - 1)
    sp = tuple(range(1, nd + 1))
    x_t = jnp.transpose(x, (nd + 1,) + sp + (0,))           # [I, *S, N]
    g_t = jnp.transpose(g, sp + (0, nd + 1))                 # [*S', N, O]
    out = canonical_conv_p.bind(x_t, g_t, window_strides=_ints(rhs_dilation),
                                padding=_pairs(zip(lo, hi)), lhs_dilation=_ints(lhs_dilation),
                                rhs_dilation=_ints(window_strides), precision=precision)
    return jnp.transpose(out, sp + (0, nd + 1)).astype(w.aval.dtype)   # [*K, I, O]


ad.defbilinear(canonical_conv_p, _transpose_lhs, _transpose_rhs)


def _batch_rule(args, dims, **params):
    x, w = args
    bx, bw = dims
    if bw is None:          # batched inputs only: fold the axis into N
        x = jnp.moveaxis(x, bx, 0)
        r, n = x.shape[:2]
        y = canonical_conv_p.bind(x.reshape((r * n,) + x.shape[2:]), w, **params)
        return y.reshape((r, n) + y.shape[1:]), 0
    if bx is None:          # batched kernels only: fold the axis into O
        w = jnp.moveaxis(w, bw, -2)                          # [*K, I, R, O]
        r, o = w.shape[-2:]
        y = canonical_conv_p.bind(x, w.reshape(w.shape[:-2] + (r * o,)), **params)
        return y.reshape(y.shape[:-1] + (r, o)), y.ndim - 1
    x = jnp.moveaxis(x, bx, 0)
    w = jnp.moveaxis(w, bw, 0)
    if x.shape[0] == 1:
        return canonical_conv_p.bind(x[0], w[0], **params)[None], 0
    return lax.map(lambda xw: canonical_conv_p.bind(xw[0], xw[1], **params), (x, w)), 0


batching.primitive_batchers[canonical_conv_p] = _batch_rule


def canonical_conv(x: Array, kernel: Array, *, strides: Sequence[int] | None = None,
                   padding: str | Sequence[tuple[int, int]] = "SAME",
                   input_dilation: Sequence[int] | None = None,
                   kernel_dilation: Sequence[int] | None = None, precision: Any = None) -> Array:
    """Channels-last convolution through :data:`canonical_conv_p` (on every backend).

    Args:
      x: ``[N, *spatial, in]`` (1 to 3 spatial dims).
      kernel: ``[*kernel_spatial, in, out]`` (flax's layout).
      strides, input_dilation, kernel_dilation: one int per spatial dim (default 1).
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs, as in ``lax``.
    Returns:
      ``[N, *out_spatial, out]``, equal to ``lax.conv_general_dilated`` with
      ``("NHWC", "HWIO", "NHWC")`` dimension numbers.
    """
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    nd = x.ndim - 2
    if nd not in _SPECS:
        raise ValueError(f"x must be [N, *spatial, in] with 1 to 3 spatial dims; got {x.shape}")
    if kernel.ndim != x.ndim:
        raise ValueError(f"kernel must be [*kernel_spatial, in, out] with {nd} spatial dims "
                         f"(like x {x.shape}); got {kernel.shape}")
    if kernel.shape[-2] != x.shape[-1]:
        raise ValueError(f"kernel in-features {kernel.shape[-2]} != x channels {x.shape[-1]}")
    strides = (1,) * nd if strides is None else _ints(strides)
    lhs_dil = (1,) * nd if input_dilation is None else _ints(input_dilation)
    rhs_dil = (1,) * nd if kernel_dilation is None else _ints(kernel_dilation)
    for name, v in (("strides", strides), ("input_dilation", lhs_dil),
                    ("kernel_dilation", rhs_dil)):
        if len(v) != nd or min(v) < 1:
            raise ValueError(f"{name} must be {nd} positive ints; got {v}")
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID", "SAME_LOWER"):
            raise ValueError(f"padding must be 'SAME', 'VALID' or (low, high) pairs; "
                             f"got {padding!r}")
        k_eff = [1 + d * (k - 1) for k, d in zip(kernel.shape[:nd], rhs_dil)]
        padding = lax.padtype_to_pads(x.shape[1:-1], k_eff, strides, padding)
    padding = _pairs(padding)
    if len(padding) != nd:
        raise ValueError(f"padding must have {nd} (low, high) pairs; got {padding}")
    dtype = jnp.result_type(x, kernel)
    return canonical_conv_p.bind(x.astype(dtype), kernel.astype(dtype), window_strides=strides,
                                 padding=padding, lhs_dilation=lhs_dil, rhs_dilation=rhs_dil,
                                 precision=precision)


def _is_channels_last(lhs_shape, rhs_shape, dimension_numbers) -> bool:
    nd = len(lhs_shape) - 2
    if nd not in (1, 2):
        return False
    try:
        got = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    except Exception:
        return False
    return got == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _SPECS[nd])


def use_canonical_conv() -> bool:
    """Whether :func:`conv_general_dilated` takes the canonical path: on the CPU backend only."""
    return jax.default_backend() == "cpu"


def conv_general_dilated(lhs: ArrayLike, rhs: ArrayLike, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None) -> Array:
    """``lax.conv_general_dilated``'s signature; the canonical primitive on CPU (see module doc).

    Channels-last layouts with ``feature_group_count == batch_group_count == 1`` and 1 or 2
    spatial dims go through :func:`canonical_conv` when :func:`use_canonical_conv` is true; every
    other call (other layouts, grouped convs, other backends) is ``lax.conv_general_dilated``.
    """
    lhs = jnp.asarray(lhs)
    rhs = jnp.asarray(rhs)
    if (not use_canonical_conv() or feature_group_count != 1 or batch_group_count != 1
            or preferred_element_type is not None
            or not _is_channels_last(lhs.shape, rhs.shape, dimension_numbers)):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    return canonical_conv(lhs, rhs, strides=window_strides, padding=padding,
                          input_dilation=lhs_dilation, kernel_dilation=rhs_dilation,
                          precision=precision)


class Conv(nn.Conv):
    """``flax.linen.Conv`` whose convolution stays fast inside loops on the CPU.

    Identical to ``nn.Conv`` (fields, parameter names and shapes, initialisation, outputs; flax
    names instances ``Conv_0``, ``Conv_1``, … as for ``nn.Conv``) except that the default
    ``conv_general_dilated`` is :func:`cljax.nn.conv.conv_general_dilated`: the canonical
    primitive on the CPU, XLA's native convolution on other backends. Recognised by the
    importance estimators' layer-capture fast path like ``nn.Conv``.
    """

    conv_general_dilated: Any = conv_general_dilated


def max_pool(x: Array, window: int) -> Array:
    """Non-overlapping ``window × window`` max pooling of ``x [N, H, W, C]`` (stride = window,
    ``VALID``: trailing rows / columns that do not fill a window are dropped, as PyTorch's
    ``MaxPool2d(window)``), as an elementwise maximum of the window's strided slices.

    Equal in value to ``flax.linen.max_pool(x, (window, window), strides=(window, window))``;
    its gradient is elementwise selects instead of XLA's select-and-scatter, which made the
    CIFAR CNN's training step 1.3× faster on the CPU (``benchmarks/bench_conv.py``). Ties (equal
    maxima in a window) share the gradient equally instead of giving it to one element.
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"max_pool expects [N, H, W, C]; got shape {x.shape}")
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive int; got {window!r}")
    h, w = (x.shape[1] // window) * window, (x.shape[2] // window) * window
    if h == 0 or w == 0:
        raise ValueError(f"window {window} is larger than the image {x.shape[1:3]}")
    x = x[:, :h, :w]
    out = None
    for i in range(window):
        for j in range(window):
            s = x[:, i::window, j::window]
            out = s if out is None else jnp.maximum(out, s)
    assert out is not None                     # window >= 1
    return out


# ----------------------------------------------------------------------------------------------
# im2col and an HLO guard
# ----------------------------------------------------------------------------------------------

def im2col(x: Array, kernel_spatial: Sequence[int], *, strides: Sequence[int],
           padding: Sequence[tuple[int, int]], kernel_dilation: Sequence[int]) -> Array:
    """Patches ``[N, *out_spatial, prod(kernel_spatial)·C]`` of ``x [N, *spatial, C]`` by strided
    slices (no convolution op: loop-friendly on every backend), features in the row-major order
    of a ``[*kernel_spatial, C, out]`` kernel, so ``im2col(x) @ kernel.reshape(-1, out)`` is the
    convolution with the same strides / explicit padding / kernel dilation."""
    x = jnp.asarray(x)
    nd = x.ndim - 2
    ks, st, kd = _ints(kernel_spatial), _ints(strides), _ints(kernel_dilation)
    pads = _pairs(padding)
    if not (len(ks) == len(st) == len(kd) == len(pads) == nd):
        raise ValueError(f"kernel_spatial, strides, padding, kernel_dilation must each have "
                         f"{nd} entries for x of shape {x.shape}")
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads]
                 + [(0, 0, 0)])
    out = [(xp.shape[1 + d] - (ks[d] - 1) * kd[d] - 1) // st[d] + 1 for d in range(nd)]
    if min(out) < 1:
        raise ValueError(f"kernel {ks} (dilation {kd}) is larger than the padded input "
                         f"{xp.shape[1:-1]}")
    cols = []
    for idx in itertools.product(*[range(k) for k in ks]):
        start = [0] + [i * kd[d] for d, i in enumerate(idx)] + [0]
        limit = ([xp.shape[0]] + [start[1 + d] + (out[d] - 1) * st[d] + 1 for d in range(nd)]
                 + [xp.shape[-1]])
        cols.append(lax.slice(xp, start, limit, (1,) + st + (1,)))
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


_CONV_RE = re.compile(r"=\s*\S+\s+convolution\(.*?dim_labels=([^,\s]+)")


def noncanonical_convolutions(hlo_text: str) -> list[str]:
    """The ``dim_labels`` of every convolution in an HLO text that XLA's CPU backend cannot run
    on its library kernel (anything but ``b01f_01io->b01f`` / ``b0f_0io->b0f``). Use on
    ``jax.jit(f).lower(...).compile().as_text()`` to check that no slow convolution is left."""
    bad = []
    for m in _CONV_RE.finditer(hlo_text):
        if m.group(1) not in ("b01f_01io->b01f", "b0f_0io->b0f"):
            bad.append(m.group(1))
    return bad


__all__ = ["Conv", "canonical_conv", "canonical_conv_p", "conv_general_dilated", "im2col",
           "max_pool", "noncanonical_convolutions", "use_canonical_conv"]
