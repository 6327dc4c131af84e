"""MC-SGD, mode connectivity SGD (Mirzadeh, Farajtabar, Gorur, Pascanu & Ghasemzadeh 2021, "Linear
Mode Connectivity in Multitask and Continual Learning", ICLR 2021, arXiv 2010.04495).

Each task t is first learned by plain fine-tuning, which ends at the continual solution θ̂_t.
At the end of the task (the ``end_task`` hook) the task's examples join a replay memory, and
MC-SGD looks for a point w linearly connected by low loss to both the previous solution θ_{t−1}
(on the previous tasks, seen through the memory) and θ̂_t (on the current task):

    min_w  Σ_α  ℓ_{<t}(θ_{t−1} + α(w − θ_{t−1}))  +  Σ_α  ℓ_t(θ̂_t + α(w − θ̂_t))

over ``num_points`` evenly spaced α ∈ [0, 1] (both ends included, as the reference code's
``np.arange(0, 1.01, 1 / n)``), ℓ_{<t} the mean cross-entropy on memory rows of the tasks before
t and ℓ_t on examples of task t, both with the model in evaluation mode (no dropout; the
reference code calls ``net.eval()``). The search starts on the segment, at
w₀ = θ_{t−1} + α₀(θ̂_t − θ_{t−1}) (``init_position`` α₀), and takes ``mc_steps`` steps of SGD
with momentum (PyTorch's convention: v ← μv + g, w ← w − η·v; ``mc_lr`` η, ``mc_momentum`` μ).
The result is θ_t, and θ_t becomes the anchor of the next task. The first task has no previous
task: θ_1 = θ̂_1 (the references run the phase from the second task on). The whole phase is one
``lax.fori_loop`` inside the jitted boundary, so it compiles once per stream and runs under
``vmap``.

References read for the details: the paper's code, ``imirzadeh/CL-LinearModeConnectivity``
(``core/train_methods.py``, ``train_task_LMC_offline``, and ``core/mode_connectivity.py``), to
which the author points for MC-SGD (``imirzadeh/MC-SGD`` issue #1), and the author's later
library ``imirzadeh/CL-Gym`` (``cl_gym/algorithms/mcsgd.py``). Where they differ from this
implementation:

* **Gradient.** Both references add up ``∇ℓ`` evaluated at the points of the segments, without
  the chain-rule factor α (∂/∂w of ℓ(a + α(w − a)) is α·∇ℓ), and without zeroing the gradient
  buffers between points, so point j of n + 1 enters n + 1 − j times (the α = 0 points, which do
  not depend on w, the most). This implementation takes the gradient of the objective above.
  Learning rates therefore do not carry over from their configurations.
* **Which solution the next task starts from** (``train_from``). In the paper's code the
  continual chain is plain fine-tuning (θ̂_t is trained from θ̂_{t−1}) and MC-SGD's θ_t is kept
  beside it, evaluated, and used as the next phase's anchor: ``train_from="continual"`` (the
  model predicts with θ_t, kept in the method state). In CL-Gym the next task trains from θ_t:
  ``train_from="mc"``, the default.
* **Data.** The paper's code builds the memory from 200 examples over 20 tasks (10 per task, one
  per class for MNIST's 10 classes) and steps through one epoch of a random subset of the current
  task (400 to 2,000 examples) in batches, pairing each batch with a memory batch while they last.
  Here each step uses ``mc_batch_size`` examples of the current task drawn afresh (or the whole
  task, ``mc_batch_size=None``) and ``memory_batch_size`` memory rows of the previous tasks drawn
  with replacement (or the whole memory, ``memory_batch_size=None``: exact, but then every step
  runs the memory's whole capacity through the network at every point). The memory segment uses
  the previous tasks only (CL-Gym's ``load_memory_joint(task − 1)``; the paper's code also includes the current
  task's own memory rows there).

With ``mc_steps=0`` no phase runs: the method is fine-tuning that stores a memory, bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import memory as mem
from cljax.analysis.connectivity import path_point
from cljax.memory import ReplayMemory
from cljax.methods.base import BoundaryContext, Method, PredictContext, StepInfo, get_hparam
from cljax.methods.rehearsal import MemoryPlan, core_rows, memory_plan, store_finished_task
from cljax.types import Array, Batch, Params
from cljax.validation import check_choice, check_positive_int

TRAIN_FROM = ("mc", "continual")
"""Where the next task's training starts: MC-SGD's solution θ_t (``"mc"``, CL-Gym) or the
continual solution θ̂_t (``"continual"``, the paper's code; θ_t then predicts)."""


class MCSGDState(NamedTuple):
    """MC-SGD's method state.

    Attributes:
      memory: the replay memory (:class:`cljax.memory.ReplayMemory`) of the tasks seen.
      anchor: θ_{t−1}, MC-SGD's solution of the tasks finished (the parameters at the start while
        no task has finished): one end of the memory segment of the next phase, and with
        ``train_from="continual"`` the parameters the model predicts with.
    """

    memory: ReplayMemory
    anchor: Params


def line_points(num_points: int) -> Array:
    """The ``num_points`` evenly spaced α ∈ [0, 1] of the objective, both ends included (float32).

    Example:
        >>> line_points(5).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    _check_num_points(num_points)
    return jnp.linspace(0.0, 1.0, num_points, dtype=jnp.float32)


def _masked_mean_ce(logits: Array, labels: Array, ok: Array | None) -> Array:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if ok is None:
        return jnp.mean(ce)
    okf = ok.astype(ce.dtype)
    return jnp.sum(ce * okf) / jnp.maximum(jnp.sum(okf), 1.0)


def mcsgd_objective(logits_fn: Callable[[Params, Batch], Array], w: Params, previous: Params,
                    continual: Params, memory: Batch, current: Batch, alphas: Array, *,
                    memory_ok: Array | None = None, current_ok: Array | None = None) -> Array:
    """MC-SGD's objective at ``w`` (the module docstring): the sum over ``alphas`` of the mean
    cross-entropy of ``logits_fn`` on the ``memory`` batch at ``previous + α(w − previous)`` plus
    that on the ``current`` batch at ``continual + α(w − continual)``.

    ``memory_ok`` / ``current_ok`` (bool, one per row) mask rows out of their means (a memory
    slot that is empty or holds the current task; padding); a batch with no row ok contributes 0.
    The points are visited in one ``lax.scan``, in order.
    """
    def at(alpha: Array) -> Array:
        mem_loss = _masked_mean_ce(logits_fn(path_point(previous, w, alpha), memory),
                                   memory["y"], memory_ok)
        cur_loss = _masked_mean_ce(logits_fn(path_point(continual, w, alpha), current),
                                   current["y"], current_ok)
        return mem_loss + cur_loss

    def body(total, alpha):
        return total + at(alpha), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), jnp.asarray(alphas, jnp.float32))
    return total


def mcsgd_phase(ctx: BoundaryContext, memory_state: ReplayMemory, key: Array, *, mc_steps: int,
                num_points: int, mc_batch_size: int | None,
                memory_batch_size: int | None) -> Params:
    """MC-SGD's phase at the end of task t > 0 (Mirzadeh et al. 2021, Algorithm 1's MC-SGD step):
    θ_t from θ_{t−1} (``ctx.mstate.anchor``) and θ̂_t (``ctx.params``) by ``mc_steps`` steps of
    SGD with momentum on :func:`mcsgd_objective`, the previous tasks' rows of ``memory_state``
    on one segment and the task's examples on the other (the options as :func:`mcsgd`'s)."""
    hp = ctx.hparams
    lr = get_hparam(hp, "mc_lr", "mcsgd")
    mu = get_hparam(hp, "mc_momentum", "mcsgd")
    previous, continual = ctx.mstate.anchor, ctx.params
    alphas = line_points(num_points)
    logits_fn = ctx.model.logits_fn
    eligible = memory_state.valid & (memory_state.task < ctx.task)
    # the batches every step shares (whole memory, whole task), built once
    whole_memory = None if memory_batch_size is not None else ctx.to_batch(core_rows(
        {"x": memory_state.x, "label": memory_state.label, "task": memory_state.task}))
    whole_task = task_ok = None
    if mc_batch_size is None:
        rows = ctx.task_rows(ctx.task)
        whole_task = ctx.to_batch(rows)
        task_ok = jnp.arange(rows["label"].shape[0]) < ctx.count(ctx.task)

    def batches(i):
        k_mem, k_cur = jax.random.split(jax.random.fold_in(key, i))
        if whole_memory is not None:
            mb, m_ok = whole_memory, eligible
        else:
            assert memory_batch_size is not None
            m_rows, m_ok = mem.sample_memory(memory_state, k_mem, memory_batch_size,
                                             where=eligible)
            mb = ctx.to_batch(m_rows)
        if whole_task is not None:
            return mb, m_ok, whole_task, task_ok
        assert mc_batch_size is not None
        return mb, m_ok, ctx.sample_batch(ctx.task, k_cur, mc_batch_size), None

    def step(i, carry):
        w, v = carry
        mb, m_ok, cb, c_ok = batches(i)
        g = jax.grad(lambda p: mcsgd_objective(logits_fn, p, previous, continual, mb, cb,
                                               alphas, memory_ok=m_ok, current_ok=c_ok))(w)
        v = jax.tree.map(lambda a, b: (mu * a + b).astype(a.dtype), v, g)
        w = jax.tree.map(lambda a, b: (a - lr * b).astype(a.dtype), w, v)
        return w, v

    w0 = path_point(previous, continual, get_hparam(hp, "init_position", "mcsgd"))
    v0 = jax.tree.map(jnp.zeros_like, w0)
    return jax.lax.fori_loop(0, mc_steps, step, (w0, v0))[0]


def _check_num_points(num_points: Any) -> None:
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 2:
        raise ValueError(f"num_points must be an int >= 2 (both ends of each segment); got "
                         f"{num_points!r}")


def _empty(plan: MemoryPlan) -> bool:
    return (plan.kind == "per_class" and plan.per_class == 0) or plan.capacity == 0 or (
        plan.kind == "reservoir" and plan.capacity is None and plan.per_class == 0)


def mcsgd(*, mc_steps: int = 125, num_points: int = 11, mc_batch_size: int | None = 16,
          memory_batch_size: int | None = 16, train_from: str = "mc",
          memory: str = "per_class", per_class: int | None = 1,
          capacity: int | None = None) -> Method:
    """MC-SGD (Mirzadeh et al. 2021): fine-tuning on each task, then at its end ``mc_steps`` SGD
    steps towards a point linearly connected by low loss to the previous solution (on a replay
    memory of the previous tasks) and to the task's fine-tuned solution (on the task's examples).

    Options (static): ``mc_steps`` steps of the phase (0: no phase, fine-tuning that stores a
    memory, bit for bit); ``num_points`` α per segment (evenly spaced, ends included; CL-Gym's
    default ``mcsgd_line_samples=10`` is 11 points); ``mc_batch_size`` examples of the current task
    per step, drawn with replacement (None: the whole task every step); ``memory_batch_size``
    memory rows of the previous tasks per step, drawn with replacement (None: the whole memory
    every step); ``train_from`` (:data:`TRAIN_FROM`); the memory as the rehearsal methods'
    (:mod:`cljax.methods.rehearsal`), by default one example per class of each task (the paper's
    200 examples over 20 tasks of 10 classes). Hyperparameters: ``mc_lr`` (η), ``mc_momentum``
    (μ, 0.8 in both references) and ``init_position`` (α₀ ∈ [0, 1], where the search starts on the
    segment from θ_{t−1} to θ̂_t; 0.25 is CL-Gym's default). The objective, and where this
    implementation differs from the references, are in the module's docstring.
    """
    if not isinstance(mc_steps, int) or isinstance(mc_steps, bool) or mc_steps < 0:
        raise ValueError(f"mc_steps must be an int >= 0 (SGD steps of the phase at each task's "
                         f"end); got {mc_steps!r}")
    _check_num_points(num_points)
    for name, value in (("mc_batch_size", mc_batch_size),
                        ("memory_batch_size", memory_batch_size)):
        if value is not None:
            check_positive_int(value, name=name)
    check_choice(train_from, TRAIN_FROM, name="train_from")
    plan = memory_plan(memory, per_class, capacity)
    if mc_steps > 0 and _empty(plan):
        raise ValueError("MC-SGD's phase needs a memory of the previous tasks: per_class / "
                         "capacity must be > 0 (mc_steps=0 is fine-tuning)")

    def init(params, key, hparams, spec):
        del key, hparams
        return MCSGDState(plan.build(spec)[0], jax.tree.map(jnp.array, params))

    def end_task(ctx: BoundaryContext):
        k_store, k_phase = jax.random.split(ctx.key)
        memory_state = store_finished_task(ctx.mstate.memory, plan, ctx, k_store)
        if mc_steps == 0:
            solution = ctx.params
        else:
            solution = jax.lax.cond(ctx.task > 0,
                                    lambda: mcsgd_phase(ctx, memory_state, k_phase,
                                                        mc_steps=mc_steps, num_points=num_points,
                                                        mc_batch_size=mc_batch_size,
                                                        memory_batch_size=memory_batch_size),
                                    lambda: ctx.params)
        state = MCSGDState(memory_state, solution)
        params = solution if train_from == "mc" else ctx.params
        return params, ctx.opt_state, state

    def after_step(info: StepInfo):
        if plan.kind != "reservoir":
            return info.keep_params(info.mstate)
        s: MCSGDState = info.mstate
        return info.keep_params(s._replace(
            memory=mem.reservoir_add(s.memory, core_rows(info.rows), info.key)))

    def predict(params, s: MCSGDState, batch, ctx: PredictContext):
        del params
        return ctx.model.logits_fn(s.anchor, batch)

    defaults: Mapping[str, float] = {"mc_lr": 0.01, "mc_momentum": 0.8, "init_position": 0.25}
    return Method("mcsgd", init=init, end_task=end_task, after_step=after_step,
                  predict=predict if train_from == "continual" else None,
                  default_hparams=defaults,
                  hparam_domains={"mc_momentum": "closed_unit_interval",
                                  "init_position": "closed_unit_interval"},
                  check=plan.check_config)


__all__ = ["mcsgd", "MCSGDState", "mcsgd_objective", "mcsgd_phase", "line_points", "TRAIN_FROM"]
