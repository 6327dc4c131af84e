"""Rehearsal methods — ER, A-GEM, GEM, LwF, DER++, iCaRL — as recipes on the method protocol.

Each keeps what it needs in its method state (a :class:`cljax.memory.ReplayMemory`, the previous
model, exemplar means) with shapes fixed for the stream, draws memory examples in its ``batch``
hook, and never needs the trainer to know its name. Memories (static options, shared by the
methods that store examples; :mod:`cljax.memory`):

* ``memory="per_class"`` (default): ``per_class`` examples of each class stored at the end of its
  task, chosen at random without replacement (van de Ven et al. 2022, "budget 100 per class");
* ``memory="class_balanced"``: a total ``capacity`` shared equally by the classes seen;
* ``memory="reservoir"``: reservoir sampling of every training example seen, ``capacity`` slots
  (default ``per_class`` × the stream's classes, the same budget).

Loss weighting follows van de Ven et al.'s code (GMvandeVen/continual-learning) where they have
the method: with t the number of tasks seen (1-based), ER minimises (1/t)·ℓ_current +
(1 − 1/t)·ℓ_memory over a memory batch as large as the current batch; A-GEM projects the current
gradient against the memory batch's; LwF adds distillation with temperature 2 (cross-entropy
with the previous model's softened outputs, no T² factor) summed over the previous heads in
Task-IL, times (t − 1) for a shared within-task head (Domain-IL), once for a head over all
classes (Class-IL); iCaRL uses a binary cross-entropy over the classes seen whose old-class
targets are the previous model's sigmoid(logits / T), herding exemplars and nearest-mean-of-
exemplars prediction. DER++ (Buzzega et al. 2020) and GEM (Lopez-Paz & Ranzato 2017) follow
their papers' code (mammoth, GradientEpisodicMemory): see each function.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax import memory as mem
from cljax.memory import ReplayMemory
from cljax.methods.base import (
    BatchContext,
    BoundaryContext,
    ConfigPlan,
    LossContext,
    Method,
    PredictContext,
    StepInfo,
    StreamSpec,
    cross_entropy,
    current_task_batch,
    get_hparam,
)
from cljax.nn import MASKED_LOGIT
from cljax.transforms import agem_projection, gem_projection
from cljax.types import Array, Batch, Params
from cljax.validation import check_choice, check_positive_int

MEMORY_KINDS = ("per_class", "class_balanced", "reservoir")
CORE_KEYS = ("x", "label", "task")


# --------------------------------------------------------------------------------------------
# Memory plans shared by the methods.
# --------------------------------------------------------------------------------------------

class MemoryPlan(NamedTuple):
    """Static description of a method's memory: its kind and budget (validated)."""

    kind: str
    per_class: int | None
    capacity: int | None

    def budget(self, classes_per_task: int, num_classes: int) -> mem.ClassBudget | None:
        """The class budget of the class modes (None for a reservoir), validated."""
        if self.kind == "reservoir":
            return None
        return mem.class_budget(classes_per_task=classes_per_task, num_classes=num_classes,
                                per_class=self.per_class if self.kind == "per_class" else None,
                                capacity=self.capacity if self.kind == "class_balanced" else None)

    def size(self, classes_per_task: int, num_classes: int, train_examples: int | None) -> int:
        """The memory's capacity on a stream of ``num_classes`` classes; an error when it
        cannot be built there (a class-balanced capacity below the number of classes, more
        examples than the stream's ``train_examples``, when known)."""
        budget = self.budget(classes_per_task, num_classes)
        if budget is not None:
            capacity = budget.memory_capacity()
        elif self.capacity is not None:
            capacity = self.capacity
        else:
            assert self.per_class is not None      # a reservoir has one of them (memory_plan)
            capacity = self.per_class * num_classes
        if train_examples is not None and capacity > train_examples:
            raise ValueError(f"the memory ({capacity} examples: memory={self.kind!r}, "
                             f"per_class={self.per_class}, capacity={self.capacity}) is larger "
                             f"than the stream ({train_examples} training examples); lower the "
                             "budget")
        return capacity

    def check_config(self, plan: ConfigPlan) -> None:
        """``Method.check``: the memory can be built on the planned stream."""
        if plan.num_classes is not None and plan.classes_per_task is not None:
            self.size(plan.classes_per_task, plan.num_classes, plan.train_examples)

    def build(self, spec: StreamSpec, *, logits: bool = False
              ) -> tuple[ReplayMemory, mem.ClassBudget | None]:
        """The empty memory and (for the class modes) its budget, for ``spec``'s stream."""
        capacity = self.size(spec.classes_per_task, spec.num_classes,
                             sum(spec.train_counts) if spec.train_counts else None)
        memory = mem.init_memory(capacity, spec.example_shape, spec.storage_dtype,
                                 logits_dim=spec.num_outputs if logits else None)
        return memory, self.budget(spec.classes_per_task, spec.num_classes)


