"""Structured curvature blocks: one diagonal and one Kronecker-factored curvature type.

A *curvature* C is a positive semi-definite matrix over the parameters, held in one of two
structured forms (both NamedTuple pytrees: they go through ``jit``, ``vmap`` and ``lax.scan``):

* :class:`Diagonal` ``(values)``: C = diag(Ω), Ω a params-shaped pytree — the diagonal Fisher of
  EWC (Kirkpatrick et al. 2017, PNAS, eq. 3), SI's and MAS's importances, or 1/(sΩ + d).
* :class:`KroneckerFactored` ``(factors, other)``: block-diagonal over the layers of
  :func:`cljax.layers.param_layers`, C_l = A_l ⊗ G_l on the row-major vec of the layer's
  ``W̄ = [W; b]: [rows, out]`` (K-FAC, Martens & Grosse 2015, ICML, §3; conv layers: KFC,
  Grosse & Martens 2016, ICML), with the factors in the :class:`cljax.types.KFACFactors` layout,
  and ``other · I`` on every parameter outside those layers. ``other`` is 0 for a task's K-FAC
  curvature (K-FAC gives those parameters none) and 1/d for a damped inverse (d: the damping).

Constructors: :func:`diagonal`, :func:`kronecker_factored` (from a factors dict such as
:func:`cljax.importance.kfac_factors` returns), :func:`zeros`, :func:`identity`. Every function
takes either type and is pure; all of them trace under ``jit`` and ``vmap`` (shapes and
structure are checked statically, values only when concrete):

* :func:`combine` ``(old, new, mode, decay)``: the task-boundary update of an accumulated
  curvature — ``"online"`` γ·C_old + C_new (Schwarz et al. 2018, "online EWC"; for K-FAC the
  Frobenius-nearest Kronecker product of the sum, Van Loan & Pitsianis 1993,
  :func:`nearest_kronecker_sum`), ``"sum"`` (γ = 1; K-FAC: the factor sum of Ritter et al. 2018),
  ``"replace"``.
* :func:`matvec` (C v, optionally scaled), :func:`matvec_sum` (Σ_s C_s (v − c_s) over a
  leading slot axis of stacked curvatures, looping over the filled slots only),
  :func:`quadratic_form` (vᵀ C v).
* :func:`damped_inverse` ``(C, strength=s, damping=d)``: (sC + dI)⁻¹ — exactly for a diagonal,
  with the factored Tikhonov damping of Martens & Grosse (2015, §6.3) for K-FAC.

The quadratic penalty (:mod:`cljax.transforms.penalty`) adds λ·:func:`matvec` to the gradient
and NCL (:mod:`cljax.transforms.ncl`) preconditions with the :func:`matvec` of a
:func:`damped_inverse`; neither needs to know which of the two types it holds.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax._linalg import eigh
from cljax.layers import check_factors, get_layer, pack, param_layers, set_layer, unpack
from cljax.types import Array, KFACFactors, Params
from cljax.validation import (
    check_finite,
    check_float_leaves,
    check_in_unit_interval,
    check_nonnegative,
    check_nonnegative_leaves,
    check_positive,
    check_same_structure,
    default_float_dtype,
    is_concrete,
)

Kind = Literal["diagonal", "kfac"]
CombineMode = Literal["online", "sum", "replace"]
KINDS = ("diagonal", "kfac")
COMBINE_MODES = ("online", "sum", "replace")


class Diagonal(NamedTuple):
    """C = diag(Ω): ``values`` is Ω, a pytree with the parameters' structure and shapes."""

    values: Params


class KroneckerFactored(NamedTuple):
    """C = ⊕_l (A_l ⊗ G_l) ⊕ other·I (K-FAC, Martens & Grosse 2015, §3).

    Attributes:
      factors: {layer name: KFACFactors(A [rows, rows], G [out, out])} over layers of
        :func:`cljax.layers.param_layers` (W̄ = :func:`cljax.layers.pack` of the layer node;
        A⊗G acts on its row-major vec, so C_l vec(V̄) = vec(A V̄ G)).
      other: float scalar; the curvature of every parameter outside ``factors`` is ``other·I``.
    """

    factors: dict
    other: Array


Curvature = Diagonal | KroneckerFactored


def _check_kind(kind: Any) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be 'diagonal' or 'kfac'; got {kind!r}")


