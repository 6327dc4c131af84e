"""Natural continual learning (NCL; Kao et al. 2021, NeurIPS) as an optax preconditioner.

NCL trains task t on the Laplace posterior of the previous tasks, N(μ, Λ⁻¹), with a trust-region
(natural-gradient) step preconditioned by the prior precision Λ (REFERENCES.md "NCL", seed 000
eq. 15-16)::

    θ ← θ − η [Λ⁻¹ ∇ℓ_t(θ) + (θ − μ)]

The transforms here output the *direction* ``Λ⁻¹ ∇ℓ_t(θ) + (θ − μ)``; chain them before a plain
step, ``optax.chain(ncl_preconditioner(...), optax.sgd(η))`` (:func:`ncl`, :func:`ncl_kfac`).
Putting Adam after the preconditioner would rescale the direction per coordinate and undo the
preconditioning, so NCL is a (momentum-)SGD method.

**Precision.** Λ = s · Σ_t F_t + d · I, with F_t the task-t curvature (a *mean over examples*, as
cljax's estimators return), ``strength`` s (the Laplace precision of a task with N examples is
N·F_t, so s plays the role of N and is tuned like EWC's λ) and ``damping`` d, the precision of the
isotropic Gaussian prior (and the numerical damping). Both are arrays in the state: change them
with :func:`cljax.transforms.set_strength` / :func:`set_damping` (this recomputes the inverse, a
task-boundary cost; nothing recompiles; both can be ``vmap`` axes).

* Diagonal (:func:`ncl_preconditioner`): F_t = importance pytree (e.g. diagonal Fisher);
  Λ⁻¹ = 1 / (s Ω + d) elementwise, Ω = Σ_t γ^{T-t} F_t.
* K-FAC (:func:`ncl_kfac_preconditioner`): F_t,l ≈ A_t ⊗ G_t per layer (``KFACFactors`` layout of
  :mod:`cljax.types`). The past tasks' sum is kept as ONE Kronecker product per layer, the
  Frobenius-nearest one (Van Loan & Pitsianis 1993; see
  :func:`cljax.transforms.kfac_penalty.nearest_kronecker_sum`). Damping enters with the factored
  Tikhonov form of Martens & Grosse (2015, sec. 6.3)::

      Λ_l ≈ (√s A + π √d I) ⊗ (√s G + (√d / π) I),   π = √[(tr A / dim A) / (tr G / dim G)]

  so Λ_l⁻¹ = (√s A + π√d I)⁻¹ ⊗ (√s G + √d/π I)⁻¹ and the step for a layer with
  ΔW̄ = [∇W; ∇b] is ``A_d⁻¹ ∇W̄ G_d⁻¹``: two matmuls per layer per step. The exact eigen-based
  inverse (s A⊗G + d I)⁻¹ = (U_A ⊗ U_G) diag(1 / (s a_i g_j + d)) (U_A ⊗ U_G)ᵀ costs four matmuls
  per layer per step; we chose the factored form because Λ is already approximate (Kronecker
  blocks, nearest-Kronecker sum over tasks), the factored form is standard K-FAC practice, and it
  halves the per-step cost. It adds √(sd)(π A⊗I + I⊗G/π) to Λ, i.e. slightly more damping.
  Parameters not in any factor layer get the prior precision only: Λ = d I.
  **Faster path:** the two per-step matmuls cost Σ_l (in+1)²·out + (in+1)·out² whatever the
  batch; :func:`ncl_kfac_value_and_grad` instead forms A_d⁻¹∇W̄G_d⁻¹ = (āA_d⁻ᵀ)ᵀ(δG_d⁻¹) inside
  the backward pass from each Dense layer's inputs ā and output cotangents δ (B rows), which is
  cheaper for B below ≈ (in+1)·out·(in+1+out)/((in+1)² + out²); chain it with
  ``ncl_kfac(..., preconditioned_gradients=True)`` (the ``ncl_kfac`` method does by default).

**Boundaries.** :func:`ncl_consolidate` / :func:`ncl_kfac_consolidate` (pure) set μ ← θ*_t, add
the task's curvature and compute the inverse ONCE; ``update`` only multiplies. Before the first
consolidation there is no prior from past tasks and the direction is the plain gradient
(Λ⁻¹ = I, no pull): task 1 trains with plain SGD. (To train task 1 under the isotropic prior
N(θ_0, d⁻¹I) instead, consolidate at the initial parameters with zero importance.)
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax._linalg import eigh
from cljax.transforms.kfac_gradient import kfac_preconditioned_value_and_grad
from cljax.transforms.kfac_penalty import (_check_factors, _kfac_layers, _layer_get,
                                           _layer_set, _pack, _unpack, nearest_kronecker_sum)
from cljax.transforms.penalty import (_NO_PARAMS, _check_decay, _check_importance_values,
                                      _check_scalar_like, _find_one, _float_dtype,
                                      _register_strength_state, _replace_one, _replace_states)
from cljax.types import Array, Importance, KFACFactors, Params
from cljax.validation import check_nonnegative, check_same_structure


def _active(count: Array, dtype: Any) -> Array:
    return (count > 0).astype(dtype)


# --------------------------------------------------------------------------------------------
# Diagonal NCL.
# --------------------------------------------------------------------------------------------

@_register_strength_state
class NCLDiagState(NamedTuple):
    """State of :func:`ncl_preconditioner`.

    Attributes:
      mean: μ, the parameters at the end of the last consolidated task.
      precision: Ω = Σ_t γ^{T-t} F_t, the unscaled data precision (params' structure).
      inverse: Λ⁻¹ = 1 / (s Ω + d) (ones before the first consolidation), computed at boundaries.
      count: int32 number of consolidations.
      strength: s. damping: d.
    """

    mean: Params
    precision: Importance
    inverse: Params
    count: Array
    strength: Array
    damping: Array

    def _refresh(self) -> "NCLDiagState":
        on = self.count > 0
        inv = jax.tree.map(
            lambda o: jnp.where(on, 1.0 / (self.strength.astype(o.dtype) * o
                                           + self.damping.astype(o.dtype)), jnp.ones_like(o)),
            self.precision)
        return self._replace(inverse=inv)

    def _with_strength(self, value: Array) -> "NCLDiagState":
        return self._replace(strength=value)._refresh()

    def _with_damping(self, value: Array) -> "NCLDiagState":
        return self._replace(damping=value)._refresh()


def _check_damping(damping: Any) -> None:
    check_nonnegative(damping, name="damping")


def ncl_preconditioner(*, strength: float | Array = 1.0, damping: float | Array = 1.0
                       ) -> optax.GradientTransformation:
    """Diagonal NCL direction ``Λ⁻¹ g + (θ − μ)``, Λ = s Ω + d (Kao et al. 2021).

    Args:
      strength: s ≥ 0, scale of the accumulated importance in Λ (array in the state).
      damping: d ≥ 0, prior precision / damping (array in the state). With d = 0, coordinates
        with zero importance get an infinite step: use d > 0.

    Chain before the step: ``optax.chain(ncl_preconditioner(...), optax.sgd(lr))``.
    ``update(updates, state, params)`` requires ``params``.
    """
    check_nonnegative(strength, name="strength")
    _check_damping(damping)

    def init_fn(params: Params) -> NCLDiagState:
        dt = _float_dtype()
        return NCLDiagState(jax.tree.map(jnp.array, params),
                            jax.tree.map(jnp.zeros_like, params),
                            jax.tree.map(jnp.ones_like, params), jnp.zeros((), jnp.int32),
                            jnp.asarray(strength, dt), jnp.asarray(damping, dt))

    def update_fn(updates: Any, state: NCLDiagState, params: Params | None = None
                  ) -> tuple[Any, NCLDiagState]:
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="ncl_preconditioner"))
        check_same_structure(params, state.mean, name="params",
                             reference_name="the params the state was initialised with")
        on = _active(state.count, _float_dtype())
        out = jax.tree.map(
            lambda g, p, m, v: (v * g + on.astype(g.dtype) * (p - m)).astype(g.dtype),
            updates, params, state.mean, state.inverse)
        return out, state

    return optax.GradientTransformation(init_fn, update_fn)


def ncl_consolidate(state: Any, params: Params, importance: Importance, *,
                    decay: float | Array = 1.0) -> Any:
    """Task boundary for diagonal NCL: Ω ← γΩ + F_t, μ ← θ*_t, Λ⁻¹ ← 1/(sΩ + d).

    Args:
      state: an :class:`NCLDiagState` or an optimizer state containing exactly one.
      params: θ*_t, the new prior mean.
      importance: F_t with params' structure (diagonal Fisher, mean over examples).
      decay: γ ∈ (0, 1], down-weights older tasks (1: the exact Laplace sum).
    """
    _check_decay(decay)

    def fn(s: NCLDiagState) -> NCLDiagState:
        check_same_structure(params, s.mean, name="params",
                             reference_name="the params the state was initialised with")
        check_same_structure(importance, s.mean, name="importance")
        _check_importance_values(importance)
        prec = jax.tree.map(lambda o, f: jnp.asarray(decay, o.dtype) * o + jnp.asarray(f, o.dtype),
                            s.precision, importance)
        mean = jax.tree.map(lambda m, p: jnp.asarray(p, m.dtype), s.mean, params)
        return s._replace(mean=mean, precision=prec, count=s.count + 1)._refresh()

    return _replace_one(state, NCLDiagState, fn, what="ncl_consolidate")


# --------------------------------------------------------------------------------------------
# K-FAC NCL.
# --------------------------------------------------------------------------------------------

@_register_strength_state
class NCLKFACState(NamedTuple):
    """State of :func:`ncl_kfac_preconditioner`.

    Attributes:
      mean: μ.
      factors: {layer: KFACFactors(A, G)}, the nearest-Kronecker sum of the past tasks' factors.
      inverse: {layer: KFACFactors(A_d⁻¹, G_d⁻¹)}, damped inverses (identity before task 1).
      count, strength, damping: as :class:`NCLDiagState`.
    """

    mean: Params
    factors: dict
    inverse: dict
    count: Array
    strength: Array
    damping: Array

    def _refresh(self) -> "NCLKFACState":
        on = self.count > 0
        inv = {}
        for name, f in self.factors.items():
            a_inv, g_inv = _damped_inverses(f.A, f.G, self.strength, self.damping)
            inv[name] = KFACFactors(jnp.where(on, a_inv, jnp.eye(f.A.shape[0], dtype=f.A.dtype)),
                                    jnp.where(on, g_inv, jnp.eye(f.G.shape[0], dtype=f.G.dtype)))
        return self._replace(inverse=inv)

    def _with_strength(self, value: Array) -> "NCLKFACState":
        return self._replace(strength=value)._refresh()

    def _with_damping(self, value: Array) -> "NCLKFACState":
        return self._replace(damping=value)._refresh()


def _spd_inverse(m: Array) -> Array:
    """Inverse of a symmetric positive definite matrix through its eigendecomposition."""
    m = 0.5 * (m + m.T)
    w, u = eigh(m)
    return (u / w) @ u.T


def _damped_inverses(a: Array, g: Array, strength: Array, damping: Array) -> tuple[Array, Array]:
    """(√s A + π√d I)⁻¹ and (√s G + √d/π I)⁻¹ with Martens & Grosse's π (see module docstring)."""
    dt = a.dtype
    n, m = a.shape[0], g.shape[0]
    tiny = jnp.finfo(dt).tiny
    pi = jnp.sqrt((jnp.trace(a) / n + tiny) / (jnp.trace(g) / m + tiny))
    rs, rd = jnp.sqrt(strength.astype(dt)), jnp.sqrt(damping.astype(dt))
    a_d = rs * a + (pi * rd) * jnp.eye(n, dtype=dt)
    g_d = rs * g + (rd / pi) * jnp.eye(m, dtype=dt)
    return _spd_inverse(a_d), _spd_inverse(g_d)


def ncl_kfac_preconditioner(*, strength: float | Array = 1.0, damping: float | Array = 1.0,
                            layers: Any = None, preconditioned_gradients: bool = False
                            ) -> optax.GradientTransformation:
    """K-FAC NCL direction ``Λ⁻¹ g + (θ − μ)`` (Kao et al. 2021; Λ per layer as in
    the module docstring: ``A_d⁻¹ ∇W̄ G_d⁻¹`` for each factor layer, ``∇/d`` elsewhere).

    Args:
      strength: s ≥ 0 (array in the state). damping: d > 0 (array in the state).
      layers: names of the layers to precondition ("Dense_0", or "/"-joined paths for nested
        modules); default: every params node holding a ``kernel`` of rank ≥ 2 (dense, conv).
      preconditioned_gradients: the incoming updates are already Λ⁻¹∇ℓ, computed by
        :func:`ncl_kfac_value_and_grad` inside the backward pass (cheaper: see
        :mod:`cljax.transforms.kfac_gradient`); the transform then only adds the pull (θ − μ).

    Memory: two ``[in+1, in+1]`` and two ``[out, out]`` matrices per layer (factors and inverses),
    plus μ. ``update(updates, state, params)`` requires ``params``.
    """
    check_nonnegative(strength, name="strength")
    _check_damping(damping)
    if not isinstance(preconditioned_gradients, bool):
        raise TypeError("preconditioned_gradients must be a bool; got "
                        f"{type(preconditioned_gradients).__name__}")

    def init_fn(params: Params) -> NCLKFACState:
        dt = _float_dtype()
        shapes = _kfac_layers(params, layers)
        factors, inverse = {}, {}
        for name, (n, m, _) in shapes.items():
            pdt = _layer_get(params, name)["kernel"].dtype
            factors[name] = KFACFactors(jnp.zeros((n, n), pdt), jnp.zeros((m, m), pdt))
            inverse[name] = KFACFactors(jnp.eye(n, dtype=pdt), jnp.eye(m, dtype=pdt))
        return NCLKFACState(jax.tree.map(jnp.array, params), factors, inverse,
                            jnp.zeros((), jnp.int32), jnp.asarray(strength, dt),
                            jnp.asarray(damping, dt))

    def update_fn(updates: Any, state: NCLKFACState, params: Params | None = None
                  ) -> tuple[Any, NCLKFACState]:
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="ncl_kfac_preconditioner"))
        check_same_structure(params, state.mean, name="params",
                             reference_name="the params the state was initialised with")
        on = state.count > 0
        pull = on.astype(_float_dtype())
        if preconditioned_gradients:
            out = jax.tree.map(lambda g, p, m: (g + pull.astype(g.dtype) * (p - m)).astype(g.dtype),
                               updates, params, state.mean)
            return out, state
        # Parameters outside factor layers: Λ = d I after the first task, identity before.
        other = jnp.where(on, 1.0 / state.damping, 1.0)
        out = jax.tree.map(lambda g, p, m: (other.astype(g.dtype) * g
                                            + pull.astype(g.dtype) * (p - m)).astype(g.dtype),
                           updates, params, state.mean)
        for name, inv in state.inverse.items():
            g_node = _layer_get(updates, name)
            d = inv.A @ _pack(g_node) @ inv.G
            pm = _pack(_layer_get(params, name)) - _pack(_layer_get(state.mean, name))
            new = _unpack(d + pull.astype(d.dtype) * pm, g_node)
            out = _layer_set(out, name, new)
        return out, state

    return optax.GradientTransformation(init_fn, update_fn)