def memory_plan(memory: str, per_class: int | None, capacity: int | None) -> MemoryPlan:
    """Validate a method's memory options (see the module docstring)."""
    check_choice(memory, MEMORY_KINDS, name="memory")
    if per_class is not None and (not isinstance(per_class, int) or isinstance(per_class, bool)
                                  or per_class < 0):
        raise ValueError(f"per_class must be an int >= 0 (examples kept per class); got "
                         f"{per_class!r}")
    if capacity is not None and (not isinstance(capacity, int) or isinstance(capacity, bool)
                                 or capacity < 0):
        raise ValueError(f"capacity must be an int >= 0 (examples in the memory); got "
                         f"{capacity!r}")
    if memory == "per_class" and capacity is not None:
        raise ValueError("memory='per_class' is sized by per_class; capacity is for "
                         "memory='class_balanced' or 'reservoir'")
    if memory == "class_balanced" and capacity is None:
        raise ValueError("memory='class_balanced' needs capacity (the total shared by the "
                         "classes seen)")
    if memory == "per_class" and per_class is None:
        raise ValueError("memory='per_class' needs per_class")
    if memory == "reservoir" and capacity is None and per_class is None:
        raise ValueError("memory='reservoir' needs capacity (or per_class: per_class × classes)")
    return MemoryPlan(memory, per_class, capacity)


def _is_empty(plan: MemoryPlan) -> bool:
    """A memory of no examples: the method is then exactly fine-tuning."""
    return (plan.kind == "per_class" and plan.per_class == 0) or plan.capacity == 0 or (
        plan.kind == "reservoir" and plan.capacity is None and plan.per_class == 0)


def core_rows(rows: Mapping[str, Any]) -> dict[str, Any]:
    """The stored part of rows (``x``, ``label``, ``task``), without what a method added."""
    return {k: rows[k] for k in CORE_KEYS}


def store_finished_task(memory: ReplayMemory, plan: MemoryPlan, ctx: BoundaryContext,
                        key: Array, **kwargs: Any) -> ReplayMemory:
    """At a task boundary: the class modes store the finished task's examples; reservoir
    memories were filled during the task and are returned unchanged."""
    if plan.kind == "reservoir" or memory.capacity == 0:
        return memory
    budget = plan.budget(ctx.spec.classes_per_task, ctx.spec.num_classes)
    assert budget is not None                      # the class modes have one
    return mem.store_task(memory, budget, ctx.task_rows(ctx.task), ctx.count(ctx.task), ctx.task,
                          key, **kwargs)


def _masked_mean(values: Array, ok: Array) -> Array:
    okf = ok.astype(values.dtype)
    return jnp.sum(values * okf) / jnp.maximum(jnp.sum(okf), 1.0)


def _per_example_ce(logits: Array, labels: Array) -> Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def with_memory_rows(ctx: BatchContext, memory: ReplayMemory, size: int, *,
                     replace: bool = True) -> dict[str, Any]:
    """Current-task rows (as fine-tuning draws them) plus ``size`` memory rows drawn with
    ``ctx.key`` under ``"memory"`` (raw, converted by the loss with ``ctx.to_batch``) and their
    validity ``"memory_ok"`` (with or without replacement, :func:`cljax.memory.sample_memory`)."""
    rows: dict[str, Any] = dict(current_task_batch(ctx, None))
    rows["memory"], rows["memory_ok"] = mem.sample_memory(memory, ctx.key, size,
                                                          replace=replace)
    return rows


def _memory_loss(params: Params, batch: Mapping[str, Any], ctx: LossContext, key: Array,
                 name: str = "memory") -> tuple[Array, Array]:
    """Mean cross-entropy of the model on the memory rows ``batch[name]`` (masked), and the
    logits."""
    mb = ctx.to_batch(batch[name])
    logits = ctx.model.train_logits_fn(params, mb, key)
    return _masked_mean(_per_example_ce(logits, mb["y"]), batch[name + "_ok"]), logits


def _current_loss(params: Params, batch: Batch, ctx: LossContext) -> tuple[Array, Array, Array]:
    """Fine-tuning's loss on the current rows (same key use, so the same numbers) and the key
    left for the memory terms."""
    k_cur, k_rest = jax.random.split(ctx.key)
    logits = ctx.model.train_logits_fn(params, batch, k_cur)
    return cross_entropy(logits, batch["y"]), logits, k_rest


def _init_memory_state(plan: MemoryPlan, logits: bool = False):
    def init(params, key, hparams, spec):
        del params, key, hparams
        return plan.build(spec, logits=logits)[0]
    return init


def _memory_size(memory_batch_size: int | None, ctx: BatchContext) -> int:
    return ctx.batch_size if memory_batch_size is None else memory_batch_size


def _check_batch_size(memory_batch_size: int | None) -> None:
    if memory_batch_size is not None:
        check_positive_int(memory_batch_size, name="memory_batch_size")


def _replay_batch(memory_batch_size: int | None, memory_replace: bool):
    """``Method.batch`` of a method replaying one memory batch beside the current one
    (:func:`with_memory_rows`): ``memory_batch_size`` rows (default the current batch's), drawn
    with replacement or, with ``memory_replace=False``, without it and capped by how full the
    memory is. Validates both options."""
    if not isinstance(memory_replace, bool):
        raise TypeError(f"memory_replace must be a bool; got {memory_replace!r}")
    _check_batch_size(memory_batch_size)

    def batch(ctx: BatchContext, memory_state: ReplayMemory) -> dict[str, Any]:
        return with_memory_rows(ctx, memory_state, _memory_size(memory_batch_size, ctx),
                                replace=memory_replace)
    return batch


def _reservoir_after_step(plan: MemoryPlan):
    """``after_step`` of a method with ``plan``'s memory: a reservoir offers each step's current
    examples to the memory; the class modes fill it at task ends."""
    def after_step(info: StepInfo):
        if plan.kind != "reservoir":
            return info.keep_params(info.mstate)
        return info.keep_params(mem.reservoir_add(info.mstate, core_rows(info.rows), info.key))
    return after_step


# --------------------------------------------------------------------------------------------
# ER
# --------------------------------------------------------------------------------------------