def _check_curvature(curv: Any, name: str) -> None:
    if not isinstance(curv, (Diagonal, KroneckerFactored)):
        raise TypeError(f"{name} must be a Diagonal or a KroneckerFactored "
                        f"(cljax.curvature.diagonal / kronecker_factored); got "
                        f"{type(curv).__name__}")
    if isinstance(curv, KroneckerFactored):
        factors = curv.factors
        if not isinstance(factors, Mapping) or not all(
                isinstance(f, tuple) and len(f) == 2 for f in factors.values()):
            raise TypeError(f"{name}.factors must be a dict {{layer name: KFACFactors(A, G)}}")
        check_factors(factors, {k: (jnp.shape(f[0])[-1], jnp.shape(f[1])[-1])
                                for k, f in factors.items()}, name=f"{name}.factors")
        other = curv.other
        if jnp.ndim(other) != 0 or not jnp.issubdtype(jnp.result_type(other), jnp.floating):
            raise ValueError(f"{name}.other must be a float scalar; got shape "
                             f"{jnp.shape(other)}, dtype {jnp.result_type(other)}")


# --------------------------------------------------------------------------------------------
# Constructors.
# --------------------------------------------------------------------------------------------

def diagonal(values: Params) -> Diagonal:
    """``Diagonal(values)`` after checking Ω (concrete leaves: finite and ≥ 0)."""
    check_float_leaves(values, name="values")
    check_finite(values, name="values")
    check_nonnegative_leaves(values, name="values", hint="a curvature's diagonal must be >= 0")
    return Diagonal(jax.tree.map(jnp.asarray, values))


def kronecker_factored(params: Params, factors: Mapping[str, Any], *, layers: Any = None,
                       other: float | Array = 0.0) -> KroneckerFactored:
    """A :class:`KroneckerFactored` over the layers of ``params`` from a factors dict.

    Args:
      params: the parameters (or any pytree with their structure): fixes the tracked layers
        and the factors' dtype (each layer's kernel dtype).
      factors: {layer name: KFACFactors(A, G)} (e.g. :func:`cljax.importance.kfac_factors`),
        finite; tracked layers it omits get zero factors (no curvature).
      layers: the tracked layer names; default every layer of ``params``
        (:func:`cljax.layers.param_layers`).
      other: the curvature ``other·I`` of the parameters outside the tracked layers.
    """
    shapes = param_layers(params, layers)
    check_factors(factors, {k: (s.rows, s.out) for k, s in shapes.items()})
    check_finite(factors, name="factors")
    out = {}
    for name, (n, m, _) in shapes.items():
        dt = get_layer(params, name)["kernel"].dtype
        if name in factors:
            out[name] = KFACFactors(jnp.asarray(factors[name][0], dt),
                                    jnp.asarray(factors[name][1], dt))
        else:
            out[name] = KFACFactors(jnp.zeros((n, n), dt), jnp.zeros((m, m), dt))
    other = jnp.asarray(other, default_float_dtype())
    if other.ndim != 0:
        raise ValueError(f"other must be a float scalar; got shape {other.shape}")
    check_nonnegative(other, name="other", scalar=True)
    return KroneckerFactored(out, other)


def zeros(params: Params, kind: Kind = "diagonal", *, layers: Any = None) -> Curvature:
    """The zero curvature of ``params``: Ω = 0, or A = G = 0 per tracked layer and other = 0."""
    _check_kind(kind)
    if kind == "diagonal":
        _no_layers(layers)
        return Diagonal(jax.tree.map(jnp.zeros_like, params))
    return kronecker_factored(params, {}, layers=layers)


def identity(params: Params, kind: Kind = "diagonal", *, layers: Any = None) -> Curvature:
    """The identity: Ω = 1, or A = I, G = I per tracked layer and other = 1."""
    _check_kind(kind)
    if kind == "diagonal":
        _no_layers(layers)
        return Diagonal(jax.tree.map(jnp.ones_like, params))
    shapes = param_layers(params, layers)
    factors = {}
    for name, (n, m, _) in shapes.items():
        dt = get_layer(params, name)["kernel"].dtype
        factors[name] = KFACFactors(jnp.eye(n, dtype=dt), jnp.eye(m, dtype=dt))
    return KroneckerFactored(factors, jnp.ones((), default_float_dtype()))


def _no_layers(layers: Any) -> None:
    if layers is not None:
        raise ValueError("layers selects the Kronecker-factored layers; a diagonal curvature "
                         f"covers every parameter (kind='kfac' to use layers={layers!r})")


# --------------------------------------------------------------------------------------------
# combine
# --------------------------------------------------------------------------------------------

