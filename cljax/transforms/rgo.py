"""Recursive gradient optimization (RGO; Liu & Liu 2022, ICLR) as an optax transform.

**Our reading of the algorithm** (the paper's Algorithm 1 is not in our copy; REFERENCES.md
"RGO" lists what the text says). RGO minimises the recursive least loss
F_k = ½ (θ − θ*)ᵀ (Σ_{j<k} H_j)(θ − θ*) subject to ∇L_k = 0 with the update θ ← θ − η P ∇L_k,
P symmetric positive definite with tr(P) = dim(P) (Theorem 1: the expected learning rate is
kept); minimising the bound ½ n_k η σ_max(P H̄) L_k(θ*_{k−1}) (eq. 8) gives
P = dim(H̄)/tr(H̄⁻¹) · H̄⁻¹ (eq. 10). Per layer (Theorem 3, under the feature encoding layer's
decorrelation, :mod:`cljax.nn.fel`) the curvature is taken on the layer's inputs and the
extractors of a layer share one projection, which we implement as:

* for every recognised layer l (:mod:`cljax.layers`: dense, conv; rows = inputs + 1 for the
  bias, im2col patches for a conv) H̄_l = αI + Σ_s ā_s ā_sᵀ over the training steps s of the
  past tasks, ā_s the step's mean row (mean layer input over the batch and positions, α = 1,
  eq. 13 with the layer-input second moment — the K-FAC A factor — as the practical H);
* H̄_l⁻¹ is maintained recursively, as recursive least squares (appendix B.1): at every step,
  Q ← Q − Q ā āᵀ Q / (1 + āᵀ Q ā) (Sherman–Morrison), Q₀ = I/α, so memory is two
  ``[rows, rows]`` matrices per layer whatever the number of tasks;
* the projection used while training task k is frozen at the end of task k − 1:
  P_l = rows / tr(Q) · Q (eq. 10; before any past task Q = I/α and P = I: plain SGD); beside
  it (:data:`SCALES`) ``scale="alpha"``, P_l = α Q, the unnormalised projector of OWM;
* the weight gradient ∇W̄_l [rows, out] is left-multiplied by P_l (input side); parameters
  outside recognised layers (a BatchNorm's) are left as they are, or frozen from the second
  task on (``other_params``, :data:`OTHER_PARAMS`);
* options beside our reading (:data:`ROWS`): ``rows="example"`` adds each example's mean input
  per step instead of the step's; ``rows="moment"`` adds the step's whole second moment
  (1/n) Σ x xᵀ over its n = batch × positions rows, the K-FAC A factor itself rather than the
  outer product of its mean, summed over the task in :attr:`RGOState.moment` and folded into Q
  once at the task's end (P is frozen during a task, so Q is only read there).

:func:`rgo_value_and_grad` forms P∇W̄ inside the backward pass (the rank-B form of
:mod:`cljax.transforms.kfac_gradient`, with G = I), cheaper than :func:`rgo_projection` on the
finished gradient for small batches; both give the same step to rounding.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.layers import (
    all_rows,
    example_rows,
    get_layer,
    mean_rows,
    pack,
    param_layers,
    set_layer,
    unpack,
)
from cljax.transforms.common import require_state, stateless_with_extra_args
from cljax.transforms.kfac_gradient import kfac_preconditioned_value_and_grad
from cljax.types import Array, KFACFactors, Params
from cljax.validation import check_choice, check_finite, check_positive

SCALES = ("trace", "alpha")
"""How the projection is scaled from Q = H̄⁻¹ (``scale=``): ``"trace"``, P = dim/tr(Q)·Q (eq. 10,
Theorem 1: tr P = dim, the paper's); ``"alpha"``, P = α Q = α (αI + Σ)⁻¹ = I − Σ (Σ + αI)⁻¹,
eigenvalues in (0, 1] — the orthogonal-weight-modification projector (Zeng et al. 2019, OWM):
the directions the past inputs span are shut and the others keep the full learning rate, where
the trace scaling hands the shut directions' learning rate to the others."""

ROWS = ("step", "example", "moment")
"""What one training step adds to H̄ (``rows=``): ``"step"``, the outer product of the step's
mean layer input (over examples and a conv's positions; one Sherman–Morrison update, appendix
B.1 as we read it); ``"example"``, each example's mean input (over a conv's positions; a rank-B
Woodbury update); ``"moment"``, the step's second moment (1/n) Σ x xᵀ over all its n rows
(every example's every patch: the layer's K-FAC A factor, Martens & Grosse 2015; for a conv,
Grosse & Martens 2016), accumulated in
:attr:`RGOState.moment` and folded into Q at :func:`rgo_consolidate`."""

OTHER_PARAMS = ("train", "freeze")
"""Parameters outside the projected layers (a BatchNorm's scale and bias; ``other_params=``):
``"train"``, updated as the loss gives (RGO's text names only layer weights); ``"freeze"``, no
update once a task has been consolidated (GPM's code zeroes its 1-D parameters' gradients after
the first task)."""


class RGOState(NamedTuple):
    """RGO's per-layer matrices.

    Attributes:
      running: {layer: Q = (αI + Σ ā āᵀ)⁻¹} over every step so far (past tasks and the current).
      projection: {layer: P}, the projection of the current task (frozen at its start).
      count: int32, tasks consolidated.
      moment: {layer: Σ (1/n) Xᵀ X} over the current task's steps when H̄ grows by second
        moments (``init_rgo(..., moment=True)``, :data:`ROWS` ``"moment"``; not yet in
        ``running``, folded in by :func:`rgo_consolidate`), else ``{}``.
    """

    running: dict
    projection: dict
    count: Array  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, on purpose
    moment: dict = {}  # noqa: RUF012  # never mutated: states are replaced, not updated


def init_rgo(params: Params, *, alpha: float | Array = 1.0, layers: Any = None,
             moment: bool = False) -> RGOState:
    """Q = I/α and P = I for every recognised layer of ``params`` (or those named); with
    ``moment``, a zero second-moment sum per layer (H̄ grows by each step's (1/n) Xᵀ X,
    :data:`ROWS` ``"moment"``)."""
    check_positive(alpha, name="alpha", scalar=True)
    if not isinstance(moment, bool):
        raise TypeError(f"moment must be a bool; got {type(moment).__name__}")
    running, projection = {}, {}
    found = param_layers(params, layers)
    if not found:
        raise ValueError("init_rgo: params hold no dense/conv layer (a node with a 'kernel' of rank "
                         ">= 2) to project; these methods need layer structure")
    for name, shape in found.items():
        dt = get_layer(params, name)["kernel"].dtype
        eye = jnp.eye(shape.rows, dtype=dt)
        running[name] = eye / jnp.asarray(alpha, dt)
        projection[name] = eye
    sums = {name: jnp.zeros_like(q) for name, q in running.items()} if moment else {}
    return RGOState(running, projection, jnp.zeros((), jnp.int32), sums)


def sherman_morrison(q: Array, a: Array) -> Array:
    """(Q⁻¹ + a aᵀ)⁻¹ = Q − (Qa)(Qa)ᵀ / (1 + aᵀ Q a) for symmetric Q (the update is a symmetric
    outer product, so Q stays symmetric; :func:`rgo_consolidate` symmetrises once per task)."""
    qa = q @ a
    return q - jnp.outer(qa, qa / (1.0 + a @ qa))


def woodbury(q: Array, a: Array) -> Array:
    """(Q⁻¹ + Aᵀ A)⁻¹ = Q − (QAᵀ)(I + A Q Aᵀ)⁻¹(QAᵀ)ᵀ for symmetric Q and ``a`` = A ``[k, n]``
    (k rows at once: the rank-k form of :func:`sherman_morrison`)."""
    if a.ndim != 2 or a.shape[1] != q.shape[0]:
        raise ValueError(f"a must be [k, {q.shape[0]}] (k rows of Q's size); got {a.shape}")
    qa = q @ a.T
    inner = jnp.eye(a.shape[0], dtype=q.dtype) + a @ qa
    return q - qa @ jnp.linalg.solve(inner, qa.T)


def rgo_accumulate(state: RGOState, rows: Mapping[str, Array]) -> RGOState:
    """One step of the recursion: Q_l ← (Q_l⁻¹ + Σ_i a_i a_iᵀ)⁻¹ for the step's rows ``rows``:
    ``{layer: [n]}``, one mean row (:func:`cljax.layers.mean_rows` of the step's forward pass,
    a Sherman–Morrison update), or ``{layer: [k, n]}``, k rows (e.g. one per example,
    :func:`cljax.layers.example_rows`, a rank-k Woodbury update). A state that grows by second
    moments (``init_rgo(..., moment=True)``) instead adds the rows' (1/k) Σ a aᵀ to its
    ``moment`` sum, ``{layer: [k, n]}`` (every row of the step, :func:`cljax.layers.all_rows`)."""
    if not isinstance(state, RGOState):
        raise TypeError(f"state must be an RGOState (init_rgo(params)); got {type(state).__name__}")
    missing = [k for k in state.running if k not in rows]
    if missing:
        raise ValueError(f"rows lacks the mean rows of layers {missing} (got {sorted(rows)}); "
                         "every tracked layer must be called in the step")
    if state.moment:
        return state._replace(moment={name: m + _second_moment(rows[name], m, name)
                                      for name, m in state.moment.items()})
    running = {}
    for name, q in state.running.items():
        a = jnp.asarray(rows[name], q.dtype)
        if a.ndim not in (1, 2) or a.shape[-1] != q.shape[0]:
            raise ValueError(f"rows[{name!r}] must have shape ({q.shape[0]},) or (k, {q.shape[0]});"
                             f" got {a.shape}")
        running[name] = sherman_morrison(q, a) if a.ndim == 1 else woodbury(q, a)
    return state._replace(running=running)


def _second_moment(rows: Array, like: Array, name: str) -> Array:
    """(1/k) Aᵀ A of the ``[k, n]`` rows A, in ``like``'s dtype."""
    a = jnp.asarray(rows, like.dtype)
    if a.ndim != 2 or a.shape[1] != like.shape[0]:
        raise ValueError(f"rows[{name!r}] must have shape (k, {like.shape[0]}) (every row of the "
                         f"step) for a second-moment state; got {a.shape}")
    return (a.T @ a) / a.shape[0]


def normalised_projection(q: Array) -> Array:
    """P = dim / tr(Q) · Q (Liu & Liu 2022, eq. 10): tr(P) = dim(P) (Theorem 1)."""
    return (q.shape[0] / jnp.trace(q)) * q


def rgo_consolidate(state: RGOState, *, scale: str = "trace",
                    alpha: float | Array | None = None) -> RGOState:
    """Task boundary: the projection of the next task from every step so far, P = dim/tr(Q)·Q
    (``scale="trace"``) or α Q (``scale="alpha"``, ``alpha`` the α of :func:`init_rgo`;
    :data:`SCALES`). A second-moment state first folds its task's sum M into Q:
    (Q⁻¹ + M)⁻¹ = (I + Q M)⁻¹ Q."""
    if not isinstance(state, RGOState):
        raise TypeError(f"state must be an RGOState (init_rgo(params)); got {type(state).__name__}")
    check_choice(scale, SCALES, name="scale")
    if scale == "alpha":
        if alpha is None:
            raise ValueError("scale='alpha' needs alpha, the α the state was initialised with")
        check_positive(alpha, name="alpha", scalar=True)
    check_finite(state.running, name="state.running")
    running = dict(state.running)
    if state.moment:
        check_finite(state.moment, name="state.moment")
        for name, m in state.moment.items():
            q = running[name]
            running[name] = jnp.linalg.solve(jnp.eye(q.shape[0], dtype=q.dtype) + q @ m, q)
    running = {k: 0.5 * (q + q.T) for k, q in running.items()}
    scaled = (normalised_projection if scale == "trace" else
              (lambda q: jnp.asarray(alpha, q.dtype) * q))
    return state._replace(running=running,
                          projection={k: scaled(q) for k, q in running.items()},
                          count=state.count + 1,
                          moment={k: jnp.zeros_like(m) for k, m in state.moment.items()})


def step_rows(captured: Mapping[str, list[Array]], rows: str = "step") -> dict[str, Array]:
    """What a training step adds to H̄ from the rows its layers multiplied
    (:func:`cljax.layers.capture_rows`), as ``rows`` (:data:`ROWS`) says: each layer's mean row
    (:func:`cljax.layers.mean_rows`), one per example (:func:`cljax.layers.example_rows`) or
    every row (:func:`cljax.layers.all_rows`, for a second-moment state)."""
    check_choice(rows, ROWS, name="rows")
    return {"step": mean_rows, "example": example_rows, "moment": all_rows}[rows](captured)


def _other_scale(state: RGOState, other_params: str) -> Array:
    """1 while the parameters outside the projected layers train, 0 once frozen."""
    if other_params == "train":
        return jnp.ones((), jnp.float32)
    return (state.count == 0).astype(jnp.float32)


def rgo_projection(*, other_params: str = "train") -> optax.GradientTransformationExtraArgs:
    """``P_l ∇W̄_l`` for every layer of the :class:`RGOState` given as ``rgo_state=``, the other
    parameters' updates as :data:`OTHER_PARAMS` says; put it first in the chain, before the step
    (SGD in the paper)."""
    check_choice(other_params, OTHER_PARAMS, name="other_params")

    def update(updates: Params, params: Params | None, *, rgo_state: RGOState) -> Params:
        del params
        scale = _other_scale(rgo_state, other_params)
        out = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)   # layers: below
        for name, p in rgo_state.projection.items():
            node = get_layer(updates, name)
            out = set_layer(out, name, unpack(p @ pack(node), node))
        return out

    return stateless_with_extra_args(update, name="rgo_projection",
                                     required={"rgo_state": RGOState})