ER_LOSSES = ("weighted", "concat")
"""ER's objectives: van de Ven et al.'s 1/t weighting, or one cross-entropy over the
concatenated current and replay batches (Chaudhry et al. 2019, "On tiny episodic memories")."""


def concat_replay_loss(params: Params, batch: Batch, memory_state: Any,
                       ctx: LossContext) -> tuple[Array, dict]:
    """The mean cross-entropy over a step's current rows and its valid memory rows together
    (Chaudhry et al. 2019's ER; Hsu et al. 2018's rehearsal, whose batches come from the task's
    data concatenated with the memory)."""
    del memory_state
    ce_cur, _, k_mem = _current_loss(params, batch, ctx)
    ce_mem, _ = _memory_loss(params, batch, ctx, k_mem)
    n_cur = jnp.float32(batch["y"].shape[0])
    n_mem = jnp.sum(batch["memory_ok"].astype(jnp.float32))
    return (n_cur * ce_cur + n_mem * ce_mem) / (n_cur + n_mem), {}


def er(*, memory: str = "per_class", per_class: int | None = 100, capacity: int | None = None,
       memory_batch_size: int | None = None, memory_replace: bool = True,
       loss: str = "weighted") -> Method:
    """Experience replay: each step trains on the current batch and a memory batch (as large as
    the current batch unless ``memory_batch_size``; drawn with replacement, or without it and
    capped by how full the memory is when ``memory_replace=False``). ``loss="weighted"``:
    (1/t)·ℓ_current + (1 − 1/t)·ℓ_memory with t the number of tasks seen (van de Ven et al.
    2022's weighting; with a reservoir memory ℓ_memory enters from task 2 on);
    ``loss="concat"``: the mean cross-entropy over the current rows and the valid memory rows
    together (Chaudhry et al. 2019's ER). A memory of 0 examples is fine-tuning, exactly."""
    check_choice(loss, ER_LOSSES, name="loss")
    batch = _replay_batch(memory_batch_size, memory_replace)
    plan = memory_plan(memory, per_class, capacity)
    if _is_empty(plan):
        return Method("er")

    def weighted(params, batch, memory_state, ctx):
        del memory_state
        ce_cur, _, k_mem = _current_loss(params, batch, ctx)
        ce_mem, _ = _memory_loss(params, batch, ctx, k_mem)
        rnt = 1.0 / (ctx.task + 1).astype(jnp.float32)
        return rnt * ce_cur + (1.0 - rnt) * ce_mem, {}

    def end_task(ctx):
        return ctx.keep_params(store_finished_task(ctx.mstate, plan, ctx, ctx.key))

    return Method("er", init=_init_memory_state(plan), batch=batch,
                  loss=weighted if loss == "weighted" else concat_replay_loss,
                  after_step=_reservoir_after_step(plan), end_task=end_task,
                  check=plan.check_config)


# --------------------------------------------------------------------------------------------
# A-GEM
# --------------------------------------------------------------------------------------------

def agem(*, memory: str = "per_class", per_class: int | None = 100, capacity: int | None = None,
         memory_batch_size: int | None = None, eps: float = 0.0,
         memory_replace: bool = True) -> Method:
    """A-GEM (Chaudhry et al. 2019): the current-task gradient, projected when it points against
    the gradient of a memory batch (:func:`cljax.transforms.agem_projection`, first in the chain,
    then the base optimizer — Adam in van de Ven et al.'s protocol); the reference batch of
    ``memory_batch_size`` examples is drawn with replacement, or without it and capped by how
    full the memory is (``memory_replace=False``, as their code draws it)."""
    batch = _replay_batch(memory_batch_size, memory_replace)
    plan = memory_plan(memory, per_class, capacity)
    if _is_empty(plan):
        return Method("agem")

    def loss(params, batch, memory_state, ctx):
        del memory_state
        return _current_loss(params, batch, ctx)[0], {}

    def optimizer_args(params, batch, memory_state, ctx):
        del memory_state
        grads = jax.grad(lambda p: _memory_loss(p, batch, ctx, ctx.key)[0])(params)
        return {"reference_grads": grads}

    def end_task(ctx):
        return ctx.keep_params(store_finished_task(ctx.mstate, plan, ctx, ctx.key))

    return Method("agem", make_optimizer=lambda h, base: optax.chain(agem_projection(eps=eps), base),
                  init=_init_memory_state(plan), batch=batch, loss=loss,
                  optimizer_args=optimizer_args, after_step=_reservoir_after_step(plan),
                  end_task=end_task, check=plan.check_config)


# --------------------------------------------------------------------------------------------
# GEM
# --------------------------------------------------------------------------------------------

GEM_REFERENCE_GRADS = ("auto", "seen", "all")
"""How GEM forms its per-class memory's per-task gradients (the same values either way):
``"all"`` — every task's block in one vmapped backward pass, the blocks of tasks not yet finished
included (they are empty, their gradient zero); ``"seen"`` — a loop over the blocks that computes
only the finished tasks' (``lax.cond``), so a step at task t costs t − 1 blocks, not T;
``"auto"`` — ``"seen"`` on the CPU (BENCHMARKS.md: 1.56× faster per step over A-GEM's 17
tasks, 3.4× at its second task, level at its last), ``"all"`` elsewhere (not measured on an
accelerator, where one vmapped pass keeps it busy)."""