def nearest_kronecker_sum(a1: Array, g1: Array, a2: Array, g2: Array) -> tuple[Array, Array]:
    """(X, Y) minimising ‖A₁⊗G₁ + A₂⊗G₂ − X⊗Y‖_F (Van Loan & Pitsianis 1993).

    Rearranging A⊗G into vec(A) vec(G)ᵀ turns the problem into the best rank-1 approximation of
    U Vᵀ, U = [vec A₁, vec A₂], V = [vec G₁, vec G₂]. With Gram matrices K_A = UᵀU, K_G = VᵀV
    (2×2 Frobenius inner products), the top left singular vector is U c with c the top
    eigenvector of K_G K_A; then X = Σ c_i A_i and Y = Σ_j (K_A c)_j G_j / (cᵀ K_A c).
    Exact when the sum is a Kronecker product. For PSD inputs K_A, K_G ≥ 0 entrywise, so c ≥ 0
    (Perron-Frobenius) and X, Y are PSD. Costs O(n² + m²): a few inner products, no eig of
    the factors. Returns zeros if both terms vanish.
    """
    ip = lambda x, y: jnp.sum(x * y)
    ka = jnp.array([[ip(a1, a1), ip(a1, a2)], [ip(a1, a2), ip(a2, a2)]])
    kg = jnp.array([[ip(g1, g1), ip(g1, g2)], [ip(g1, g2), ip(g2, g2)]])
    # Normalise for numerical range (scale-free eigenvector).
    ka_n = ka / jnp.maximum(jnp.max(ka), jnp.finfo(ka.dtype).tiny)
    kg_n = kg / jnp.maximum(jnp.max(kg), jnp.finfo(kg.dtype).tiny)
    mm = kg_n @ ka_n
    p, q, r, s = mm[0, 0], mm[0, 1], mm[1, 0], mm[1, 1]
    mu = 0.5 * (p + s) + jnp.sqrt(jnp.maximum(0.25 * (p - s) ** 2 + q * r, 0.0))
    v1 = jnp.stack([q, mu - p])
    v2 = jnp.stack([mu - s, r])
    c = jnp.where(jnp.sum(v1 ** 2) >= jnp.sum(v2 ** 2), v1, v2)
    # Degenerate (mm ∝ I or zero): both candidates vanish; any c works, take the larger term.
    deg = jnp.sum(c ** 2) <= 1e-30
    c = jnp.where(deg, jnp.where(ka[0, 0] * kg[0, 0] >= ka[1, 1] * kg[1, 1],
                                 jnp.array([1.0, 0.0], c.dtype), jnp.array([0.0, 1.0], c.dtype)), c)
    c = c * jnp.sign(jnp.sum(c) + (jnp.sum(c) == 0))
    kac = ka @ c
    denom = c @ kac
    x = c[0] * a1 + c[1] * a2
    safe = jnp.where(denom > 0, denom, 1.0)
    y = jnp.where(denom > 0, (kac[0] * g1 + kac[1] * g2) / safe, jnp.zeros_like(g1))
    return x, y


def _check_mode_and_decay(mode: Any, decay: Any) -> None:
    if mode not in COMBINE_MODES:
        raise ValueError(f"mode must be 'online', 'sum' or 'replace'; got {mode!r}")
    check_in_unit_interval(decay, name="decay", scalar=True)
    if mode != "online" and not (is_concrete(decay) and np.all(np.asarray(decay) == 1.0)):
        raise ValueError(f"decay is only used by mode='online'; got decay={decay} with "
                         f"mode={mode!r}")


def _check_pair(old: Curvature, new: Curvature) -> None:
    _check_curvature(old, "old")
    _check_curvature(new, "new")
    if type(old) is not type(new):
        raise TypeError(f"new must be a {type(old).__name__} like old; got {type(new).__name__}")
    if isinstance(old, Diagonal):
        assert isinstance(new, Diagonal)           # the same type, checked just above
        check_same_structure(new.values, old.values, name="new.values",
                             reference_name="old.values")
        return
    assert isinstance(new, KroneckerFactored)
    if set(new.factors) != set(old.factors):
        raise ValueError(f"new.factors must name the layers of old.factors "
                         f"{sorted(old.factors)}; got {sorted(new.factors)}")
    for k, f in old.factors.items():
        g = new.factors[k]
        if jnp.shape(g[0]) != jnp.shape(f[0]) or jnp.shape(g[1]) != jnp.shape(f[1]):
            raise ValueError(f"new.factors[{k!r}] must have A: {jnp.shape(f[0])} and G: "
                             f"{jnp.shape(f[1])} like old; got A: {jnp.shape(g[0])}, "
                             f"G: {jnp.shape(g[1])}")


