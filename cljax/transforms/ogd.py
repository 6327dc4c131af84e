"""Orthogonal Gradient Descent (OGD; Farajtabar, Azizan, Mott & Li 2020, AISTATS) as a transform.

OGD removes from every new gradient its component in the span of stored directions, the
gradients of the model's ground-truth logit at examples of the past tasks (OGD-GTL, their best
variant): g̃ = g − Π g with Π the orthogonal projector onto span{∇θ f_{y_i}(x_i)} (their eq. 4–5,
which build Π from a Gram–Schmidt basis of the stored gradients).

How the span is stored (ours; the span and Π are the paper's). A dense store costs capacity ×
params floats and two passes over all of them per step: 2,000 × 89,610 floats (717 MB) on GPM's
MNIST network, so a step is bound by memory bandwidth (≈ 250× plain SGD's at batch 10). But an
example's gradient in a Dense layer called once per example is the outer product a_i ⊗ δ_i of
the layer's input row (a 1 appended for the bias, ``W̄ = [W; b]`` as in :mod:`cljax.layers`) and
its output cotangent. Such *factored* layers keep those two vectors (``[capacity, rows]`` and
``[capacity, out]``: 75× fewer floats on that network); every other leaf (convolutions, norms,
embeddings) is kept densely, ``[capacity, *shape]``. With the raw directions G (one column per
stored example) the state keeps M = K⁺, the pseudo-inverse of their Gram matrix K = GᵀG, so
Π g = G M Gᵀ g: per factored layer, Gᵀg is one ``[capacity, rows] @ [rows, out]`` product and Gc
its transpose. Eigenvalues of K below ``tol`` × the largest (directions already in the span to
the working precision: Gram–Schmidt's dropped residuals) are left out of M; ``rank`` counts the
rest.
The store is filled in blocks of ``block`` directions (OGD's examples per task) and a step only
reads the filled blocks.

Deferred update (ours, exact under plain SGD). Even factored, a projected step writes G coef
into every Dense weight gradient: stored·rows·out multiply-adds. Under SGD the step can instead
keep θ = params + G_f a, with the factored layers' share of G coef accumulated in coefficients a
(``[capacity]``): the model computes with θ through :func:`ogd_weight_offsets`
(``cljax.layers`` weight offsets, B·stored·(rows + out) per call), the offsets' VJP yields the
factored Gᵀg as a's cotangent, and :func:`ogd_fold` writes G_f a into the weights when the store
changes (:func:`ogd_deferred_value_and_grad`).

Fixed shapes: capacity, block and the factored layers are set at :func:`init_ogd`, so nothing
recompiles as the store fills. When the store is full, further directions are dropped and counted
in ``dropped``; a concrete (eager) call raises instead. Size the capacity to the stream
(:func:`cljax.methods.ogd` does: examples per task × tasks) and it is never exhausted.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.layers import (
    capture,
    get_layer,
    leaf_paths,
    pack,
    param_layers,
    unpack,
    with_weight_offsets,
)
from cljax.transforms.common import stateless_with_extra_args
from cljax.types import Array, Params
from cljax.validation import (
    check_batch,
    check_finite,
    check_float_leaves,
    check_in_unit_interval,
    check_labels_in_range,
    check_positive,
    check_positive_int,
    check_same_structure,
    is_concrete,
)


class OGDState(NamedTuple):
    """OGD's store: ``blocks`` × ``block`` directions (capacity = their product), the first
    ``size`` filled. ``rows`` / ``cotangents``: {factored layer: ``[blocks, block, rows]`` /
    ``[blocks, block, out]``}; ``dense``: {leaf path: ``[blocks, block, *shape]``} for every
    other leaf of the params; ``pinv``: M = (GᵀG)⁺, ``[capacity, capacity]``; ``size``,
    ``rank`` (of the stored span) and ``dropped`` (directions that found the store full)."""

    rows: dict[str, Array]
    cotangents: dict[str, Array]
    dense: dict[str, Array]
    pinv: Array
    size: Array
    rank: Array
    dropped: Array


class OGDDirections(NamedTuple):
    """``n`` directions in the store's layout: ``rows`` {layer: ``[n, rows]``}, ``cotangents``
    {layer: ``[n, out]``} (direction i is ``rows[i] ⊗ cotangents[i]`` in that layer's ``W̄``) and
    ``dense`` {leaf path: ``[n, *shape]``} (:func:`ground_truth_gradients` makes them)."""

    rows: dict[str, Array]
    cotangents: dict[str, Array]
    dense: dict[str, Array]


def factorable_layers(params: Params) -> list[str]:
    """The layers of ``params`` with an ``[in, out]`` kernel (flax ``Dense``): those OGD can store
    as per-example rows ⊗ cotangents."""
    return [n for n in param_layers(params) if jnp.ndim(get_layer(params, n)["kernel"]) == 2]


def init_ogd(params: Params, *, capacity: int, block: int | None = None,
             factored_layers: Sequence[str] | None = None) -> OGDState:
    """An empty store for ``capacity`` directions of ``params``' shape, filled and read ``block``
    (default ``capacity``) at a time; ``capacity`` must be a multiple of ``block``.
    ``factored_layers`` (default: every ``[in, out]``-kernel layer,
    :func:`factorable_layers`; ``()`` keeps everything dense, the paper's layout) are stored
    as rows ⊗ cotangents."""
    check_float_leaves(params, name="params")
    check_positive_int(capacity, name="capacity")
    block = capacity if block is None else block
    check_positive_int(block, name="block")
    if capacity % block:
        raise ValueError(f"capacity ({capacity}) must be a multiple of block ({block})")
    layers = param_layers(params)
    names = factorable_layers(params) if factored_layers is None else list(factored_layers)
    bad = [n for n in names if n not in layers or jnp.ndim(get_layer(params, n)["kernel"]) != 2]
    if bad:
        raise ValueError(f"factored_layers {bad} are not layers of params with an [in, out] "
                         f"kernel; those are {factorable_layers(params)}")
    factored_leaves = {f"{n}/{k}" for n in names for k in ("kernel", "bias")}
    lead = (capacity // block, block)
    dtype = lambda n: get_layer(params, n)["kernel"].dtype
    dense = {p: jnp.zeros(lead + jnp.shape(x), jnp.asarray(x).dtype)
             for p, x in leaf_paths(params).items() if p not in factored_leaves}
    if not names and not dense:
        raise ValueError("params has no leaves to store")
    z = jnp.zeros((), jnp.int32)
    ct = jnp.promote_types(jnp.result_type(*jax.tree.leaves(params)), jnp.float32)
    return OGDState({n: jnp.zeros(lead + (layers[n].rows,), dtype(n)) for n in names},
                    {n: jnp.zeros(lead + (layers[n].out,), dtype(n)) for n in names}, dense,
                    jnp.zeros((capacity, capacity), ct), z, z, z)


def _lead(state: OGDState) -> tuple[int, int]:
    shape = next(iter({**state.rows, **state.dense}.values())).shape
    return shape[0], shape[1]


def _check_state(state: Any, fn: str) -> None:
    if not isinstance(state, OGDState):
        raise TypeError(f"{fn}: the state must be an OGDState (init_ogd(params, capacity=...)); "
                        f"got {type(state).__name__}")


def _as(ct: Any, x: Array) -> Array:
    return x.astype(ct)


def ogd_consolidate(state: OGDState, directions: OGDDirections, *, tol: float = 1e-5) -> OGDState:
    """Append ``directions`` (:class:`OGDDirections` in the store's layout) and refresh the
    pseudo-inverse M of the stored directions' Gram matrix; its eigenvalues below ``tol`` × the
    largest (directions already in the span) are left out."""
    _check_state(state, "ogd_consolidate")
    if not isinstance(directions, OGDDirections):
        raise TypeError(f"directions must be OGDDirections (from ground_truth_gradients, or "
                        f"OGDDirections(rows, cotangents, dense) in the store's layout); got "
                        f"{type(directions).__name__}")
    check_in_unit_interval(tol, name="tol", scalar=True)
    blocks, block = _lead(state)
    capacity, ct = blocks * block, state.pinv.dtype
    n = None
    for field in ("rows", "cotangents", "dense"):
        got, have = getattr(directions, field), getattr(state, field)
        if not isinstance(got, Mapping) or sorted(got) != sorted(have):
            raise ValueError(f"directions.{field} must be a dict naming {sorted(have)} (the "
                             f"store's layout); got "
                             f"{sorted(got) if isinstance(got, Mapping) else type(got).__name__}")
        for key, x in got.items():
            n = jnp.shape(x)[0] if n is None and jnp.ndim(x) else n
            if jnp.shape(x) != (n,) + have[key].shape[2:]:
                raise ValueError(f"directions.{field}[{key!r}] must have shape "
                                 f"{(n,) + have[key].shape[2:]}; got {jnp.shape(x)}")
    check_finite(directions, name="directions")
    assert n is not None                       # the store has leaves (init_ogd), each checked
    if n > capacity or (is_concrete(state.size) and int(state.size) + n > capacity):
        held = int(state.size) if is_concrete(state.size) else "?"
        raise ValueError(f"the OGD store holds {held} of {capacity} directions; {n} more do not "
                         f"fit: create it with a larger capacity")
    fits = state.size + n <= capacity
    start = jnp.minimum(state.size, capacity - n)

    def write(store: dict[str, Array], new: dict[str, Array]) -> dict[str, Array]:
        out = {}
        for k, v in store.items():
            flat = v.reshape((capacity,) + v.shape[2:])
            upd = jax.lax.dynamic_update_slice_in_dim(flat, new[k].astype(v.dtype), start, 0)
            out[k] = jnp.where(fits, upd, flat).reshape(v.shape)
        return out

    rows, cots = write(state.rows, directions.rows), write(state.cotangents, directions.cotangents)
    dense = write(state.dense, directions.dense)
    size = jnp.where(fits, state.size + n, state.size)
    flat = lambda d: {k: v.reshape((capacity,) + v.shape[2:]) for k, v in d.items()}
    fr, fc, fd = flat(rows), flat(cots), flat(dense)
    k = sum((_as(ct, fr[m]) @ _as(ct, fr[m]).T) * (_as(ct, fc[m]) @ _as(ct, fc[m]).T) for m in fr)
    for x in fd.values():
        x = _as(ct, x).reshape(capacity, -1)
        k = k + x @ x.T
    filled = jnp.arange(capacity) < size
    k = jnp.where(filled[:, None] & filled[None, :], k, 0.0)
    lam, vec = jnp.linalg.eigh(0.5 * (k + k.T))
    keep = lam > tol * jnp.maximum(jnp.max(lam), jnp.finfo(ct).tiny)
    pinv = (vec * jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)) @ vec.T
    return OGDState(rows, cots, dense, pinv, size, jnp.sum(keep).astype(jnp.int32),
                    state.dropped + jnp.where(fits, 0, n).astype(jnp.int32))


def _check_updates(updates: Params, state: OGDState, name: str) -> dict[str, Array]:
    leaves = leaf_paths(updates)
    factored = {f"{n}/{k}" for n in state.rows for k in ("kernel", "bias")}
    if set(leaves) != set(state.dense) | (factored & set(leaves)) or \
            not all(f"{n}/kernel" in leaves for n in state.rows):
        raise ValueError(f"{name} must have the structure of the params the OGD store was made "
                         f"for; its leaves are {sorted(leaves)}, the store's "
                         f"{sorted(set(state.dense) | factored)}")
    return leaves


def _used_blocks(state: OGDState) -> Array:
    blocks, block = _lead(state)
    return jnp.minimum((state.size + block - 1) // block, blocks)


def _at(x: Array, b: Array, ct: Any) -> Array:
    return jax.lax.dynamic_index_in_dim(x, b, 0, keepdims=False).astype(ct)


def _stored_dots(state: OGDState, wbar: Mapping[str, Array], dense: Mapping[str, Array],
                 factors: Mapping[str, tuple[Array, Array]], factored: bool = True) -> Array:
    """Gᵀg: ``[capacity]``, zero past the filled blocks. Factored layers in ``factors``
    (the rows ``[R, rows]`` and output cotangents ``[R, out]`` whose Σ rows ⊗ cot is the gradient)
    use Σ_r (R_s x_r)(C_s δ_r); the others their ``W̄`` gradient in ``wbar``. With ``factored``
    False, only the densely stored leaves' part."""
    blocks, block = _lead(state)
    ct = state.pinv.dtype

    def body(b, acc):
        d = jnp.zeros(block, ct)
        for n in (state.rows if factored else ()):
            r, c = _at(state.rows[n], b, ct), _at(state.cotangents[n], b, ct)
            if n in factors:
                x, delta = factors[n]
                d = d + jnp.sum((r @ x.T) * (c @ delta.T), axis=1)
            else:
                d = d + jnp.sum((r @ wbar[n]) * c, axis=1)
        for p, x in state.dense.items():
            d = d + _at(x, b, ct).reshape(block, -1) @ dense[p].reshape(-1)
        return jax.lax.dynamic_update_slice_in_dim(acc, d, b * block, 0)

    return jax.lax.fori_loop(0, _used_blocks(state), body, jnp.zeros(blocks * block, ct))


def _coefficients(state: OGDState, dots: Array) -> Array:
    """M Gᵀg, reading only M's filled row blocks (M is zero past them)."""
    blocks, block = _lead(state)

    def body(b, acc):
        rows = jax.lax.dynamic_slice_in_dim(state.pinv, b * block, block, 0)
        return jax.lax.dynamic_update_slice_in_dim(acc, rows @ dots, b * block, 0)

    return jax.lax.fori_loop(0, _used_blocks(state), body, jnp.zeros_like(dots))


def _subtract(updates: Params, leaves: Mapping[str, Array], state: OGDState,
              wbar: Mapping[str, Array], dense: Mapping[str, Array], coef: Array,
              factored: bool = True, densely_stored: bool = True) -> Params:
    """``updates`` − G coef, over the filled blocks, in the factored layers (``wbar``) and / or
    the densely stored leaves (``dense``); the other part is left as it is."""
    block, ct = _lead(state)[1], state.pinv.dtype
    layers = list(state.rows) if factored else []
    paths = list(state.dense) if densely_stored else []

    def body(b, acc):
        c = jax.lax.dynamic_slice_in_dim(coef, b * block, block)
        w = {n: acc[0][n] + _at(state.rows[n], b, ct).T
             @ (c[:, None] * _at(state.cotangents[n], b, ct)) for n in layers}
        d = {p: acc[1][p] + jnp.tensordot(c, _at(state.dense[p], b, ct), axes=1) for p in paths}
        return w, d

    w_sub, d_sub = jax.lax.fori_loop(
        0, _used_blocks(state), body, ({n: jnp.zeros_like(wbar[n]) for n in layers},
                                       {p: jnp.zeros_like(dense[p]) for p in paths}))
    out = {p: (dense[p] - d_sub[p]).astype(leaves[p].dtype) if p in d_sub else leaves[p]
           for p in leaves}
    for n in layers:
        for key, v in unpack(wbar[n] - w_sub[n], get_layer(updates, n)).items():
            out[f"{n}/{key}"] = v
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(updates),
                                        [out[p] for p in leaves])


def ogd_project(updates: Params, state: OGDState) -> Params:
    """g − Π g = g − G M Gᵀ g, reading only the filled blocks of the store."""
    _check_state(state, "ogd_project")
    leaves = _check_updates(updates, state, "updates")
    ct = state.pinv.dtype
    wbar = {n: _as(ct, pack(get_layer(updates, n))) for n in state.rows}
    dense = {p: _as(ct, leaves[p]) for p in state.dense}
    coef = _coefficients(state, _stored_dots(state, wbar, dense, {}))
    return _subtract(updates, leaves, state, wbar, dense, coef)


def ogd_value_and_grad(fun: Callable[..., Any], ogd_state: OGDState, params: Params, *args: Any,
                       has_aux: bool = False) -> tuple[Any, Params]:
    """``fun(params, *args)`` and its OGD-projected gradient (= ``ogd_project`` of
    ``jax.grad(fun)`` to rounding), with Gᵀg of each factored layer formed from the batch's rows
    and output cotangents, Σ_r (R_s x_r)(C_s δ_r), captured in the same forward and backward pass
    (capacity·R·(rows + out) multiply-adds instead of capacity·rows·out; R = batch × positions).
    Feed the result to the base optimizer directly (not through :func:`ogd_projection`).
    Requirement: a factored layer's kernel and bias are used only through its recognised calls
    (a layer that ``fun`` never calls recognisably falls back to its gradient)."""
    _check_state(ogd_state, "ogd_value_and_grad")
    if not callable(fun):
        raise TypeError(f"fun must be a callable loss(params, *args); got {type(fun).__name__}")
    cap = capture(fun, params, *args, layers=list(ogd_state.rows), argnums=(0,), has_aux=has_aux)
    loss = cap.output
    if jnp.shape(loss) != () or not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
        raise ValueError(f"fun must return a float scalar loss{' (and aux)' if has_aux else ''}; "
                         f"got shape {jnp.shape(loss)}, dtype {jnp.result_type(loss)}")
    cots, (grads,) = cap.vjp(jnp.ones_like(loss))
    leaves = _check_updates(grads, ogd_state, "params")
    ct = ogd_state.pinv.dtype
    flat = lambda xs: jnp.concatenate(
        [_as(ct, x).reshape(-1, x.shape[-1]) for x in xs])
    factors = {n: (flat(cap.rows[n]), flat(cots[n])) for n in ogd_state.rows if n in cap.rows}
    wbar = {n: _as(ct, pack(get_layer(grads, n))) for n in ogd_state.rows}
    dense = {p: _as(ct, leaves[p]) for p in ogd_state.dense}
    coef = _coefficients(ogd_state, _stored_dots(ogd_state, wbar, dense, factors))
    value = (loss, cap.aux) if has_aux else loss
    return value, _subtract(grads, leaves, ogd_state, wbar, dense, coef)


# --------------------------------------------------------------------------------------------
# The deferred update: plain SGD without forming the projection in the dense weights.
# --------------------------------------------------------------------------------------------

def _low_rank(state: OGDState, name: str) -> Callable[[Array, Array], Array]:
    """``f(rows, a) = rows @ ΔW̄`` for ``ΔW̄ = Σ_j a_j r_j ⊗ c_j`` over layer ``name``'s filled
    blocks, never formed: per block P = rows R_bᵀ, then (P ⊙ a_b) C_b. Its VJP (custom: the
    loop's trip count is dynamic) reuses P: for the output cotangent δ, Q = δ C_bᵀ gives the
    rows' cotangent (Q ⊙ a_b) R_b and a's, Σ_r P ⊙ Q = Σ_r (r_j·x_r)(c_j·δ_r) — the stored
    directions' dot products with this layer's gradient, Gᵀg, at no extra pass."""
    blocks, block = _lead(state)
    ct = state.pinv.dtype
    r_store, c_store, used = state.rows[name], state.cotangents[name], _used_blocks(state)

    def forward(x: Array, a: Array) -> tuple[Array, Array]:
        def body(b, acc):
            out, p_all = acc
            p = x @ _at(r_store, b, ct).T
            a_b = jax.lax.dynamic_slice_in_dim(a, b * block, block)
            return (out + (p * a_b) @ _at(c_store, b, ct),
                    jax.lax.dynamic_update_slice_in_dim(p_all, p, b * block, 1))
        init = (jnp.zeros(x.shape[:1] + c_store.shape[-1:], ct),
                jnp.zeros((x.shape[0], blocks * block), ct))
        return jax.lax.fori_loop(0, used, body, init)

    @jax.custom_vjp
    def f(rows: Array, a: Array) -> Array:
        x = rows.reshape(-1, rows.shape[-1]).astype(ct)
        out, _ = forward(x, a.astype(ct))
        return out.reshape(rows.shape[:-1] + (-1,)).astype(rows.dtype)

    def fwd(rows, a):
        x = rows.reshape(-1, rows.shape[-1]).astype(ct)
        out, p_all = forward(x, a.astype(ct))
        return out.reshape(rows.shape[:-1] + (-1,)).astype(rows.dtype), (p_all, a)

    def bwd(res, g):
        p_all, a = res
        delta = g.reshape(-1, g.shape[-1]).astype(ct)

        def body(b, acc):
            dx, da = acc
            q = delta @ _at(c_store, b, ct).T
            a_b = jax.lax.dynamic_slice_in_dim(a, b * block, block).astype(ct)
            p = jax.lax.dynamic_slice_in_dim(p_all, b * block, block, 1)
            return (dx + (q * a_b) @ _at(r_store, b, ct),
                    jax.lax.dynamic_update_slice_in_dim(da, jnp.sum(p * q, axis=0), b * block, 0))
        dx, da = jax.lax.fori_loop(0, used, body, (jnp.zeros((delta.shape[0],) + r_store.shape[-1:],
                                                             ct), jnp.zeros(blocks * block, ct)))
        return (dx.reshape(g.shape[:-1] + r_store.shape[-1:]).astype(g.dtype), da.astype(a.dtype))

    f.defvjp(fwd, bwd)
    return f


def _check_coefficients(coefficients: Any, state: OGDState) -> Array:
    capacity = state.pinv.shape[0]
    if jnp.shape(coefficients) != (capacity,) or \
            not jnp.issubdtype(jnp.result_type(coefficients), jnp.floating):
        raise ValueError(f"coefficients must be a float [{capacity}] array (one per stored "
                         f"direction: jnp.zeros({capacity})); got shape "
                         f"{jnp.shape(coefficients)}, dtype {jnp.result_type(coefficients)}")
    return jnp.asarray(coefficients)


def ogd_weight_offsets(state: OGDState, coefficients: Array) -> dict[str, Callable[[Array], Array]]:
    """The deferred part of the weights, ``ΔW̄ = Σ_j a_j r_j ⊗ c_j`` per factored layer, as
    :func:`cljax.layers.intercept_layer_calls` ``weight_offsets`` (the model then computes with
    the weights :func:`ogd_fold` would give, at B·stored·(rows + out) multiply-adds per call)."""
    _check_state(state, "ogd_weight_offsets")
    return _bind({n: _low_rank(state, n) for n in state.rows},
                 _check_coefficients(coefficients, state))


def _bind(low_rank: Mapping[str, Callable[[Array, Array], Array]],
          a: Array) -> dict[str, Callable[[Array], Array]]:
    """``{layer: rows ↦ f(rows, a)}``: the :func:`_low_rank` offsets at coefficients ``a``."""
    return {n: functools.partial(_call_at, f, a) for n, f in low_rank.items()}


def _call_at(f: Callable[[Array, Array], Array], a: Array, rows: Array) -> Array:
    return f(rows, a)


def ogd_fold(params: Params, state: OGDState, coefficients: Array) -> Params:
    """``params`` + G_f a: the deferred update written into the weights, each factored layer's
    ``W̄`` gaining Σ_j a_j r_j ⊗ c_j (the part :func:`ogd_weight_offsets` adds; densely stored
    leaves are projected at each step, never deferred, and are left as they are)."""
    _check_state(state, "ogd_fold")
    a = _check_coefficients(coefficients, state)
    leaves = _check_updates(params, state, "params")
    ct = state.pinv.dtype
    wbar = {n: _as(ct, pack(get_layer(params, n))) for n in state.rows}
    dense = {p: _as(ct, leaves[p]) for p in state.dense}
    return _subtract(params, leaves, state, wbar, dense, -a.astype(ct), densely_stored=False)


def ogd_deferred_value_and_grad(fun: Callable[..., Any], ogd_state: OGDState,
                                coefficients: Array, params: Params, *args: Any,
                                has_aux: bool = False) -> tuple[Any, Params, Array]:
    """OGD's step with the projection of the factored layers *deferred* (ours, exact for SGD).

    The weights are θ = ``params`` + G_f a (``a`` = ``coefficients``, G_f the factored layers'
    part of the stored directions; :func:`ogd_fold` forms it). Returns ``fun(θ, *args)``, its
    gradient g with the densely stored leaves already projected, and ``coef`` = M Gᵀg, so that
    OGD's projected gradient is g − G_f coef. A plain SGD step with learning rate η is then exactly
    ``params ← params − η·grads`` and ``a ← a + η·coef``: θ moves by −η(g − Π g) without the
    stored·rows·out multiply-adds of writing G coef into the dense weights; the forward and
    backward passes see θ through :func:`ogd_weight_offsets`. Fold (``params ← ogd_fold(...)``,
    ``a ← 0``) before the store changes (at each task boundary). Only a base update that is a
    multiple of its gradient (SGD, any learning-rate schedule) keeps it OGD: momentum, Adam or
    weight decay would treat ``params`` and ``a`` differently (:func:`update_scale` checks)."""
    _check_state(ogd_state, "ogd_deferred_value_and_grad")
    if not callable(fun):
        raise TypeError(f"fun must be a callable loss(params, *args); got {type(fun).__name__}")
    a = _check_coefficients(coefficients, ogd_state)
    low_rank = {n: _low_rank(ogd_state, n) for n in ogd_state.rows}

    def at_theta(p: Params, c: Array) -> Any:
        return with_weight_offsets(fun, p, *args, weight_offsets=_bind(low_rank, c))

    value, (grads, factored_dots) = jax.value_and_grad(at_theta, argnums=(0, 1),
                                                       has_aux=has_aux)(params, a)
    leaves = _check_updates(grads, ogd_state, "params")
    ct = ogd_state.pinv.dtype
    dense = {p: _as(ct, leaves[p]) for p in ogd_state.dense}
    dots = factored_dots.astype(ct) + _stored_dots(ogd_state, {}, dense, {}, factored=False)
    coef = _coefficients(ogd_state, dots)
    return value, _subtract(grads, leaves, ogd_state, {}, dense, coef, factored=False), coef


def update_scale(grads: Params, updates: Params, *, rtol: float = 1e-4) -> tuple[Array, Array]:
    """``(s, ok)``: the least-squares s with ``updates`` ≈ s·``grads`` and whether
    ‖updates − s·grads‖ ≤ rtol·‖updates‖ (a step of SGD: s = −η; s = 0 for a zero gradient).
    The deferred update reads η from each step's update this way (schedules included)."""
    check_same_structure(updates, grads, name="updates", reference_name="grads")
    check_positive(rtol, name="rtol", scalar=True)
    tu = optax.tree_utils
    g, u = tu.tree_cast(grads, jnp.float32), tu.tree_cast(updates, jnp.float32)
    gg = tu.tree_vdot(g, g)
    s = jnp.where(gg > 0, tu.tree_vdot(u, g) / jnp.where(gg > 0, gg, 1.0), 0.0)
    res = tu.tree_norm(tu.tree_add_scale(u, -s, g), squared=True)
    return s, res <= rtol ** 2 * tu.tree_vdot(u, u)


def ground_truth_gradients(logits_fn: Callable[[Params, Any], Array], params: Params,
                           batch: Mapping[str, Array], state: OGDState) -> OGDDirections:
    """OGD-GTL's directions ∇θ f_{y_i}(x_i), the gradient of example i's ground-truth logit, for
    every example of ``batch`` (``x`` and int labels ``y``), in the layout of ``state``.

    The factored layers' rows and cotangents come from one forward pass
    (:func:`cljax.layers.capture`, cotangent seed one_hot(y)), so ``logits_fn`` must treat the
    examples independently (evaluation mode) and call each factored layer once, on an
    ``[B, in]`` input; the dense leaves are per-example gradients (``vmap`` of ``grad``)."""
    _check_state(state, "ground_truth_gradients")
    if not callable(logits_fn):
        raise TypeError(f"logits_fn must be a callable logits_fn(params, batch) -> [B, classes]; "
                        f"got {type(logits_fn).__name__}")
    check_batch(batch)
    y = jnp.asarray(batch["y"])
    if y.shape[0] == 0:
        raise ValueError("batch must hold at least one example (its x and y have 0 rows): OGD "
                         "stores one direction per example")
    names = list(state.rows)
    cap = capture(logits_fn, params, batch, layers=names)
    logits = cap.output
    if jnp.ndim(logits) != 2 or jnp.shape(logits)[0] != y.shape[0]:
        raise ValueError(f"logits_fn must return [B, classes] logits for the batch's "
                         f"{y.shape[0]} examples; got {jnp.shape(logits)}")
    check_labels_in_range(y, logits.shape[1])
    cots = cap.cotangents(jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype))
    rows, cotangents = {}, {}
    for n in names:
        calls = cap.rows.get(n, [])
        if len(calls) != 1 or calls[0].shape[1] != 1:
            what = (f"{len(calls)} calls" if len(calls) != 1 else
                    f"one call with {calls[0].shape[1]} positions per example")
            raise ValueError(f"OGD stores layer {n!r} as per-example rows ⊗ cotangents, which "
                             f"needs one call per example on an [B, in] input; logits_fn made "
                             f"{what}: leave it out of init_ogd(..., factored_layers=...)")
        rows[n], cotangents[n] = calls[0][:, 0], cots[n][0][:, 0]
    dense = {}
    if state.dense:
        def true_logit(p, example):
            one = jax.tree.map(lambda x: x[None], example)
            return logits_fn(p, one)[0, example["y"]]

        grads = leaf_paths(jax.vmap(jax.grad(true_logit), in_axes=(None, 0))(params, dict(batch)))
        dense = {p: grads[p] for p in state.dense}
    return OGDDirections(rows, cotangents, dense)


def ogd_projection() -> optax.GradientTransformationExtraArgs:
    """OGD's projection against the store given as ``ogd_state=`` (first in the chain; the paper
    steps with plain SGD)."""
    return stateless_with_extra_args(
        lambda updates, params, *, ogd_state: ogd_project(updates, ogd_state),
        name="ogd_projection", required={"ogd_state": OGDState})


__all__ = ["OGDState", "OGDDirections", "init_ogd", "factorable_layers",
           "ogd_consolidate", "ogd_project", "ogd_value_and_grad", "ground_truth_gradients",
           "ogd_projection", "ogd_weight_offsets", "ogd_fold", "ogd_deferred_value_and_grad",
           "update_scale"]