def gem(*, memory: str = "per_class", per_class: int | None = 100, capacity: int | None = None,
        eps: float = 1e-3, num_sweeps: int = 100, rehearse: bool = False,
        memory_batch_size: int | None = None, memory_replace: bool = True,
        reference_grads: str = "auto") -> Method:
    """GEM (Lopez-Paz & Ranzato 2017): every step, the gradient of the loss on each past task's
    stored examples, and the current gradient projected by the dual QP of
    :func:`cljax.transforms.gem_projection` (hyperparameter ``margin``, γ; 0.5 in GEM's
    experiments) before the base optimizer. The memory is filled per task at its end
    (``memory="per_class"``, GEM's episodic memory, or ``"class_balanced"``) or by reservoir
    sampling during the task (``"reservoir"``): :func:`task_reference_grads` groups it by the task
    each example came from. Cost per step: one backward pass over the whole memory (per class),
    or one forward pass and a backward pass per task over it (the other kinds).

    ``rehearse=True``: the gradient to project is that of :func:`concat_replay_loss` over the
    current batch and a memory batch (``memory_batch_size``, ``memory_replace`` as for
    :func:`er`), not of the current batch alone — GEM as Hsu et al. 2018's code runs it, on
    batches of the task's data concatenated with the memory, i.e. ER with GEM's projection.

    ``reference_grads`` (:data:`GEM_REFERENCE_GRADS`): how the per-class memory's per-task
    gradients are computed — only the finished tasks' in a loop, or every block vmapped."""
    if not isinstance(rehearse, bool):
        raise TypeError(f"rehearse must be a bool; got {rehearse!r}")
    check_choice(reference_grads, GEM_REFERENCE_GRADS, name="reference_grads")
    batch = _replay_batch(memory_batch_size, memory_replace)
    if not rehearse and (memory_batch_size is not None or not memory_replace):
        raise ValueError("memory_batch_size and memory_replace set GEM's replay batch: they need "
                         "rehearse=True")
    plan = memory_plan(memory, per_class, capacity)
    if _is_empty(plan):
        return Method("gem", default_hparams={"margin": 0.5})
    replay = {"batch": batch, "loss": concat_replay_loss} if rehearse else {}

    def optimizer_args(params, batch, memory_state: ReplayMemory, ctx: LossContext):
        del batch
        if plan.kind == "per_class":
            seen_only = reference_grads == "seen" or (reference_grads == "auto"
                                                      and jax.default_backend() == "cpu")
            return _per_task_block_grads(params, memory_state, ctx, seen_only=seen_only)
        grads, mask = task_reference_grads(params, memory_state, ctx)
        return {"reference_grads": grads, "reference_mask": mask}

    def make_optimizer(hparams, base):
        return optax.chain(gem_projection(margin=get_hparam(hparams, "margin", "gem"), eps=eps,
                                          num_sweeps=num_sweeps), base)

    def end_task(ctx):
        return ctx.keep_params(store_finished_task(ctx.mstate, plan, ctx, ctx.key))

    return Method("gem", make_optimizer=make_optimizer, init=_init_memory_state(plan),
                  optimizer_args=optimizer_args, after_step=_reservoir_after_step(plan),
                  end_task=end_task, default_hparams={"margin": 0.5}, check=plan.check_config,
                  **replay)


def _per_task_block_grads(params: Params, memory_state: ReplayMemory, ctx: LossContext, *,
                          seen_only: bool) -> dict:
    """GEM's reference gradients from a per-class memory, whose slots are grouped by task in
    equal blocks: one backward pass per block, vmapped over all T blocks, or (``seen_only``)
    looped over them computing only the finished tasks' (the others are zero either way: their
    blocks are empty until the task ends)."""
    T = ctx.spec.num_tasks
    per_task = memory_state.capacity // T

    def block(a):
        return a.reshape((T, per_task) + a.shape[1:])

    rows = {k: block(getattr(memory_state, k)) for k in CORE_KEYS}
    ok = block(memory_state.valid)
    keys = jax.random.split(ctx.key, T)

    def task_grad(rows_t, ok_t, key):
        def f(p):
            b = ctx.to_batch(rows_t)
            logits = ctx.model.train_logits_fn(p, b, key)
            return _masked_mean(_per_example_ce(logits, b["y"]), ok_t)
        return jax.grad(f)(params)

    if seen_only:
        zeros = jax.tree.map(jnp.zeros_like, params)

        def finished_task_grad(xs):
            t, rows_t, ok_t, key = xs
            return jax.lax.cond(t < ctx.task, lambda: task_grad(rows_t, ok_t, key),
                                lambda: zeros)

        grads = jax.lax.map(finished_task_grad, (jnp.arange(T), rows, ok, keys))
    else:
        grads = jax.vmap(task_grad)(rows, ok, keys)
    mask = (jnp.arange(T) < ctx.task) & jnp.any(ok, axis=1)
    return {"reference_grads": grads, "reference_mask": mask}


def task_reference_grads(params: Params, memory_state: ReplayMemory, ctx: LossContext
                         ) -> tuple[Params, Array]:
    """Per task t, the gradient of the mean cross-entropy over the memory's valid examples of
    task t (GEM's g_k, Lopez-Paz & Ranzato 2017 Sec. 3), from a memory in any order: one forward
    pass over the memory and one vector-Jacobian product per task, with the per-example losses
    weighted by membership / count. Returns the gradients stacked on a leading ``[T]`` axis and
    the mask of the tasks that bind now (finished, and with at least one stored example)."""
    T = ctx.spec.num_tasks
    b = ctx.to_batch(core_rows({k: getattr(memory_state, k) for k in CORE_KEYS}))

    def per_example(p):
        return _per_example_ce(ctx.model.train_logits_fn(p, b, ctx.key), b["y"])

    losses, pullback = jax.vjp(per_example, params)
    member = memory_state.valid[None, :] & (memory_state.task[None, :] == jnp.arange(T)[:, None])
    counts = jnp.sum(member, axis=1)
    weights = member.astype(losses.dtype) / jnp.maximum(counts, 1)[:, None].astype(losses.dtype)
    grads = jax.vmap(lambda w: pullback(w)[0])(weights)
    return grads, (jnp.arange(T) < ctx.task) & (counts > 0)


