"""K-FAC-preconditioned gradients formed inside the backward pass (the rank-B trick).

A dense layer's batch gradient is ∇W̄ = āᵀδ, with ā = [x, 1]: [R, in+1] the layer's inputs (R rows:
batch × any middle axes) and δ: [R, out] its output cotangents. Its K-FAC preconditioned form
((A ⊗ G)⁻¹ vec ∇W̄ = vec(A⁻¹ ∇W̄ G⁻¹), Martens & Grosse 2015; A, G symmetric) is

    A⁻¹ ∇W̄ G⁻¹ = (ā A⁻ᵀ)ᵀ (δ G⁻¹)

which costs R·((in+1)² + out² + (in+1)·out) multiply-adds instead of the gradient's R·(in+1)·out
plus the dense product's (in+1)²·out + (in+1)·out². For R < (in+1)·out·(in+1+out) /
((in+1)² + out²) — e.g. R < 479 for a 784→400 layer — the rank form is cheaper; on the
784-400-400-10 MLP at batch 128 it removes ≈ 60 % of the preconditioner's flops. An optax transform
sees only the gradient, so this is a replacement for ``jax.value_and_grad``:
:func:`kfac_preconditioned_value_and_grad` runs ``fun`` under ``flax.linen.intercept_methods``
and replaces each tracked ``nn.Dense`` call by an identical forward whose custom VJP returns the
preconditioned weight cotangent (the input cotangent is the usual δWᵀ, so layers below are
unaffected). Each call picks the cheaper of the rank and dense forms from its static shapes.

Preconditioning is linear, so a layer called several times (shared weights, replay or
distillation terms calling the model again) gets the sum of its calls' preconditioned
contributions, which is the preconditioned total gradient. Tracked layers that are never called
as a recognisable ``nn.Dense`` (conv layers, custom dot_general, non-flax models) are
preconditioned after the backward pass with the dense product; parameters outside tracked layers
are scaled by ``other_scale``. Requirement: a tracked Dense's kernel and bias are used only through
that Dense's ``__call__`` (a contribution from any other use would not be preconditioned).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cljax.layers import (
    check_factors,
    describe_call,
    get_layer,
    is_candidate,
    layer_rows,
    pack,
    param_layers,
    set_layer,
    unpack,
)
from cljax.types import Array, KFACFactors, Params


def _rank_form_is_cheaper(rows: int, n: int, m: int) -> bool:
    """Multiply-adds of (āA⁻ᵀ)ᵀ(δG⁻¹) vs A⁻¹(āᵀδ)G⁻¹ for an [n, m] layer and R rows."""
    return rows * (n * n + m * m + n * m) < rows * n * m + n * n * m + n * m * m


def _dense_forward(x: Array, kernel: Array, bias: Array | None, precision: Any) -> Array:
    """flax ``nn.Dense``'s computation after dtype promotion."""
    y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)
    if bias is not None:
        y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _dense(x: Array, kernel: Array, bias: Array | None, a_inv: Array, g_inv: Array,
           precision: Any) -> Array:
    return _dense_forward(x, kernel, bias, precision)


def _dense_fwd(x, kernel, bias, a_inv, g_inv, precision):
    return _dense_forward(x, kernel, bias, precision), (x, kernel, bias, a_inv, g_inv)


def _dense_bwd(precision, res, dy):
    x, kernel, bias, a_inv, g_inv = res
    dx = lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())), precision=precision)
    nin, m = kernel.shape
    xr = x.reshape(-1, nin)
    dr = dy.reshape(-1, m)
    ct = a_inv.dtype
    xr, dr = xr.astype(ct), dr.astype(ct)
    if _rank_form_is_cheaper(xr.shape[0], a_inv.shape[0], m):
        # rows of ā A⁻ᵀ: x A⁻¹[:, :in]ᵀ (+ A⁻¹[:, in] for the bias's constant input 1)
        xa = jnp.matmul(xr, a_inv[:, :nin].T, precision=precision)
        if bias is not None:
            xa = xa + a_inv[:, nin]
        w = jnp.matmul(xa.T, jnp.matmul(dr, g_inv, precision=precision), precision=precision)
    else:
        abar = xr if bias is None else jnp.concatenate([xr, jnp.ones_like(xr[:, :1])], axis=1)
        grad = jnp.matmul(abar.T, dr, precision=precision)
        w = jnp.matmul(jnp.matmul(a_inv, grad, precision=precision), g_inv, precision=precision)
    dk = w[:nin].astype(kernel.dtype)
    db = None if bias is None else w[nin].astype(bias.dtype)
    return dx, dk, db, jnp.zeros_like(a_inv), jnp.zeros_like(g_inv)


_dense.defvjp(_dense_fwd, _dense_bwd)


def _interceptable(module: nn.Module, n: int, m: int) -> bool:
    """A plain ``nn.Dense`` whose kernel is the tracked layer's ``[n - bias, m]``."""
    if type(module) is not nn.Dense or module.dot_general is not None \
            or module.dot_general_cls is not None:
        return False
    try:
        kernel = module.variables["params"]["kernel"]
    except Exception:
        return False
    return tuple(kernel.shape) == (n - int(module.use_bias), m)