def ncl_kfac_value_and_grad(fun: Callable[..., Array], opt_state: Any, params: Params,
                            *args: Any) -> tuple[Array, Params]:
    """``fun(params, *args)`` and Λ⁻¹∇fun with the K-FAC NCL precision held in ``opt_state``,
    computed inside the backward pass (:func:`cljax.transforms.kfac_preconditioned_value_and_grad`).

    Feed the result to ``ncl_kfac(..., preconditioned_gradients=True)``; together they give the
    same step as ``jax.grad`` followed by ``ncl_kfac(...)``, for ≈ 40 % of the preconditioner's
    multiply-adds at batch 128 on a 784-400-400-10 MLP. Before the first consolidation Λ⁻¹ = I.

    Args:
      fun: scalar loss of ``(params, *args)`` built from flax linen modules.
      opt_state: an :class:`NCLKFACState` or an optimizer state containing exactly one.
      params: the current parameters.
    """
    s = _find_one(opt_state, NCLKFACState, what="ncl_kfac_value_and_grad")
    check_same_structure(params, s.mean, name="params",
                         reference_name="the params the state was initialised with")
    other = jnp.where(s.count > 0, 1.0 / s.damping, 1.0)
    return kfac_preconditioned_value_and_grad(fun, params, s.inverse, *args, other_scale=other)