# --------------------------------------------------------------------------------------------
# LwF
# --------------------------------------------------------------------------------------------

class PreviousModel(NamedTuple):
    """The parameters at the end of the last task and the number of tasks finished."""

    params: Params
    count: Array  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, on purpose


def soft_cross_entropy(logits: Array, teacher_logits: Array, temperature: Array) -> Array:
    """Distillation loss of Hinton et al. 2015 as in LwF's code: per example
    −Σ_c softmax(teacher/T)_c · log_softmax(logits/T)_c (no T² factor)."""
    target = jax.nn.softmax(teacher_logits / temperature, axis=-1)
    return -jnp.sum(target * jax.nn.log_softmax(logits / temperature, axis=-1), axis=-1)


def _previous_model_init(params, key, hparams, spec):
    del key, hparams, spec
    return PreviousModel(jax.tree.map(jnp.array, params), jnp.zeros((), jnp.int32))


def _remember_model(ctx: BoundaryContext) -> PreviousModel:
    return PreviousModel(ctx.params, ctx.mstate.count + 1)


LWF_WEIGHTINGS = ("per_task", "replay")
"""How LwF weighs its terms: ``"per_task"`` (van de Ven et al.'s current code, ``--lwf-weighting``):
ℓ_current + strength · (the distillation summed over the previous heads in Task-IL, (t − 1) × the
shared head's in Domain-IL, once in Class-IL); ``"replay"`` (their 2019 code, as for every replay):
(1/t) · ℓ_current + (1 − 1/t) · strength · (the distillation averaged over the previous heads in
Task-IL, the one head's otherwise), t the tasks seen, the current one included."""
DISTILL_OUTPUTS = ("all", "seen")
"""The classes a distilling method's softmaxes run over in Class-IL (LwF, DGR): ``"all"``
outputs, or ``"seen"`` (van de Ven et al.'s code, "active classes"): the cross-entropy and the
trained model over the classes of the tasks seen so far, the previous model's targets over the
previous tasks' classes (zero on the current ones; :func:`seen_class_logits`). In Task- and
Domain-IL every output is seen from the start: the two are equal."""
DISTILL_REDUCTIONS = ("sum", "mean")
"""How a distillation reduces over the classes of a softmax: ``"sum"`` (Hinton et al.'s
cross-entropy, van de Ven et al.'s code from 2019-05-17 on) or ``"mean"`` (the sum divided by the
classes it runs over — the head's width, or the classes seen with ``outputs="seen"`` — as their
code of April 2019, arXiv 1904.07734 v1's, computed it)."""


def is_class_incremental(spec: StreamSpec, heads: Array) -> bool:
    """Whether ``heads`` (``[B, H, C]``) is one head over every class of the stream (Class-IL),
    not a head per task, Domain-IL's shared head or a task-masked head."""
    return (heads.shape[1] == 1 and spec.num_outputs > spec.classes_per_task
            and not spec.task_masked)


def softmax_width(spec: StreamSpec, heads: Array) -> Array:
    """The classes each softmax of ``heads`` runs over: the head's width, or the task's classes
    of a task-masked head."""
    return jnp.asarray(spec.classes_per_task if spec.task_masked else heads.shape[-1],
                       heads.dtype)


def seen_class_logits(logits: Array, spec: StreamSpec, count: Array, *,
                      previous: bool = False) -> Array:
    """Class-IL over the classes seen (:data:`DISTILL_OUTPUTS` ``"seen"``): ``logits`` (classes on
    the last axis) set to :data:`MASKED_LOGIT` (softmax probability exactly 0) outside the tasks
    ≤ ``count`` (the current one included) — outside the tasks < ``count`` with ``previous``
    (the previous model's targets)."""
    if logits.shape[-1:] != (spec.num_outputs,):
        raise ValueError(f"logits must have the model's {spec.num_outputs} outputs on their last "
                         f"axis; got shape {logits.shape}")
    owner = class_tasks(spec)
    keep = owner < count if previous else owner <= count
    return jnp.where(keep, logits, jnp.asarray(MASKED_LOGIT, logits.dtype))


def num_seen_classes(spec: StreamSpec, count: Array) -> Array:
    """The classes of the tasks ≤ ``count``: the width of :func:`seen_class_logits`' softmax."""
    return jnp.sum(class_tasks(spec) <= count).astype(jnp.float32)


def check_distill_options(outputs: str, distill_reduction: str) -> None:
    """Checks ``outputs`` (:data:`DISTILL_OUTPUTS`) and ``distill_reduction``
    (:data:`DISTILL_REDUCTIONS`)."""
    check_choice(outputs, DISTILL_OUTPUTS, name="outputs")
    check_choice(distill_reduction, DISTILL_REDUCTIONS, name="distill_reduction")


