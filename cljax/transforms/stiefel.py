"""Orthogonality-preserving updates on the Stiefel manifold (a Cayley retraction), as an optax
transform.

ORTHOG-SUBSPACE (Chaudhry, Khan, Dokania & Torr 2020, NeurIPS, arXiv 2010.11635) keeps the
hidden layers of its ResNet isometric, so that gradients coming from the tasks' orthogonal
feature subspaces stay orthogonal below them; it trains those layers on the Stiefel manifold
{W : WᵀW = I} with the Cayley transform of Li, Li & Todorovic 2020 ("Efficient Riemannian
optimization on the Stiefel manifold via the Cayley transform", ICLR). Their code
(arslan-chaudhry/orthog_subspace, ``model/model.py``, ``create_stiefel_ops`` with
``STIEFEL_INNP_EUC = True``), for a kernel W reshaped to ``[rows, cols]`` (``[-1, out]``:
TensorFlow's ``[in, out]`` dense and ``[k, k, in, out]`` conv layouts, flax's too) and its
gradient G:

    Â = G Wᵀ − ½ W (Wᵀ G Wᵀ),   A = Â − Âᵀ            (skew-symmetric, rows × rows)
    α = min(lr, 1 / (‖A‖₁ + 1e-8))
    Y₀ = W − α A W,   Y_{k+1} = W − α A (W + Y_k) / 2,   W ← Y₂

(two fixed-point iterations of the Cayley transform Y = W − α A (W + Y) / 2). The biases, the
batch-norm parameters and the classifier take a plain SGD step.

Here (:func:`cayley_update`) the direction comes from the base optimizer: the transform goes
LAST in the chain, ``optax.chain(optax.sgd(lr), stiefel_retraction(layers))``, and forms A from
G = −u, u the base update of the kernel (−lr·g under plain SGD), with a unit step clamped at
1 / ‖A‖₁. Under plain SGD, A = lr·A_g and the step is exactly theirs (the 1e-8 guard moves to
1e-8 / lr). By default the retraction is the **closed-form** Cayley transform,

    W ← (I + τA/2)⁻¹ (I − τA/2) W,   τ = min(1, 1 / (‖A‖₁ + 1e-8)),

computed as the update ΔW = −(I + τA/2)⁻¹ τA W (a ``rows × rows`` solve), or, when
``rows > 2·cols``, by the Sherman–Morrison–Woodbury form of Wen & Yin 2013 with A = U Vᵀ,
U = [τĜ, W], V = [W, −τĜ], Ĝ = G − ½ W WᵀG: ΔW = −U (I + ½VᵀU)⁻¹ VᵀW (a ``2cols × 2cols``
solve) — the same matrix to rounding. (I + τA/2)⁻¹(I − τA/2) is orthogonal for any skew A, so
WᵀW is kept up to rounding at every step (``rows < cols``: the kernel cannot have orthonormal
columns; the update still multiplies it on the left by an orthogonal matrix, keeping WᵀW and
WWᵀ). ``iterations=k`` runs their fixed-point iteration instead (k = 2 is their code): the
truncation leaves an error of order (τ‖A‖/2)^(k+1) per step, so orthonormality drifts.

Matrix products run at ``Precision.HIGHEST`` (an accelerator's TF32 would break the
orthonormality at 1e-3), and the solve is ``cljax._linalg.solve`` (looped under ``vmap`` on
the CPU). Cost per kernel and step: the rows × rows matrix A (their code forms it too: the clamp
needs ‖A‖₁) and one solve of min(rows, 2·cols).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax._linalg import qr, solve
from cljax.layers import leaf_paths, path_name
from cljax.transforms.common import NO_PARAMS
from cljax.types import Array, Params
from cljax.validation import check_positive_int, check_same_structure

Layers = Sequence[str] | Callable[[Params], Sequence[str]] | None

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def _as_matrix(w: Array) -> Array:
    if jnp.ndim(w) < 2:
        raise ValueError(f"a Stiefel kernel needs at least 2 dimensions ([..., in, out]); got "
                         f"shape {jnp.shape(w)}")
    return w.reshape(-1, w.shape[-1])


def skew_generator(weights: Array, direction: Array) -> Array:
    """A = Ĝ Wᵀ − W Ĝᵀ with Ĝ = G − ½ W (Wᵀ G) and G = −``direction`` (``rows × rows``, skew):
    their ``create_stiefel_ops``'s Euclidean-metric A for the gradient G (the module docstring);
    ``weights`` and ``direction`` are kernels of the same shape, reshaped to ``[-1, out]``."""
    w, g = _as_matrix(weights), -_as_matrix(direction)
    if w.shape != g.shape:
        raise ValueError(f"direction must have the kernel's shape {jnp.shape(weights)}; got "
                         f"{jnp.shape(direction)}")
    g_hat = g - 0.5 * _mm(w, _mm(w.T, g))
    a = _mm(g_hat, w.T)
    return a - a.T


def cayley_update(weights: Array, direction: Array, *, iterations: int | None = None,
                  clamp: bool = True) -> Array:
    """The update ΔW that moves the kernel ``weights`` along the base optimizer's update
    ``direction`` by the Cayley transform: W + ΔW = (I + τA/2)⁻¹(I − τA/2) W with A =
    :func:`skew_generator` and τ = min(1, 1 / (‖A‖₁ + 1e-8)) (``clamp=False``: τ = 1), or with
    ``iterations`` = k their fixed-point iteration Y_{j+1} = W − τA(W + Y_j)/2 from Y₀ = W − τAW
    (k = 2 in their code). Shape and dtype of ``weights``; see the module docstring."""
    if iterations is not None:
        check_positive_int(iterations, name="iterations")
    w = _as_matrix(weights)
    a = skew_generator(weights, direction)
    rows, cols = w.shape
    tau = jnp.ones((), w.dtype)
    if clamp:
        tau = jnp.minimum(tau, 1.0 / (jnp.max(jnp.sum(jnp.abs(a), axis=0)) + 1e-8))
    aw = _mm(a, w)
    if iterations is not None:              # in update form: Δ_{j+1} = −τA(W + Δ_j/2)
        delta = -tau * aw
        for _ in range(iterations):
            delta = -tau * (aw + 0.5 * _mm(a, delta))
    elif rows <= 2 * cols:
        delta = -tau * solve(jnp.eye(rows, dtype=w.dtype) + 0.5 * tau * a, aw)
    else:                                   # Woodbury: τA = U Vᵀ, a 2cols × 2cols solve
        g = -_as_matrix(direction)
        g_hat = tau * (g - 0.5 * _mm(w, _mm(w.T, g)))
        u = jnp.concatenate([g_hat, w], axis=1)
        v = jnp.concatenate([w, -g_hat], axis=1)
        inner = jnp.eye(2 * cols, dtype=w.dtype) + 0.5 * _mm(v.T, u)
        delta = -_mm(u, solve(inner, _mm(v.T, w)))
    return delta.reshape(jnp.shape(weights)).astype(weights.dtype)


def gram_error(weights: Array) -> Array:
    """The largest absolute entry of WᵀW − I for a kernel reshaped to ``[rows, cols]`` (of
    WWᵀ − I when rows < cols): how far it is from the Stiefel manifold (0 on it, to rounding)."""
    w = _as_matrix(weights)
    if w.shape[0] < w.shape[1]:
        w = w.T
    gram = _mm(w.T, w)
    return jnp.max(jnp.abs(gram - jnp.eye(gram.shape[0], dtype=gram.dtype)))


def orthonormalize(weights: Array, *, tol: float = 1e-5) -> Array:
    """The kernel moved onto the Stiefel manifold: the Q factor of its QR decomposition with the
    signs making diag R > 0 (Householder, ``cljax._linalg.qr``: orthonormal to rounding
    whatever W's conditioning; for a Gaussian W a uniformly random orthonormal matrix, what an
    orthogonal initialiser draws), of Wᵀ when ``rows < cols`` (orthonormal rows). A kernel
    within ``tol`` of the manifold (:func:`gram_error`: an orthogonal initialisation) is returned
    unchanged. ``weights`` must have full rank."""
    w = _as_matrix(weights)
    tall = w.shape[0] >= w.shape[1]
    q, r = qr(w if tall else w.T)
    q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)
    q = q if tall else q.T
    kept = gram_error(weights) <= tol
    return jnp.where(kept, w, q).reshape(jnp.shape(weights)).astype(weights.dtype)


def kernel_names(params: Params) -> list[str]:
    """The layers of ``params`` holding a ``kernel`` leaf of at least 2 dimensions (Dense and
    Conv layers, by their "/"-joined path: ``Dense_0``, ``BasicBlock_1/Conv_0``), in leaf
    order."""
    return [name[:-len("/kernel")] for name, leaf in leaf_paths(params).items()
            if name.endswith("/kernel") and jnp.ndim(leaf) >= 2]


def selected_kernels(params: Params, layers: Layers) -> list[str]:
    """The layers ``layers`` names (a sequence of layer names, or a callable of ``params``
    returning one; None: every :func:`kernel_names` layer), checked against ``params``."""
    known = kernel_names(params)
    if layers is None:
        return known
    chosen = layers(params) if callable(layers) else layers
    if isinstance(chosen, str) or not isinstance(chosen, Sequence):
        raise TypeError(f"layers must be a sequence of layer names (e.g. ['Dense_0']); got "
                        f"{chosen!r}")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"layers {unknown} hold no kernel of at least 2 dimensions; the "
                         f"kernels are {known}")
    return list(chosen)


def stiefel_retraction(layers: Layers = None, *, iterations: int | None = None,
                       clamp: bool = True) -> optax.GradientTransformationExtraArgs:
    """The Cayley retraction as a stateless transform for the END of a chain
    (``optax.chain(optax.sgd(lr), stiefel_retraction(layers))``): the ``kernel`` of every layer
    of ``layers`` (:func:`selected_kernels`; None: every Dense and Conv kernel) gets
    :func:`cayley_update` of the incoming update (the base optimizer's step), every other leaf
    passes through. ``update`` needs ``params`` and ignores extra arguments. The kernels must
    start on the manifold (an orthogonal initialisation, or :func:`orthonormalize`)."""
    if iterations is not None:
        check_positive_int(iterations, name="iterations")
    if not isinstance(clamp, bool):
        raise TypeError(f"clamp must be a bool; got {clamp!r}")
    if layers is not None and not callable(layers) and (
            isinstance(layers, str) or not isinstance(layers, Sequence)):
        raise TypeError(f"layers must be None, a sequence of layer names or a callable of the "
                        f"params; got {layers!r}")

    def update(updates: optax.Updates, state: optax.OptState, params: Params | None = None,
               **extra_args: Any) -> tuple[optax.Updates, optax.OptState]:
        del extra_args
        if params is None:
            raise ValueError(NO_PARAMS.format(name="stiefel_retraction"))
        check_same_structure(updates, params, name="updates")
        chosen = {f"{name}/kernel" for name in selected_kernels(params, layers)}
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        by_name = leaf_paths(params)
        out = []
        for path, u in flat:
            name = path_name(path)
            out.append(cayley_update(by_name[name], u, iterations=iterations, clamp=clamp)
                       if name in chosen else u)
        return jax.tree_util.tree_unflatten(treedef, out), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


__all__ = ["skew_generator", "cayley_update", "gram_error", "orthonormalize", "kernel_names",
           "selected_kernels", "stiefel_retraction"]
