"""K-FAC Laplace penalty (Ritter et al. 2018, "Online structured Laplace approximations for
overcoming catastrophic forgetting", NeurIPS) as an optax transform.

For every tracked layer l with flax kernel ``W: [in, out]`` (conv: ``[kh, kw, cin, out]``, rows in
the kernel's row-major order) and bias ``b: [out]``, let ``W̄ = [W; b]: [in+1, out]`` and
``ΔW̄ = W̄ − W̄*``. With the layer's ``KFACFactors(A, G)`` (layout of
:class:`cljax.types.KFACFactors`, ``A: [in+1, in+1]``, ``G: [out, out]``) the penalty is the
Laplace (Gaussian prior) term of Ritter et al. 2018 with the Kronecker-factored block-diagonal
Hessian (REFERENCES.md "KFAC-Laplace penalty")::

    (λ/2) Σ_s Σ_l tr(ΔW̄_{s,l}ᵀ A_{s,l} ΔW̄_{s,l} G_{s,l})
        = (λ/2) Σ_s Σ_l vec(ΔW̄)ᵀ (A ⊗ G) vec(ΔW̄)      (vec = row-major flatten of [in+1, out])

and :func:`kfac_penalty` adds its gradient ``λ Σ_s A_s ΔW̄_s G_s`` (per layer, split back into
kernel and bias) to the updates. Place it FIRST in the chain, before Adam, like EWC
(see :mod:`cljax.transforms.penalty`): :func:`kfac_ewc`.

**Across tasks** a sum of Kronecker products is not a Kronecker product. :func:`kfac_consolidate`
offers, with ``mode``:

* ``"online"`` (default): one (A, G) per layer; γ·A⊗G + A_t⊗G_t is replaced by its nearest
  Kronecker product in Frobenius norm (Van Loan & Pitsianis 1993; :func:`nearest_kronecker_sum`),
  exact whenever the sum is itself a Kronecker product (e.g. proportional factors). Anchor ← θ*_t.
  This is the same approximation NCL's K-FAC preconditioner uses here.
* ``"sum"``: A ← A + A_t, G ← G + G_t (the factor sum named in REFERENCES.md for Ritter et al.);
  it adds the cross terms A⊗G_t + A_t⊗G with weight 1 whatever the factors' scales, so it
  over-penalises; kept to reproduce that recipe.
* ``"multi_task"``: per-task slots (A_t, G_t, θ*_t), the exact sum of per-task penalties, like
  multi-task EWC; memory ``num_slots × (|params| + Σ_l (in+1)² + out²)``.
* ``"replace"``: keep only the last task's factors.

**Layers.** By default the state tracks every params node holding a ``kernel`` of rank ≥ 2 whose
bias (if any) has shape ``[out]`` (flax Dense, Conv); nodes are named by their "/"-joined path
("Dense_0", "Block_0/Conv_1"). Parameters outside tracked layers (e.g. LayerNorm scales,
embeddings) get ZERO penalty: K-FAC gives them no curvature. Combine with
:func:`cljax.transforms.quadratic_penalty` (a diagonal importance) if they need protection.
A factors dict naming a layer the state does not track, or with wrong shapes, raises.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.layers import check_factors, get_layer, pack, param_layers, set_layer, unpack
from cljax.transforms.common import NO_PARAMS, check_decay_for_mode, float_dtype, require_state
from cljax.types import Array, KFACFactors, Params
from cljax.validation import check_finite, check_nonnegative, check_same_structure, is_concrete

KFACMode = Literal["online", "sum", "multi_task", "replace"]


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


# --------------------------------------------------------------------------------------------
# The transform.
# --------------------------------------------------------------------------------------------

class KFACPenaltyState(NamedTuple):
    """What past tasks leave for :func:`kfac_penalty` (held by the caller, like
    :class:`cljax.transforms.QuadraticPenaltyState`).

    Attributes:
      anchors: params' structure, leaves ``[num_slots, *shape]``.
      factors: {layer name: KFACFactors(A ``[num_slots, in+1, in+1]``,
        G ``[num_slots, out, out]``)},
        zeros before the first consolidation (so the penalty is exactly zero).
      count: int32 number of consolidations.
    """

    anchors: Params
    factors: dict
    count: Array


def init_kfac_penalty(params: Params, *, num_slots: int = 1, layers: Any = None
                      ) -> KFACPenaltyState:
    """The empty K-FAC penalty for ``params``.

    Args:
      num_slots: 1, or ``max_tasks`` for ``mode="multi_task"`` consolidation.
      layers: names of the layers to track; default all dense/conv layers.
    """
    if not isinstance(num_slots, (int, np.integer)) or isinstance(num_slots, bool) or num_slots < 1:
        raise ValueError(f"num_slots must be a positive int; got {num_slots!r}")
    num_slots = int(num_slots)
    shapes = param_layers(params, layers)
    factors = {}
    for name, (n, m, _) in shapes.items():
        dt = get_layer(params, name)["kernel"].dtype
        factors[name] = KFACFactors(jnp.zeros((num_slots, n, n), dt),
                                    jnp.zeros((num_slots, m, m), dt))
    anchors = jax.tree.map(
        lambda p: jnp.array(jnp.broadcast_to(p, (num_slots,) + jnp.shape(p))), params)
    return KFACPenaltyState(anchors, factors, jnp.zeros((), jnp.int32))


def kfac_penalty(*, strength: float | Array = 1.0) -> optax.GradientTransformationExtraArgs:
    """Add ``λ Σ_s A_s ΔW̄_s G_s`` per layer: the gradient of the K-FAC Laplace penalty
    ``(λ/2) Σ_s Σ_l tr(ΔW̄ᵀ A ΔW̄ G)`` (Ritter et al. 2018; module docstring).

    Args:
      strength: λ ≥ 0 (a float or an array, e.g. traced from the run's hyperparameters).

    ``update(updates, state, params, *, kfac_penalty_state)`` requires ``params`` and the
    :class:`KFACPenaltyState` (:func:`init_kfac_penalty`); the transform's own state is empty.
    Per step and filled slot: two matmuls per layer (``[in+1]² × out`` and ``(in+1) × out²``
    multiply-adds); with ``num_slots > 1`` the products run in a loop over the ``count`` filled
    slots only, so unfilled slots add no matmuls (not benchmarked separately).
    """
    check_nonnegative(strength, name="strength", scalar=True)

    def init_fn(params: Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Params | None = None, *,
                  kfac_penalty_state: KFACPenaltyState | None = None, **extra: Any
                  ) -> tuple[Any, optax.EmptyState]:
        del extra
        if params is None:
            raise ValueError(NO_PARAMS.format(name="kfac_penalty"))
        pstate = kfac_penalty_state
        require_state(pstate, KFACPenaltyState, arg="kfac_penalty_state",
                      fn="kfac_penalty.update")
        _check_params(pstate, params)
        lam = jnp.asarray(strength, float_dtype())
        out = updates
        for name, f in pstate.factors.items():
            num_slots = f.A.shape[0]
            g_node = get_layer(updates, name)
            w = pack(get_layer(params, name))
            anchor = pack(get_layer(pstate.anchors, name), 1)
            if num_slots == 1:
                grad = f.A[0] @ (w - anchor[0]) @ f.G[0]
            else:  # only the filled slots: a loop of `count` products, not num_slots
                grad = jax.lax.fori_loop(
                    0, jnp.minimum(pstate.count, num_slots),
                    lambda i, acc, f=f, w=w, anchor=anchor: acc + f.A[i] @ (w - anchor[i]) @ f.G[i],
                    jnp.zeros_like(w))
            grad = lam.astype(grad.dtype) * grad
            add = unpack(grad, g_node)
            out = set_layer(out, name, {k: g_node[k] + add[k] for k in add})
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_params(state: KFACPenaltyState, params: Params) -> None:
    check_same_structure(params, jax.tree.map(lambda a: a[0], state.anchors), name="params",
                         reference_name="the params the state was initialised with")


def _consolidate_one(s: KFACPenaltyState, params: Params, factors: Mapping[str, KFACFactors],
                     mode: str, decay: Any) -> KFACPenaltyState:
    _check_params(s, params)
    check_factors(factors, {k: (f.A.shape[-1], f.G.shape[-1]) for k, f in s.factors.items()})
    num_slots = next(iter(s.factors.values())).A.shape[0] if s.factors else 1
    if mode in ("online", "sum", "replace") and num_slots != 1:
        raise ValueError(f"mode={mode!r} keeps one set of factors; the state has "
                         f"num_slots={num_slots} (use mode='multi_task' or num_slots=1)")
    if mode == "multi_task" and is_concrete(s.count) and int(s.count) >= num_slots:
        raise ValueError(f"multi-task consolidation: all num_slots={num_slots} slots are used; "
                         f"create the transform with a larger num_slots (= max_tasks)")
    new_f = {}
    for name, f in s.factors.items():
        if name in factors:
            a_t = jnp.asarray(factors[name][0], f.A.dtype)
            g_t = jnp.asarray(factors[name][1], f.G.dtype)
        else:  # no curvature from this task for this layer
            a_t, g_t = jnp.zeros_like(f.A[0]), jnp.zeros_like(f.G[0])
        if mode == "online":
            x, y = nearest_kronecker_sum(jnp.asarray(decay, f.A.dtype) * f.A[0], f.G[0], a_t, g_t)
            new_f[name] = KFACFactors(x[None], y[None])
        elif mode == "sum":
            new_f[name] = KFACFactors((f.A[0] + a_t)[None], (f.G[0] + g_t)[None])
        elif mode == "replace":
            new_f[name] = KFACFactors(a_t[None], g_t[None])
        else:  # multi_task; under jit an out-of-range write is dropped
            new_f[name] = KFACFactors(f.A.at[s.count].set(a_t, mode="drop"),
                                      f.G.at[s.count].set(g_t, mode="drop"))
    if mode == "multi_task":
        anchors = jax.tree.map(lambda a, p: a.at[s.count].set(jnp.asarray(p, a.dtype),
                                                               mode="drop"), s.anchors, params)
    else:
        anchors = jax.tree.map(lambda a, p: jnp.asarray(p, a.dtype)[None], s.anchors, params)
    return s._replace(anchors=anchors, factors=new_f, count=s.count + 1)


def kfac_consolidate(state: KFACPenaltyState, params: Params, factors: Mapping[str, KFACFactors],
                     *, mode: KFACMode = "online", decay: float | Array = 1.0
                     ) -> KFACPenaltyState:
    """Task boundary for :func:`kfac_penalty`; returns a new state (pure, shape-preserving).

    Args:
      state: the :class:`KFACPenaltyState` so far (:func:`init_kfac_penalty` before task 1).
      params: θ*_t (the new anchor; finite).
      factors: {layer name: KFACFactors(A_t, G_t)} of task t (mean over examples, layout of
        :class:`cljax.types.KFACFactors`, finite); tracked layers it omits get no curvature
        from task t.
      mode: ``"online"`` (nearest-Kronecker sum, default), ``"sum"``, ``"multi_task"``,
        ``"replace"``; see the module docstring.
      decay: γ ∈ (0, 1], only for ``"online"``: γ A⊗G + A_t⊗G_t.
    """
    if not isinstance(state, KFACPenaltyState):
        raise TypeError(f"state must be a KFACPenaltyState (init_kfac_penalty(params)); got "
                        f"{type(state).__name__}")
    if mode not in ("online", "sum", "multi_task", "replace"):
        raise ValueError(f"mode must be 'online', 'sum', 'multi_task' or 'replace'; got {mode!r}")
    check_decay_for_mode(decay, mode)
    check_finite(params, name="params")
    check_finite(factors, name="factors")
    return _consolidate_one(state, params, factors, mode, decay)


def kfac_penalty_loss(state: KFACPenaltyState, params: Params, *,
                      strength: float | Array = 1.0) -> Array:
    """``(λ/2) Σ_s Σ_l tr(ΔW̄ᵀ A ΔW̄ G)`` of a :class:`KFACPenaltyState` at ``params``."""
    if not isinstance(state, KFACPenaltyState):
        raise TypeError(f"state must be a KFACPenaltyState; got {type(state).__name__}")
    check_nonnegative(strength, name="strength", scalar=True)
    _check_params(state, params)
    total = jnp.zeros((), float_dtype())
    for name, f in state.factors.items():
        d = pack(get_layer(params, name))[None] - pack(get_layer(state.anchors, name), 1)
        total = total + jnp.sum((f.A @ d @ f.G) * d)
    return 0.5 * jnp.asarray(strength, total.dtype) * total


def kfac_ewc(learning_rate: optax.ScalarOrSchedule, *, strength: float | Array = 1.0,
             b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
             ) -> optax.GradientTransformationExtraArgs:
    """K-FAC Laplace penalty + Adam: ``chain(kfac_penalty(...), adam(lr))`` (penalty first);
    ``update`` takes ``kfac_penalty_state=``."""
    return optax.chain(kfac_penalty(strength=strength),
                       optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


__all__ = ["KFACPenaltyState", "init_kfac_penalty", "kfac_penalty", "kfac_consolidate",
           "kfac_penalty_loss", "nearest_kronecker_sum", "kfac_ewc"]