def class_tasks(spec: StreamSpec) -> Array:
    """int32 ``[num_outputs]``: the first task whose classes include each output (from
    ``spec.label_table``), ``num_tasks`` for an output no task names; ``class_tasks(spec) < t``
    marks the outputs of the tasks before t."""
    table = jnp.asarray(spec.label_table, jnp.int32)
    if table.shape != (spec.num_tasks, spec.classes_per_task):
        raise ValueError(f"spec.label_table must be int [num_tasks, classes_per_task] = "
                         f"[{spec.num_tasks}, {spec.classes_per_task}]; got {table.shape}")
    owner = jnp.repeat(jnp.arange(spec.num_tasks, dtype=jnp.int32), table.shape[1])
    return jnp.full((spec.num_outputs,), spec.num_tasks, jnp.int32).at[table.reshape(-1)].min(owner)


def lwf(*, weighting: str = "per_task", outputs: str = "all",
        distill_reduction: str = "sum") -> Method:
    """Learning without Forgetting (Li & Hoiem 2017): cross-entropy on the current task plus
    ``strength`` × distillation (temperature ``temperature``, default 2) of the previous model's
    outputs on the current inputs, for every previous head; the previous parameters live in the
    method state. ``weighting`` (:data:`LWF_WEIGHTINGS`), ``outputs`` (:data:`DISTILL_OUTPUTS`)
    and ``distill_reduction`` (:data:`DISTILL_REDUCTIONS`) choose between van de Ven et al.'s
    current and 2019 code; their 2019 distillation also had Hinton's T² factor: ``strength`` =
    T² (4) gives it. With ``strength`` 0 this is fine-tuning, exactly (with ``outputs="seen"``,
    fine-tuning over the seen classes)."""
    check_choice(weighting, LWF_WEIGHTINGS, name="weighting")
    check_distill_options(outputs, distill_reduction)

    def loss(params, batch, prev: PreviousModel, ctx: LossContext):
        T = get_hparam(ctx.hparams, "temperature", "lwf")
        k_cur, _ = jax.random.split(ctx.key)
        apply_fn = ctx.model.apply_fn
        assert apply_fn is not None                # requires=("apply_fn",), checked on the model
        heads = apply_fn(params, batch, k_cur, output="all_heads")               # [B, H, C]
        old = jax.lax.stop_gradient(apply_fn(prev.params, batch, output="all_heads"))
        H = heads.shape[1]
        every_class = H == 1 and ctx.spec.num_outputs > ctx.spec.classes_per_task
        width = softmax_width(ctx.spec, heads)
        if outputs == "seen" and is_class_incremental(ctx.spec, heads):
            heads = seen_class_logits(heads, ctx.spec, prev.count)
            old = seen_class_logits(old, ctx.spec, prev.count, previous=True)
            width = num_seen_classes(ctx.spec, prev.count)
        if H == 1:
            logits = heads[:, 0]
        else:
            logits = jnp.take_along_axis(heads, batch["task"][:, None, None].astype(jnp.int32),
                                         axis=1)[:, 0]
        ce = cross_entropy(logits, batch["y"])
        kd = jnp.mean(soft_cross_entropy(heads, old, T), axis=0)                # [H]
        if distill_reduction == "mean":
            kd = kd / width
        n_prev = prev.count.astype(kd.dtype)
        if H > 1:   # Task-IL: every previous head
            distill = jnp.sum(jnp.where(jnp.arange(H) < prev.count, kd, 0.0))
            if weighting == "replay":
                distill = distill / jnp.maximum(n_prev, 1.0)
        elif every_class or weighting == "replay":   # one head over all classes: once
            distill = jnp.where(prev.count > 0, kd[0], 0.0)
        else:   # Domain-IL: a shared within-task head stands for every previous task
            distill = n_prev * kd[0]
        strength = get_hparam(ctx.hparams, "strength", "lwf")
        if weighting == "replay":
            current = 1.0 / (n_prev + 1.0)
            return current * ce + (1.0 - current) * strength * distill, {}
        return ce + strength * distill, {}

    def end_task(ctx):
        return ctx.keep_params(_remember_model(ctx))

    return Method("lwf", init=_previous_model_init, loss=loss, end_task=end_task,
                  default_hparams={"strength": 1.0, "temperature": 2.0},
                  hparam_domains={"temperature": "positive"}, requires=("apply_fn",))


# --------------------------------------------------------------------------------------------
# DER++
# --------------------------------------------------------------------------------------------

def der(*, memory: str = "reservoir", per_class: int | None = 100, capacity: int | None = None,
        memory_batch_size: int | None = None) -> Method:
    """DER, dark experience replay (Buzzega et al. 2020, Sec. 3: the objective their eq. 6, DER++,
    extends by a label term): ℓ_current + α·MSE(logits on memory x, the logits stored with
    them), one memory batch of ``memory_batch_size`` (default: the batch size) from a reservoir
    storing each example with the logits the model gave it (before the step), as mammoth's
    ``der.py``. :func:`derpp` without its second draw and label term (not
    ``derpp`` at β = 0, which still draws and computes it). Hyperparameter ``alpha``."""
    return _dark_experience("der", memory, per_class, capacity, memory_batch_size, labels=False)


def derpp(*, memory: str = "reservoir", per_class: int | None = 100, capacity: int | None = None,
          memory_batch_size: int | None = None) -> Method:
    """DER++ (Buzzega et al. 2020, eq. 6): ℓ_current + α·MSE(logits on memory x, the logits stored
    with them) + β·CE(memory labels), the two terms on two independent memory batches (as
    mammoth's ``derpp.py``) of ``memory_batch_size`` (default: the batch size); the memory is a
    reservoir over the stream storing each example with the logits the model gave it (before
    the step). Hyperparameters ``alpha``, ``beta``; with both 0 this is fine-tuning to rounding
    (≤ 1e-7 relative here, not bit for bit: the zero-weighted terms change the compiled step's
    expression graph, and XLA:CPU's fused multiply-adds round differently — adding β·Σθ with
    β = 0 to a loss moves a 6-step trajectory by 3e-8)."""
    return _dark_experience("derpp", memory, per_class, capacity, memory_batch_size, labels=True)