def ncl_kfac_consolidate(state: Any, params: Params, factors: Mapping[str, KFACFactors], *,
                         decay: float | Array = 1.0) -> Any:
    """Task boundary for K-FAC NCL: per layer A⊗G ← nearest-Kronecker(γ A⊗G + A_t⊗G_t),
    μ ← θ*_t, and the damped inverses are recomputed (two eigendecompositions per layer).

    Args:
      state: an :class:`NCLKFACState` or an optimizer state containing exactly one.
      params: θ*_t.
      factors: {layer name: KFACFactors(A_t, G_t)} in :class:`cljax.types.KFACFactors` layout;
        layers the state tracks but ``factors`` omits get F_t = 0 for this task.
      decay: γ ∈ (0, 1].
    """
    _check_decay(decay)

    def fn(s: NCLKFACState) -> NCLKFACState:
        check_same_structure(params, s.mean, name="params",
                             reference_name="the params the state was initialised with")
        _check_factors(factors, {k: (f.A.shape[0], f.G.shape[0]) for k, f in s.factors.items()})
        new_f = {}
        for name, f in s.factors.items():
            dec = jnp.asarray(decay, f.A.dtype)
            if name in factors:
                a_t = jnp.asarray(factors[name][0], f.A.dtype)
                g_t = jnp.asarray(factors[name][1], f.G.dtype)
                new_f[name] = KFACFactors(*nearest_kronecker_sum(dec * f.A, f.G, a_t, g_t))
            else:
                new_f[name] = KFACFactors(dec * f.A, f.G)
        mean = jax.tree.map(lambda m, p: jnp.asarray(p, m.dtype), s.mean, params)
        return s._replace(mean=mean, factors=new_f, count=s.count + 1)._refresh()

    return _replace_one(state, NCLKFACState, fn, what="ncl_kfac_consolidate")