def rgo_value_and_grad(fun: Callable[..., Any], rgo_state: RGOState, params: Params, *args: Any,
                       has_aux: bool = False, rows: str = "step", other_params: str = "train"
                       ) -> tuple[Any, Params, dict]:
    """``fun(params, *args)``, its gradient with every tracked layer's weight gradient projected,
    P∇W̄, formed inside the backward pass (rank-B form; convs and untracked layers after it),
    the other parameters' gradients as ``other_params`` (:data:`OTHER_PARAMS`) says, and each
    layer's rows of the forward pass for :func:`rgo_accumulate` as ``rows`` (:data:`ROWS`) says:
    the mean row (:func:`cljax.layers.mean_rows`) or one per example
    (:func:`cljax.layers.example_rows`). Feed the gradient to the base optimizer directly (not
    through :func:`rgo_projection`)."""
    require_state(rgo_state, RGOState, arg="rgo_state", fn="rgo_value_and_grad")
    check_choice(rows, ROWS, name="rows")
    check_choice(other_params, OTHER_PARAMS, name="other_params")
    shapes = param_layers(params)
    inverses = {name: KFACFactors(p, jnp.eye(shapes[name].out, dtype=p.dtype))
                for name, p in rgo_state.projection.items()}
    value, grads, captured = kfac_preconditioned_value_and_grad(
        fun, params, inverses, *args, other_scale=_other_scale(rgo_state, other_params),
        has_aux=has_aux, capture_rows=True)
    return value, grads, step_rows(captured, rows)


__all__ = ["ROWS", "OTHER_PARAMS", "RGOState", "init_rgo", "sherman_morrison", "woodbury",
           "rgo_accumulate", "step_rows", "normalised_projection", "SCALES",
           "rgo_consolidate", "rgo_projection", "rgo_value_and_grad"]