def _dark_experience(name: str, memory: str, per_class: int | None, capacity: int | None,
                     memory_batch_size: int | None, *, labels: bool) -> Method:
    """DER (``labels=False``) or DER++ (``labels=True``: a second memory batch whose labels
    enter a β-weighted cross-entropy)."""
    plan = memory_plan(memory, per_class, capacity)
    _check_batch_size(memory_batch_size)
    if plan.kind != "reservoir":
        raise ValueError(f"{name} stores logits as it trains: it needs memory='reservoir'")

    def batch(ctx, memory_state):
        size = _memory_size(memory_batch_size, ctx)
        rows = with_memory_rows(ctx, memory_state, size)
        if labels:
            m2, ok2 = mem.sample_memory(memory_state, jax.random.fold_in(ctx.key, 1), size)
            rows["memory2"], rows["memory2_ok"] = m2, ok2
        return rows

    def loss(params, batch, memory_state, ctx):
        del memory_state
        ce_cur, logits, k_mem = _current_loss(params, batch, ctx)
        m1 = ctx.to_batch(batch["memory"])
        n = m1["y"].shape[0]
        if labels:
            m2 = ctx.to_batch(batch["memory2"])
            both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), m1, m2)   # one forward
            z = ctx.model.train_logits_fn(params, both, k_mem)
        else:
            z = ctx.model.train_logits_fn(params, m1, k_mem)
        mse = _masked_mean(jnp.mean(jnp.square(z[:n] - m1["logits"]), axis=-1),
                           batch["memory_ok"])
        total = ce_cur + get_hparam(ctx.hparams, "alpha", name) * mse
        if labels:
            ce2 = _masked_mean(_per_example_ce(z[n:], m2["y"]), batch["memory2_ok"])
            total = total + get_hparam(ctx.hparams, "beta", name) * ce2
        return total, {"logits": logits}

    def after_step(info: StepInfo):
        return info.keep_params(mem.reservoir_add(
            info.mstate, core_rows(info.rows), info.key,
            logits=jax.lax.stop_gradient(info.aux["logits"])))

    defaults = {"alpha": 0.5, "beta": 0.5} if labels else {"alpha": 0.5}
    return Method(name, init=_init_memory_state(plan, logits=True), batch=batch, loss=loss,
                  after_step=after_step, default_hparams=defaults, check=plan.check_config)


# --------------------------------------------------------------------------------------------
# iCaRL
# --------------------------------------------------------------------------------------------

class ICaRLState(NamedTuple):
    """iCaRL's method state: exemplars, the previous model, the exemplar class means."""

    memory: ReplayMemory
    previous: PreviousModel
    means: Array         # [C, D] normalised class means of the exemplars' features
    has_mean: Array      # bool [C]


def normalise(f: Array) -> Array:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    n = jnp.linalg.norm(f, axis=-1, keepdims=True)
    return f / jnp.maximum(n, jnp.finfo(f.dtype).tiny)


def herding_order(features: Array, members: Array, size: int) -> tuple[Array, Array]:
    """iCaRL's herding (Rebuffi et al. 2017, Algorithm 4): the first ``size`` examples of the
    ``members`` rows in the order that keeps the running mean of their (L2-normalised)
    ``features`` closest to the class mean; returns ``(indices [size], ok [size])``, ok False
    where the class has no example left."""
    f = normalise(features)
    mf = members.astype(f.dtype)
    mu = normalise(jnp.sum(f * mf[:, None], 0, keepdims=True) / jnp.maximum(jnp.sum(mf), 1))[0]

    def pick(k, carry):
        acc, taken, order, ok = carry
        cand = (acc[None] + f) / (k + 1).astype(f.dtype)
        dist = jnp.sum(jnp.square(cand - mu[None]), axis=-1)
        free = members & ~taken
        dist = jnp.where(free, dist, jnp.inf)
        i = jnp.argmin(dist)
        good = free[i]
        return (acc + jnp.where(good, f[i], 0.0), taken.at[i].set(taken[i] | good),
                order.at[k].set(i), ok.at[k].set(good))

    init = (jnp.zeros(f.shape[1], f.dtype), jnp.zeros(members.shape, bool),
            jnp.zeros((size,), jnp.int32), jnp.zeros((size,), bool))
    _, _, order, ok = jax.lax.fori_loop(0, size, pick, init)
    return order, ok


def exemplar_means(features: Array, classes: Array, valid: Array, num_classes: int
                   ) -> tuple[Array, Array]:
    """Normalised mean of the normalised ``features`` of each class (iCaRL's μ_y), ``[C, D]``, and
    which classes have exemplars."""
    f = normalise(features) * valid[:, None].astype(features.dtype)
    sums = jax.ops.segment_sum(f, classes, num_segments=num_classes)
    counts = jax.ops.segment_sum(valid.astype(jnp.int32), classes, num_segments=num_classes)
    return normalise(sums / jnp.maximum(counts, 1)[:, None].astype(f.dtype)), counts > 0


NME_FLOOR = -5.0   # score of a class without exemplars: below every −‖f − μ‖² ∈ [−4, 0]