def kfac_preconditioned_value_and_grad(
        fun: Callable[..., Any], params: Params, inverses: Mapping[str, KFACFactors], *args: Any,
        other_scale: float | Array = 1.0, has_aux: bool = False, capture_rows: bool = False
        ) -> tuple[Any, ...]:
    """``fun(params, *args)`` and its gradient with every tracked layer's block preconditioned,
    ``A⁻¹ ∇W̄ G⁻¹``, and every other parameter's gradient multiplied by ``other_scale``.

    Args:
      fun: scalar loss of ``(params, *args)`` built from flax linen modules.
      params: the parameters (a pytree with the layers named in ``inverses``).
      inverses: {layer name: KFACFactors(A⁻¹ [in+1, in+1], G⁻¹ [out, out])} in the
        :class:`cljax.types.KFACFactors` layout (e.g. a K-FAC ``NCLState.inverse.factors``).
      other_scale: multiplier for the gradients of parameters outside those layers.
      has_aux: ``fun`` returns ``(loss, aux)`` (as ``jax.value_and_grad``'s ``has_aux``); the
        value returned is then that pair.
      capture_rows: also return the rows every recognised layer call multiplied its ``W̄`` with
        (:func:`cljax.layers.capture_rows`'s dict; this function's interceptor runs first, so a
        capture inside ``fun`` would not see the Dense calls it replaces).

    Returns ``(value, preconditioned gradient)`` (``(value, gradient, rows)`` with
    ``capture_rows``), the gradient with ``params``' structure; equal (to rounding) to applying
    the preconditioner to ``jax.grad(fun)(params, *args)``.
    """
    if not callable(fun):
        raise TypeError(f"fun must be a callable loss(params, *args); got {type(fun).__name__}")
    shapes = param_layers(params)
    check_factors(inverses, {k: (v[0], v[1]) for k, v in shapes.items()})
    other = jnp.asarray(other_scale)
    if not jnp.issubdtype(other.dtype, jnp.floating) or other.ndim != 0:
        raise ValueError(f"other_scale must be a float scalar; got dtype {other.dtype}, "
                         f"shape {other.shape}")
    seen: set[str] = set()
    captured: dict[str, list[Array]] = {}

    def interceptor(next_fun, call_args, kwargs, ctx):
        module = ctx.module
        if ctx.method_name != "__call__" or module.scope is None:
            return next_fun(*call_args, **kwargs)
        name = "/".join(module.scope.path)
        x = call_args[0] if call_args else kwargs.get("inputs")
        if name in inverses and _interceptable(module, *shapes[name][:2]):
            v = module.variables["params"]
            xp, kernel, bias = module.promote_dtype(x, v["kernel"], v.get("bias") if module.use_bias
                                                    else None, dtype=module.dtype)
            seen.add(name)
            a_inv, g_inv = inverses[name]
            out = _dense(xp, kernel, bias, a_inv, g_inv, module.precision)
        else:
            out = next_fun(*call_args, **kwargs)
        if capture_rows and is_candidate(ctx):
            call = describe_call(module, x, out)
            if call is not None:
                captured.setdefault(name, []).append(layer_rows(jnp.asarray(x), call))
        return out

    def wrapped(p: Params) -> Any:
        captured.clear()
        with nn.intercept_methods(interceptor):
            result = fun(p, *args)
        out = _checked_loss(result, has_aux)
        if not capture_rows:
            return result
        aux = result[1] if has_aux else None
        return out, (aux, dict(captured))

    value, grads = jax.value_and_grad(wrapped, has_aux=has_aux or capture_rows)(params)
    rows = None
    if capture_rows:
        loss, (aux, rows) = value
        value = (loss, aux) if has_aux else loss
    out = _finish_gradient(grads, inverses, seen, other)
    return (value, out, rows) if capture_rows else (value, out)


def _checked_loss(result: Any, has_aux: bool) -> Array:
    """The loss of ``fun``'s ``result`` (``(loss, aux)`` with ``has_aux``), a float scalar."""
    if has_aux and not (isinstance(result, tuple) and len(result) == 2):
        raise ValueError("with has_aux=True, fun must return a pair (loss, aux); got "
                         f"{type(result).__name__}")
    out = result[0] if has_aux else result
    if jnp.shape(out) != () or not jnp.issubdtype(jnp.result_type(out), jnp.floating):
        raise ValueError(f"fun must return a float scalar loss{' (and aux)' if has_aux else ''};"
                         f" got shape {jnp.shape(out)}, dtype {jnp.result_type(out)}")
    return out


def _finish_gradient(grads: Params, inverses: Mapping[str, KFACFactors], seen: set[str],
                     other: Array) -> Params:
    """Every other parameter's gradient times ``other``; each tracked layer's block
    preconditioned, inside the backward pass (``seen``) or here, by the dense product."""
    out = jax.tree.map(lambda g: (other.astype(g.dtype) * g).astype(g.dtype), grads)
    for name, (a_inv, g_inv) in inverses.items():
        node = get_layer(grads, name)
        w = pack(node)
        if name not in seen:  # never called as an interceptable Dense: dense product afterwards
            w = a_inv @ w @ g_inv
        out = set_layer(out, name, unpack(w, node))
    return out


__all__ = ["kfac_preconditioned_value_and_grad"]