@overload
def combine(old: Diagonal, new: Diagonal, *, mode: CombineMode,
            decay: float | Array = ...) -> Diagonal: ...
@overload
def combine(old: KroneckerFactored, new: KroneckerFactored, *, mode: CombineMode,
            decay: float | Array = ...) -> KroneckerFactored: ...
@overload
def combine(old: Curvature, new: Curvature, *, mode: CombineMode,
            decay: float | Array = ...) -> Curvature: ...
def combine(old: Curvature, new: Curvature, *, mode: CombineMode,
            decay: float | Array = 1.0) -> Curvature:
    """Fold a task's curvature ``new`` into the accumulated ``old`` (same type and layers).

    * Diagonal: ``"online"`` γ·Ω + Ω_t (online EWC, Schwarz et al. 2018; SI and MAS accumulate
      with γ = 1, Zenke et al. 2017 eq. 5), ``"sum"`` Ω + Ω_t, ``"replace"`` Ω_t.
    * KroneckerFactored, per layer: ``"online"`` the Frobenius-nearest Kronecker product of
      γ·A⊗G + A_t⊗G_t (:func:`nearest_kronecker_sum`; exact when the sum is one, e.g. for
      proportional factors, or when a task brings no curvature for the layer, A_t⊗G_t = 0:
      then (γA, G·k/k), k = ‖γA‖²‖G‖², i.e. γA⊗G to rounding), ``"sum"`` the factor sum
      (A + A_t, G + G_t) named for Ritter et al.
      2018 (it adds the cross terms A⊗G_t + A_t⊗G), ``"replace"`` (A_t, G_t); ``other``:
      γ·o + o_t, o + o_t, o_t.

    Args:
      old, new: curvatures of one type over the same parameters (layers and shapes).
      mode: ``"online"``, ``"sum"`` or ``"replace"``.
      decay: γ ∈ (0, 1], only for ``"online"`` (may be traced, e.g. a vmapped axis).

    Returns a curvature with ``old``'s structure, shapes and dtypes.
    """
    _check_mode_and_decay(mode, decay)
    _check_pair(old, new)
    cast = lambda x, ref: jnp.asarray(x, ref.dtype)
    if isinstance(old, Diagonal):
        assert isinstance(new, Diagonal)           # the same type (_check_pair)
        if mode == "online":
            fn = lambda o, w: cast(decay, o) * o + cast(w, o)
        elif mode == "sum":
            fn = lambda o, w: o + cast(w, o)
        else:
            fn = lambda o, w: cast(w, o)
        return Diagonal(jax.tree.map(fn, old.values, new.values))
    assert isinstance(new, KroneckerFactored)
    factors = {}
    for name, f in old.factors.items():
        a, g = f[0], f[1]
        a_t, g_t = cast(new.factors[name][0], a), cast(new.factors[name][1], g)
        if mode == "online":
            dec = cast(decay, a)
            factors[name] = KFACFactors(*nearest_kronecker_sum(dec * a, g, a_t, g_t))
        elif mode == "sum":
            factors[name] = KFACFactors(a + a_t, g + g_t)
        else:
            factors[name] = KFACFactors(a_t, g_t)
    o, o_t = old.other, cast(new.other, old.other)
    other = {"online": lambda: cast(decay, o) * o + o_t, "sum": lambda: o + o_t,
             "replace": lambda: o_t}[mode]()
    return KroneckerFactored(factors, other)


# --------------------------------------------------------------------------------------------
# Products.
# --------------------------------------------------------------------------------------------

def _check_tree(curv: Curvature, tree: Any, name: str) -> None:
    _check_curvature(curv, "curvature")
    if isinstance(curv, Diagonal):
        check_same_structure(tree, curv.values, name=name, reference_name="curvature.values")
        return
    for layer, f in curv.factors.items():
        try:
            node = get_layer(tree, layer)
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{name} has no layer {layer!r} (curvature.factors names it)") from e
        if not isinstance(node, Mapping) or "kernel" not in node:
            raise ValueError(f"{name}[{layer!r}] must be a layer node with a 'kernel'")
        shape = (int(np.prod(jnp.shape(node["kernel"])[:-1])) + ("bias" in node),
                 jnp.shape(node["kernel"])[-1])
        want = (jnp.shape(f[0])[-1], jnp.shape(f[1])[-1])
        if shape != want:
            raise ValueError(f"{name}[{layer!r}] packs to W̄ of shape {shape}; "
                             f"curvature.factors[{layer!r}] has A: {jnp.shape(f[0])}, "
                             f"G: {jnp.shape(f[1])}")