# --------------------------------------------------------------------------------------------
# Hyperparameters and default chains.
# --------------------------------------------------------------------------------------------

def set_damping(state: Any, value: Any) -> Any:
    """Return ``state`` with NCL's damping d replaced (and Λ⁻¹ recomputed) in every NCL state
    inside it; ``value`` has the stored damping's shape (scalar, or [K] for a vmapped state)."""
    _check_damping(value)

    def fn(s: Any) -> Any:
        _check_scalar_like(value, s.damping, name="damping")
        return s._with_damping(jnp.asarray(value, dtype=s.damping.dtype))

    new, n = _replace_states(state, (NCLDiagState, NCLKFACState), fn)
    if n == 0:
        raise ValueError(f"set_damping: no NCL state found in a {type(state).__name__}")
    return new


def ncl(learning_rate: optax.ScalarOrSchedule, *, strength: float | Array = 1.0,
        damping: float | Array = 1.0, momentum: float | None = None
        ) -> optax.GradientTransformation:
    """Diagonal NCL: ``optax.chain(ncl_preconditioner(...), optax.sgd(lr, momentum))``."""
    return optax.chain(ncl_preconditioner(strength=strength, damping=damping),
                       optax.sgd(learning_rate, momentum=momentum))


def ncl_kfac(learning_rate: optax.ScalarOrSchedule, *, strength: float | Array = 1.0,
             damping: float | Array = 1.0, momentum: float | None = None, layers: Any = None,
             preconditioned_gradients: bool = False) -> optax.GradientTransformation:
    """K-FAC NCL: ``optax.chain(ncl_kfac_preconditioner(...), optax.sgd(lr, momentum))``; with
    ``preconditioned_gradients=True`` it expects gradients from :func:`ncl_kfac_value_and_grad`."""
    return optax.chain(ncl_kfac_preconditioner(strength=strength, damping=damping, layers=layers,
                                               preconditioned_gradients=preconditioned_gradients),
                       optax.sgd(learning_rate, momentum=momentum))


__all__ = ["NCLDiagState", "NCLKFACState", "ncl_preconditioner", "ncl_consolidate",
           "ncl_kfac_preconditioner", "ncl_kfac_consolidate", "ncl_kfac_value_and_grad",
           "set_damping", "ncl", "ncl_kfac"]
