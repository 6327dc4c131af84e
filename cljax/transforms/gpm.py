"""Gradient Projection Memory (GPM; Saha, Garg & Roy 2021, ICLR) as an optax transform.

For every recognised layer l (:mod:`cljax.layers`: rows = the layer's inputs, im2col patches for
a conv, + 1 for a bias) GPM keeps an orthonormal basis M_l of the past tasks' input
representations and removes its span from the weight gradient (input side, their eq. 9):
∇W̄_l ← ∇W̄_l − M_l M_lᵀ ∇W̄_l, so the layer's response to past inputs is (to first order) kept.

The basis grows at each task boundary from a representation matrix R_l (``[rows, m]``: the
rows of m examples of the finished task; 300 for MNIST, 125 for CIFAR in the paper) with the
energy threshold ε_l (their eq. 5–8):

* first task: R = U Σ Vᵀ; keep the k first left singular vectors, k the smallest with
  Σ_{i<k} σ_i² ≥ ε_l ‖R‖²_F (``first_task_rank="code"``: k − 1, as their ``main_*.py``'s
  ``np.sum(np.cumsum(ratio) < ε)`` with its ``+1`` commented out);
* later tasks: the residual R̂ = R − M Mᵀ R; R̂ = Û Σ̂ V̂ᵀ; add the k first columns of Û, k the
  smallest with ‖M Mᵀ R‖²_F + Σ_{i<k} σ̂_i² ≥ ε_l ‖R‖²_F (none if the old basis already holds ε).

Fixed shapes: each basis is a ``[rows, rows]`` matrix whose first ``size`` columns are the basis
(the rest zero), so nothing recompiles as it grows. It cannot outgrow its capacity: the residual
is orthogonal to M, so at most rows − size new directions exist; the new columns are
re-orthogonalised against M once, and k is capped at rows − size (when the basis is full the
layer's gradient is zero). The singular vectors come from the eigendecomposition of R̂R̂ᵀ
(``[rows, rows]``, ``cljax._linalg.eigh``, safe under ``vmap`` on the CPU).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax

from cljax._linalg import eigh
from cljax.layers import get_layer, pack, param_layers, set_layer, unpack
from cljax.transforms.common import require_state, stateless_with_extra_args
from cljax.transforms.kfac_gradient import kfac_preconditioned_value_and_grad
from cljax.types import Array, KFACFactors, Params
from cljax.validation import check_choice, check_finite, check_in_unit_interval


class GPMState(NamedTuple):
    """GPM's per-layer bases.

    Attributes:
      bases: {layer: ``[rows, rows]``}, the first ``sizes[layer]`` columns orthonormal.
      sizes: {layer: int32}, the basis sizes.
      projectors: {layer: I − M Mᵀ}, formed at the boundary (so a step never multiplies two
        ``[rows, rows]`` matrices).
      count: int32, tasks consolidated.
    """

    bases: dict
    sizes: dict
    projectors: dict
    count: Array  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, on purpose


def init_gpm(params: Params, *, layers: Any = None) -> GPMState:
    """Empty bases for every recognised layer of ``params`` (or those named)."""
    bases, sizes, projectors = {}, {}, {}
    found = param_layers(params, layers)
    if not found:
        raise ValueError("init_gpm: params hold no dense/conv layer (a node with a 'kernel' of rank "
                         ">= 2) to project; these methods need layer structure")
    for name, shape in found.items():
        dt = get_layer(params, name)["kernel"].dtype
        bases[name] = jnp.zeros((shape.rows, shape.rows), dt)
        sizes[name] = jnp.zeros((), jnp.int32)
        projectors[name] = jnp.eye(shape.rows, dtype=dt)
    return GPMState(bases, sizes, projectors, jnp.zeros((), jnp.int32))


def grow_basis(basis: Array, size: Array, representation: Array, threshold: Array,
               rank_offset: Array | int = 0) -> tuple[Array, Array]:
    """One layer's basis update (module docstring) from ``representation`` ``[m, rows]``
    (one example's rows per row); returns ``(basis, size)``. ``rank_offset`` (0 or 1) is
    taken from the number of vectors the threshold asks for (GPM's code after its first task)."""
    n = basis.shape[0]
    r = representation.astype(basis.dtype).T                       # [rows, m]
    cols = jnp.arange(n)
    m = basis * (cols < size)[None, :]
    total = jnp.sum(r * r)
    resid = r - m @ (m.T @ r)
    kept = total - jnp.sum(resid * resid)                           # ‖M Mᵀ R‖²
    w, u = eigh(resid @ resid.T)                                    # ascending
    w, u = jnp.maximum(w[::-1], 0.0), u[:, ::-1]
    energy = kept + jnp.cumsum(w)
    enough = energy >= threshold * total
    need = jnp.where(kept >= threshold * total, 0,
                     jnp.maximum(jnp.argmax(enough) + 1 - rank_offset, 0))
    need = jnp.where(jnp.any(enough) | (kept >= threshold * total), need, n)
    k = jnp.minimum(need, n - size).astype(jnp.int32)
    u = u - m @ (m.T @ u)                                           # re-orthogonalise once
    u = u / jnp.maximum(jnp.linalg.norm(u, axis=0, keepdims=True), jnp.finfo(u.dtype).tiny)
    src = jnp.clip(cols - size, 0, n - 1)
    new = (cols >= size) & (cols < size + k)
    out = jnp.where(new[None, :], u[:, src], m)
    return out, size + k


FIRST_TASK_RANKS = ("eq5", "code")
"""How many singular vectors GPM keeps after the first task: ``"eq5"`` the paper's eq. 5 (the
smallest k reaching ε), ``"code"`` one fewer, as their released code (the ``+1`` of
``np.sum(np.cumsum(ratio) < ε)`` commented out in ``main_pmnist.py`` and ``main_cifar100.py``)."""


def gpm_consolidate(state: GPMState, representations: Mapping[str, Array],
                    thresholds: Mapping[str, Any] | Any, *,
                    first_task_rank: str = "eq5") -> GPMState:
    """Task boundary: grow every layer's basis from its representation matrix.

    Args:
      state: the :class:`GPMState` so far.
      representations: {layer: ``[m, rows]``}, the rows of m examples of the finished task
        (:func:`cljax.layers.capture_rows` of a forward pass; a conv contributes every
        position of every example).
      thresholds: ε ∈ (0, 1], one for all layers or {layer: ε}.
      first_task_rank: :data:`FIRST_TASK_RANKS`; applies while no task is consolidated.
    """
    if not isinstance(state, GPMState):
        raise TypeError(f"state must be a GPMState (init_gpm(params)); got {type(state).__name__}")
    missing = [k for k in state.bases if k not in representations]
    if missing:
        raise ValueError(f"representations lacks layers {missing}; got {sorted(representations)}")
    if isinstance(thresholds, Mapping):
        missing = [k for k in state.bases if k not in thresholds]
        if missing:
            raise ValueError(f"thresholds lacks layers {missing}: give one threshold for every "
                             f"layer of the state {sorted(state.bases)} (or one number for all); "
                             f"got {sorted(thresholds)}")
    check_choice(first_task_rank, FIRST_TASK_RANKS, name="first_task_rank")
    check_finite(representations, name="representations")
    offset = jnp.where(state.count == 0, 1, 0) if first_task_rank == "code" else 0
    bases, sizes, projectors = {}, {}, {}
    for name, basis in state.bases.items():
        eps = thresholds[name] if isinstance(thresholds, Mapping) else thresholds
        check_in_unit_interval(eps, name=f"thresholds[{name!r}]", scalar=True)
        rep = jnp.asarray(representations[name])
        if rep.ndim != 2 or rep.shape[1] != basis.shape[0]:
            raise ValueError(f"representations[{name!r}] must have shape [m, {basis.shape[0]}]; "
                             f"got {rep.shape}")
        bases[name], sizes[name] = grow_basis(basis, state.sizes[name], rep,
                                              jnp.asarray(eps, basis.dtype), offset)
        m = bases[name]
        projectors[name] = jnp.eye(m.shape[0], dtype=m.dtype) - m @ m.T
    return GPMState(bases, sizes, projectors, state.count + 1)


def gpm_project(updates: Params, state: GPMState) -> Params:
    """(I − M Mᵀ) ∇W̄ for every layer of ``state`` (other parameters unchanged)."""
    out = updates
    for name, proj in state.projectors.items():
        node = get_layer(updates, name)
        out = set_layer(out, name, unpack(proj @ pack(node), node))
    return out


def gpm_value_and_grad(fun: Callable[..., Any], gpm_state: GPMState, params: Params, *args: Any,
                       has_aux: bool = False) -> tuple[Any, Params]:
    """``fun(params, *args)`` and its gradient with GPM's projection (I − M Mᵀ)∇W̄ formed inside
    the backward pass (the rank-B form of :mod:`cljax.transforms.kfac_gradient` with G = I:
    B·rows² instead of rows²·out multiply-adds per layer); feed it to the base optimizer
    directly (not through :func:`gpm_projection`)."""
    require_state(gpm_state, GPMState, arg="gpm_state", fn="gpm_value_and_grad")
    shapes = param_layers(params)
    inverses = {name: KFACFactors(p, jnp.eye(shapes[name].out, dtype=p.dtype))
                for name, p in gpm_state.projectors.items()}
    return kfac_preconditioned_value_and_grad(fun, params, inverses, *args, other_scale=1.0,
                                              has_aux=has_aux)


def gpm_projection() -> optax.GradientTransformationExtraArgs:
    """GPM's projection of the updates against the bases of ``gpm_state=`` (put it first in the
    chain, before the step: plain SGD in the paper)."""
    return stateless_with_extra_args(
        lambda updates, params, *, gpm_state: gpm_project(updates, gpm_state),
        name="gpm_projection", required={"gpm_state": GPMState})


__all__ = ["GPMState", "FIRST_TASK_RANKS", "init_gpm", "grow_basis", "gpm_consolidate",
           "gpm_project", "gpm_projection", "gpm_value_and_grad"]