def _outside(curv: KroneckerFactored, tree: Any) -> Any:
    """``tree`` with the tracked layers' leaves zeroed (the part ``other·I`` acts on)."""
    for layer in curv.factors:
        node = get_layer(tree, layer)
        tree = set_layer(tree, layer, {k: jnp.zeros_like(v) for k, v in node.items()})
    return tree


def _scaled(scale: Any, x: Array) -> Array:
    return x if scale is None else jnp.asarray(scale).astype(x.dtype) * x


def matvec(curv: Curvature, tree: Params, *, scale: float | Array | None = None) -> Params:
    """C v for a params-shaped ``tree`` v: Ω ⊙ v (Diagonal); per tracked layer A V̄ G
    (vec(A V̄ G) = (A ⊗ G) vec(V̄), row-major vec, Martens & Grosse 2015 §3) and other·v
    elsewhere (KroneckerFactored). Returns ``tree``'s structure, each leaf in its dtype.

    ``scale`` (e.g. a penalty's λ) returns s·C v, the scalar applied to each block's product
    before a layer's ``W̄`` is split back into kernel and bias (one multiply per entry; the
    rounding is that of ``s * (C v)``).
    """
    _check_tree(curv, tree, "tree")
    if isinstance(curv, Diagonal):
        return jax.tree.map(lambda o, v: _scaled(scale, o * v), curv.values, tree)
    other = curv.other
    out = jax.tree.map(lambda v: _scaled(scale, other.astype(v.dtype) * v), tree)
    for layer, f in curv.factors.items():
        node = get_layer(tree, layer)
        out = set_layer(out, layer, unpack(_scaled(scale, f[0] @ pack(node) @ f[1]), node))
    return out


def matvec_sum(curvs: Curvature, tree: Params, centers: Params, *, count: Array | int,
               scale: float | Array | None = None) -> Params:
    """Σ_{s < count} C_s (v − c_s): the gradient of ½ Σ_s (v − c_s)ᵀ C_s (v − c_s) over the
    first ``count`` of S stacked curvatures and centres (e.g. the per-task slots of multi-task
    K-FAC, Ritter et al. 2018; for one slot, :func:`matvec` of v − c).

    Args:
      curvs: a Diagonal or KroneckerFactored whose every leaf has a leading axis of length S
        (``other``: ``[S]``).
      tree: v, params-shaped.
      centers: c, ``tree``'s structure with the leading axis S on every leaf.
      count: how many slots are filled (may be traced); the products run in a loop over those
        only, so unfilled slots cost nothing.
      scale: as in :func:`matvec`, applied to the sum.
    """
    one = lambda x: jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], a.dtype), x)
    check_same_structure(tree, one(centers), name="tree", reference_name="centers[0]")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves((curvs, centers))}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"curvs and centers must share one leading slot axis; got lengths "
                         f"{sorted(sizes, key=str)}")
    _check_tree(jax.tree.map(lambda x: x[0], curvs), tree, "tree")
    size = sizes.pop()
    assert size is not None                        # checked just above
    n = jnp.minimum(count, size)

    def loop(term: Callable[[Array], Array], like: Array) -> Array:
        return jax.lax.fori_loop(0, n, lambda i, acc: acc + term(i), jnp.zeros_like(like))

    if isinstance(curvs, Diagonal):
        return jax.tree.map(lambda o, v, c: _scaled(scale, loop(lambda i: o[i] * (v - c[i]), v)),
                            curvs.values, tree, centers)
    other = curvs.other
    out = jax.tree.map(lambda v, c: _scaled(scale, loop(
        lambda i: other[i].astype(v.dtype) * (v - c[i]), v)), tree, centers)
    for layer, f in curvs.factors.items():
        node = get_layer(tree, layer)
        w, cw = pack(node), pack(get_layer(centers, layer), 1)
        def term(i: Array, f: KFACFactors = f, w: Array = w, cw: Array = cw) -> Array:
            return f[0][i] @ (w - cw[i]) @ f[1][i]

        acc = loop(term, w)
        out = set_layer(out, layer, unpack(_scaled(scale, acc), node))
    return out