def icarl(*, memory: str = "per_class", per_class: int | None = 100,
          capacity: int | None = None) -> Method:
    """iCaRL (Rebuffi et al. 2017) as in van de Ven et al.'s Class-IL code: each batch is drawn
    uniformly from the current task's data and the exemplars; the loss is a binary cross-entropy
    over the classes seen so far, with the previous model's sigmoid(logits / T) as the old
    classes' targets (``temperature`` T, default 2); exemplars chosen by herding on normalised
    features; prediction by the nearest mean of exemplars (through the ``predict`` hook), whose
    score is −‖f − μ_c‖² (classes without exemplars score −5). Class-IL only (``scenarios``):
    Task-IL's model has a head per task, and in Domain-IL every output is an old class from
    task 2 on, so the new tasks' labels never reach the loss. ``memory="class_balanced"`` gives
    iCaRL's own fixed total memory."""
    plan = memory_plan(memory, per_class, capacity)
    if plan.kind == "reservoir":
        raise ValueError("iCaRL chooses its exemplars by herding at task ends: memory must be "
                         "'per_class' or 'class_balanced'")
    if _is_empty(plan):
        raise ValueError("iCaRL needs exemplars: per_class / capacity must be > 0")

    def init(params, key, hparams, spec):
        if spec.num_heads != 1 or spec.num_outputs != spec.num_classes:
            raise ValueError(
                f"iCaRL is a class-incremental method: it needs a single-head model with one "
                f"output per class of the stream ({spec.num_classes}); the model has "
                f"{spec.num_heads} head(s) of {spec.num_outputs} outputs (use the 'class' "
                "scenario)")
        return ICaRLState(plan.build(spec)[0], _previous_model_init(params, key, hparams, spec),
                          jnp.zeros((spec.num_outputs, spec.feature_dim), jnp.float32),
                          jnp.zeros((spec.num_outputs,), bool))

    def batch(ctx: BatchContext, s: ICaRLState):
        cur = current_task_batch(ctx, None)
        k_mem, k_pick = jax.random.split(ctx.key)
        mrows, ok = mem.sample_memory(s.memory, k_mem, ctx.batch_size)
        n_mem = mem.num_stored(s.memory).astype(jnp.float32)
        p_mem = n_mem / (n_mem + ctx.count(ctx.task).astype(jnp.float32))
        use = ok & (jax.random.uniform(k_pick, (ctx.batch_size,)) < p_mem)
        return {k: jnp.where(use.reshape((-1,) + (1,) * (cur[k].ndim - 1)), mrows[k], cur[k])
                for k in CORE_KEYS}

    def loss(params, batch, s: ICaRLState, ctx: LossContext):
        T = get_hparam(ctx.hparams, "temperature", "icarl")
        k_cur, _ = jax.random.split(ctx.key)
        logits = ctx.model.train_logits_fn(params, batch, k_cur)
        owner = class_tasks(ctx.spec)
        seen = owner <= ctx.task
        old = (owner < ctx.task) & (s.previous.count > 0)
        teacher = jax.nn.sigmoid(jax.lax.stop_gradient(
            ctx.model.logits_fn(s.previous.params, batch)) / T)
        target = jax.nn.one_hot(batch["y"], logits.shape[-1], dtype=logits.dtype)
        target = jnp.where(old[None], teacher, target)
        bce = optax.sigmoid_binary_cross_entropy(logits, target)
        return jnp.mean(jnp.sum(jnp.where(seen[None], bce, 0.0), axis=-1)), {}

    def end_task(ctx: BoundaryContext):
        s: ICaRLState = ctx.mstate
        rows = ctx.task_rows(ctx.task)
        features_fn = ctx.model.features_fn
        assert features_fn is not None             # requires=("features_fn",)
        feats = features_fn(ctx.params, ctx.to_batch(rows))
        memory_state = store_finished_task(
            s.memory, plan, ctx, ctx.key,
            select=lambda r, members, size, key: herding_order(feats, members, size))
        mb = ctx.to_batch(core_rows({"x": memory_state.x, "label": memory_state.label,
                                     "task": memory_state.task}))
        means, has = exemplar_means(features_fn(ctx.params, mb), mb["y"],
                                    memory_state.valid, ctx.spec.num_outputs)
        previous = PreviousModel(ctx.params, s.previous.count + 1)
        return ctx.keep_params(ICaRLState(memory_state, previous, means, has))

    def predict(params, s: ICaRLState, batch, ctx: PredictContext):
        features_fn = ctx.model.features_fn
        assert features_fn is not None             # requires=("features_fn",)
        f = normalise(features_fn(params, batch))
        d2 = jnp.sum(jnp.square(f[:, None, :] - s.means[None]), axis=-1)
        return jnp.where(s.has_mean[None], -d2, NME_FLOOR)

    return Method("icarl", init=init, batch=batch, loss=loss, end_task=end_task,
                  predict=predict, default_hparams={"temperature": 2.0},
                  hparam_domains={"temperature": "positive"}, requires=("features_fn",),
                  scenarios=("class",), check=plan.check_config)


__all__ = ["ER_LOSSES", "MEMORY_KINDS", "MemoryPlan", "memory_plan", "core_rows",
           "store_finished_task", "with_memory_rows", "concat_replay_loss", "er", "agem", "gem",
           "GEM_REFERENCE_GRADS", "task_reference_grads",
           "lwf", "der", "derpp", "icarl", "PreviousModel", "LWF_WEIGHTINGS", "DISTILL_OUTPUTS",
           "DISTILL_REDUCTIONS", "class_tasks", "is_class_incremental", "softmax_width",
           "seen_class_logits", "num_seen_classes", "check_distill_options",
           "soft_cross_entropy", "ICaRLState", "normalise", "herding_order", "exemplar_means",
           "NME_FLOOR"]