def quadratic_form(curv: Curvature, tree: Params) -> Array:
    """vᵀ C v: Σ_i Ω_i v_i² (Diagonal); Σ_l tr(V̄ᵀ A V̄ G) + other·Σ_{outside} v²
    (KroneckerFactored). A scalar in the leaves' promoted float dtype."""
    _check_tree(curv, tree, "tree")
    tu = optax.tree_utils
    dt = jnp.result_type(default_float_dtype(), *jax.tree.leaves(tree))
    if isinstance(curv, Diagonal):
        v = tu.tree_cast(tree, dt)
        return jnp.asarray(tu.tree_sum(tu.tree_mul(tu.tree_cast(curv.values, dt),
                                                   tu.tree_mul(v, v))), dt)
    total = jnp.zeros((), dt)
    for layer, f in curv.factors.items():
        w = pack(get_layer(tree, layer))
        total = total + jnp.sum((f[0] @ w @ f[1]) * w).astype(dt)
    rest = jnp.asarray(tu.tree_norm(tu.tree_cast(_outside(curv, tree), dt), squared=True), dt)
    return total + curv.other.astype(dt) * rest


# --------------------------------------------------------------------------------------------
# damped_inverse
# --------------------------------------------------------------------------------------------

def _spd_inverse(m: Array) -> Array:
    """Inverse of a symmetric positive definite matrix through its eigendecomposition."""
    m = 0.5 * (m + m.T)
    w, u = eigh(m)
    return (u / w) @ u.T


def _damped_factors(a: Array, g: Array, strength: Array, damping: Array) -> tuple[Array, Array]:
    """(√s A + π√d I)⁻¹ and (√s G + √d/π I)⁻¹ with Martens & Grosse's π (:func:`damped_inverse`)."""
    dt = a.dtype
    n, m = a.shape[0], g.shape[0]
    tiny = jnp.finfo(dt).tiny
    pi = jnp.sqrt((jnp.trace(a) / n + tiny) / (jnp.trace(g) / m + tiny))
    rs, rd = jnp.sqrt(strength.astype(dt)), jnp.sqrt(damping.astype(dt))
    a_d = rs * a + (pi * rd) * jnp.eye(n, dtype=dt)
    g_d = rs * g + (rd / pi) * jnp.eye(m, dtype=dt)
    return _spd_inverse(a_d), _spd_inverse(g_d)


def damped_inverse(curv: Curvature, *, strength: float | Array,
                   damping: float | Array) -> Curvature:
    """(s·C + d·I)⁻¹ in the same structure (formed once, e.g. at a task boundary).

    * Diagonal: exactly, 1 / (sΩ + d).
    * KroneckerFactored: per layer the factored Tikhonov damping of Martens & Grosse (2015,
      §6.3), s·A⊗G + dI ≈ (√s A + π√d I) ⊗ (√s G + (√d/π) I) with
      π = √[(tr A / dim A) / (tr G / dim G)], inverted factor by factor (two eigendecompositions
      per layer): the result's factors are (√s A + π√d I)⁻¹ and (√s G + √d/π I)⁻¹. It adds
      √(sd)(π A⊗I + I⊗G/π) to the exact sC + dI, i.e. slightly more damping. Outside the
      layers: other ← 1 / (s·other + d) (1/d for a K-FAC curvature, whose other is 0).

    Args:
      strength: s ≥ 0 (scalar; may be traced, e.g. a vmapped axis).
      damping: d > 0 (scalar; d = 0 would give directions without curvature an infinite step).
    """
    _check_curvature(curv, "curvature")
    check_nonnegative(strength, name="strength", scalar=True)
    check_positive(damping, name="damping", scalar=True)
    dt = default_float_dtype()
    s_, d_ = jnp.asarray(strength, dt), jnp.asarray(damping, dt)
    if isinstance(curv, Diagonal):
        return Diagonal(jax.tree.map(
            lambda o: 1.0 / (s_.astype(o.dtype) * o + d_.astype(o.dtype)), curv.values))
    factors = {name: KFACFactors(*_damped_factors(f[0], f[1], s_, d_))
               for name, f in curv.factors.items()}
    o = curv.other
    return KroneckerFactored(factors, 1.0 / (s_.astype(o.dtype) * o + d_.astype(o.dtype)))


__all__ = ["Diagonal", "KroneckerFactored", "Curvature", "Kind", "CombineMode", "KINDS",
           "COMBINE_MODES", "diagonal", "kronecker_factored", "zeros", "identity",
           "nearest_kronecker_sum", "combine", "matvec", "matvec_sum", "quadratic_form",
           "damped_inverse"]
