"""What a continual-learning method is to the trainer: a few pure functions, no class hierarchy.

A :class:`Method` is a NamedTuple of hooks; :func:`cljax.training.make_trainer` calls them and
never names a method. Every hook has a default, so a method states only what it changes. One
training step, with the hooks in the order the trainer calls them::

    rows   = batch(BatchContext, mstate)                  # which examples: current (+ memory)
    batch  = to_batch(rows)                               # normalised x, scenario labels y
    (loss, aux), grads = value_and_grad(loss)(params, batch, mstate, LossContext)
    extra  = optimizer_args(params, batch, mstate, LossContext)      # e.g. a memory gradient
    tx     = make_optimizer(hparams, base)                # rebuilt every step from hparams
    updates, opt_state = tx.update(grads, opt_state, params, task=task, **extra)  # task: int,
                                                          # for per-task schedules (stable SGD)
    params = params + updates
    params, opt_state, mstate = after_step(StepInfo)      # reservoir insertion, path integrals,
                                                          # masks or projections of the weights

before the first step of each task ``(params, opt_state, mstate) = begin_task(BoundaryContext)``
(what a task's data decides before training on it: VCL's coreset, held out of the update), and
at the end of each task ``(params, opt_state, mstate) = end_task(BoundaryContext)``;
evaluation calls ``predict(params, mstate, batch, PredictContext)`` (default: the model's logits).
Before anything runs, ``model(base_model, spec)`` may build the network the method trains from
the configured one (gates, extra columns, stochastic layers); default: the base model itself.

* ``mstate`` — the method's own state (anchors and importances, a replay memory, the previous
  model, exemplar means…): any pytree, built by ``init(params, key, hparams, spec)`` with shapes
  fixed for the whole stream (memories preallocated with a fill count), so one compilation serves
  every task and runs ``vmap``. It lives in :class:`cljax.training.TrainState` beside the
  optimizer state, so ``reset_optimizer`` never touches it.
* ``hparams`` — a dict of float arrays (one value per run under ``vmap``: a sweep is one
  program), the single source of truth for λ-like hyperparameters. ``make_optimizer`` reads them
  as closure arguments of optax factories; boundary functions read them from the context.
* ``rows`` — examples as stored: ``x`` in the stream's storage dtype (uint8 pixels, or float
  features), ``label`` the label *within its task* and ``task``, plus anything the method adds
  (loss weights, stored logits). A replay memory stores rows, not indices into the stream.
* ``spec`` (:class:`StreamSpec`) — what a method may need to size its state: example shape and
  storage dtype, number of tasks, classes per task, number of outputs and heads, label table.
* ``clock`` (:class:`Clock`, in every training context) — the global step, the step within the
  task and the steps the task has, as int32 arrays: annealing schedules (HAT's gate scale) and
  phases within a task (PackNet's retraining) read it; nothing recompiles when it advances.

Randomness: every hook gets its key from the context; the trainer derives them from the run's
key and the step counter (``fold_in``), so a run's results do not depend on how steps are split
into calls or on which other runs share the vmapped program. Evaluation has its own key
(``PredictContext.key``, per task and chunk: Monte Carlo prediction).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.data.scenarios import SCENARIOS
from cljax.nn.model import Model
from cljax.types import Array, Batch, LogitsFn, Params, PRNGKey

Rows = Mapping[str, Array]
Hparams = Mapping[str, Array]


class Clock(NamedTuple):
    """Where a step stands (int32 arrays; batched like the state under ``vmap``).

    ``step`` counts every step of the stream before this one (the run's global step);
    ``task_step`` the steps of the current task before this one (0 at its first step; at a task
    boundary, the steps the task took); ``task_steps`` the steps the task has in all.
    """

    step: Array
    task_step: Array
    task_steps: Array

    @property
    def progress(self) -> Array:
        """``task_step / task_steps`` as a float in [0, 1]: how far into the task."""
        return self.task_step.astype(jnp.float32) / jnp.maximum(self.task_steps, 1).astype(
            jnp.float32)


class StreamSpec(NamedTuple):
    """Static description of the stream and model a method runs on (for sizing its state).

    ``label_table`` (int32 ``[T, k]``, the scenario's target of (task, within-task label)) is an
    array and may be traced; everything else is a Python value. A class of the stream is a
    (task, within-task label) pair, numbered ``task · classes_per_task + label``.
    """

    example_shape: tuple[int, ...]
    storage_dtype: Any
    num_tasks: int
    classes_per_task: int
    num_outputs: int          # width of the model's logits
    num_heads: int            # 1 for a single-head model
    label_table: Array
    train_counts: tuple[int, ...] = ()   # real training examples of each task
    feature_dim: int | None = None       # width of Model.features_fn's output, if it has one
    task_masked: bool = False            # one head whose other tasks' logits are masked

    @property
    def num_classes(self) -> int:
        """Classes of the stream (task, within-task label) pairs: ``num_tasks × classes_per_task``."""
        return self.num_tasks * self.classes_per_task

    @property
    def task_dependent_logits(self) -> bool:
        """Whether an example's logits depend on its task: a head per task, or one head with
        the other tasks' classes masked (``task_masked``); False for one shared head."""
        return self.num_heads > 1 or self.task_masked

    @property
    def scenario(self) -> str | None:
        """The scenario the model's outputs make (van de Ven & Tolias 2019): ``"task"`` (a head
        per task), ``"domain"`` (one head of a task's classes), ``"class"`` (one head of every
        class), or None where the shapes do not tell (one task, or another layout)."""
        if self.num_heads > 1:
            return "task"
        if self.num_classes == self.classes_per_task:
            return None
        if self.num_outputs == self.classes_per_task:
            return "domain"
        return "class" if self.num_outputs == self.num_classes else None


class BatchContext(NamedTuple):
    """What ``Method.batch`` may use.

    ``draw(key, tasks)`` returns one training example of each entry of ``tasks`` (``int [n]``),
    drawn uniformly with replacement, as rows; ``gather(tasks, idx)`` the examples ``idx`` of
    ``tasks`` (both ``int [n]``; a method's own sampling rule, e.g. one that skips a held-out
    coreset); ``task_rows(task)`` returns the whole stored task (rows ``[N, ...]``, of which the
    first ``count(task)`` are real). ``key`` is for the method's own choices (which tasks, which
    memory slots); ``data_key`` is the key the default recipes hand to ``draw`` for the current
    task's examples. ``current(key)`` returns ``batch_size`` examples of the current task drawn
    by the run's sampling rule (i.i.d. or shuffled epochs, :mod:`cljax.training.sampling`;
    None: i.i.d. through ``draw``), what :func:`current_task_batch` uses. ``shuffle(pool,
    position, n)`` (None under i.i.d. sampling) returns the indices (``int32 [batch_size]``, in
    ``[0, n)``) that the run's shuffled-epoch rule gives the batch at ``position`` (in batches
    since the passes began) of a pool of ``n`` examples whose order is keyed by ``pool`` (an int:
    ``current`` is ``shuffle(task, task_step, count(task))``) — what a method that samples a pool
    of its own (the union of tasks, :func:`union_batch`) passes over.
    """

    key: PRNGKey
    data_key: PRNGKey
    task: Array
    batch_size: int
    hparams: Hparams
    spec: StreamSpec
    draw: Callable[[PRNGKey, Array], Rows]
    task_rows: Callable[[Array], Rows]
    count: Callable[[Array], Array]  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, on purpose
    clock: Clock
    gather: Callable[[Array, Array], Rows] | None = None
    current: Callable[[PRNGKey], Rows] | None = None
    shuffle: Callable[[Array | int, Array | int, Array | int], Array] | None = None


class LossContext(NamedTuple):
    """What ``Method.loss`` / ``optimizer_args`` / ``value_and_grad`` may use."""

    model: Model
    key: PRNGKey
    hparams: Hparams
    task: Array
    spec: StreamSpec
    to_batch: Callable[[Rows], Batch]
    clock: Clock


class StepInfo(NamedTuple):
    """What ``Method.after_step`` sees of the step just taken; it returns ``(params, opt_state,
    mstate)`` (:meth:`keep_params` when it changes only the method state)."""

    rows: Rows
    batch: Batch
    aux: Any
    grads: Params           # the gradient handed to the optimizer
    updates: Params         # the update applied (Δθ)
    params: Params          # the parameters after the step
    task: Array
    key: PRNGKey
    hparams: Hparams
    spec: StreamSpec
    opt_state: Any          # the optimizer state after the step
    mstate: Any             # the method state before after_step
    clock: Clock            # the step just taken (``task_step`` its index within the task)

    def keep_params(self, mstate: Any) -> tuple[Params, Any, Any]:
        """``(params, opt_state, mstate)``: the step's parameters and optimizer state, kept."""
        return self.params, self.opt_state, mstate


class BoundaryContext(NamedTuple):
    """Everything a task-boundary function may use.

    ``sample_batch(task, key, size)`` draws ``size`` training examples of ``task`` (a traced int)
    as a model-ready batch; ``size`` must be a Python int. ``task_rows`` / ``count`` /
    ``to_batch`` as in :class:`BatchContext` / :class:`LossContext`. ``examples_sharding``: how
    the run splits a batch's examples over devices (data parallelism within a run; ``None`` on
    one device) — pass it as ``sharding=`` to the estimators and curvature tools so that their
    chunks stay on the devices that hold them (:mod:`cljax.chunking`).
    """

    params: Params
    opt_state: Any
    mstate: Any
    hparams: Hparams
    task: Array
    key: PRNGKey
    model: Model
    spec: StreamSpec
    sample_batch: Callable[[Array, PRNGKey, int], Batch]
    task_rows: Callable[[Array], Rows]
    count: Callable[[Array], Array]  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, on purpose
    to_batch: Callable[[Rows], Batch]
    clock: Clock            # ``task_step``: the steps the ending task took
    examples_sharding: Any = None

    @property
    def logits_fn(self) -> LogitsFn:
        return self.model.logits_fn

    def keep_params(self, mstate: Any) -> tuple[Params, Any, Any]:
        """``(params, opt_state, mstate)``: the context's parameters and optimizer state, kept."""
        return self.params, self.opt_state, mstate


class PredictContext(NamedTuple):
    """What ``Method.predict`` may use at evaluation.

    ``tasks`` is the task id of each example of the batch (``int32 [B]``, the same as
    ``batch["task"]``): a batch may mix tasks, so a prediction must never assume one task per
    batch. ``key`` is this batch's own key (Monte Carlo prediction), derived from the run's key,
    its step and the batch's position in the evaluation.
    """

    model: Model
    spec: StreamSpec
    key: PRNGKey
    tasks: Array


# --------------------------------------------------------------------------------------------
# Default hooks.
# --------------------------------------------------------------------------------------------

def no_state(params: Params, key: PRNGKey, hparams: Hparams, spec: StreamSpec) -> tuple:
    """A method without state of its own."""
    del params, key, hparams, spec
    return ()


def current_task_batch(ctx: BatchContext, mstate: Any) -> Rows:
    """``batch_size`` examples of the current task (sequential fine-tuning), drawn by the run's
    sampling rule (``ctx.current``; i.i.d. without one)."""
    del mstate
    if ctx.current is not None:
        return ctx.current(ctx.data_key)
    tasks = jnp.full((ctx.batch_size,), ctx.task, dtype=jnp.int32)
    return ctx.draw(ctx.data_key, tasks)


def union_batch(ctx: BatchContext, last: Array | int, *, pool: Array | int,
                position: Array | int) -> Rows:
    """``batch_size`` examples of the union of tasks ``0..last``, every example of it equally
    likely (a concatenation of the tasks' training sets, as a PyTorch ``ConcatDataset``): i.i.d.
    with replacement under i.i.d. sampling; else the run's shuffled passes over the union
    (``ctx.shuffle``), its order keyed by ``pool`` and this batch at ``position`` batches into
    the passes. Tasks of unequal size weigh by their size (:func:`all_tasks_batch` weighs every
    task alike)."""
    if ctx.gather is None:
        raise ValueError("union_batch needs ctx.gather (the trainer's indexed draw); got None")
    num_tasks = ctx.spec.num_tasks
    ids = jnp.arange(num_tasks, dtype=jnp.int32)
    counts = jnp.where(ids <= last, ctx.count(ids), 0).astype(jnp.int32)
    ends = jnp.cumsum(counts)
    if ctx.shuffle is None:
        flat = jax.random.randint(ctx.data_key, (ctx.batch_size,), 0, ends[-1], dtype=jnp.int32)
    else:
        flat = ctx.shuffle(pool, position, ends[-1])
    tasks = jnp.minimum(jnp.searchsorted(ends, flat, side="right"), num_tasks - 1)
    tasks = tasks.astype(jnp.int32)
    return ctx.gather(tasks, flat - (ends[tasks] - counts[tasks]))


def all_tasks_batch(ctx: BatchContext, mstate: Any) -> Rows:
    """Each example from a task drawn uniformly among 0..task (joint training on the whole
    stored data of the tasks seen: the upper bound, not a bounded memory)."""
    del mstate
    tasks = jax.random.randint(ctx.key, (ctx.batch_size,), 0, ctx.task + 1, dtype=jnp.int32)
    return ctx.draw(ctx.data_key, tasks)


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy with integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def task_loss(params: Params, batch: Batch, mstate: Any, ctx: LossContext) -> tuple[Array, dict]:
    """Mean cross-entropy of the model (train mode: dropout from the first half of the key)."""
    del mstate
    k_drop, _ = jax.random.split(ctx.key)
    return cross_entropy(ctx.model.train_logits_fn(params, batch, k_drop), batch["y"]), {}


def no_optimizer_args(params: Params, batch: Batch, mstate: Any, ctx: LossContext) -> dict:
    """No extra arguments for the optimizer."""
    del params, batch, mstate, ctx
    return {}


def keep_after_step(info: StepInfo) -> tuple[Params, Any, Any]:
    """A step that leaves the parameters, optimizer state and method state as they are."""
    return info.keep_params(info.mstate)


def keep_state(ctx: BoundaryContext) -> tuple[Params, Any, Any]:
    """A task boundary that changes nothing."""
    return ctx.keep_params(ctx.mstate)


def base_model(model: Model, spec: StreamSpec) -> Model:
    """The configured model, unchanged (the default ``Method.model``)."""
    del spec
    return model


def base_only(hparams: Hparams, base: optax.GradientTransformation
              ) -> optax.GradientTransformation:
    """The base optimizer alone (no CL transform)."""
    del hparams
    return base


class ConfigPlan(NamedTuple):
    """What the config check knows of one scenario of a run before any data is loaded
    (``Method.check`` receives it). ``None``: not known without loading the data.

    ``train_examples`` is the stream's training examples over all tasks, from the dataset's
    metadata (tfds builder info; no image decoded); ``optimizer`` the config's ``optimizer``
    entry (``{"name": ..., "learning_rate": ..., ...}``).
    """

    scenario: str
    num_tasks: int | None
    classes_per_task: int | None
    train_examples: int | None
    optimizer: Mapping[str, Any]
    steps: int
    batch_size: int

    @property
    def num_classes(self) -> int | None:
        """The stream's classes, ``num_tasks × classes_per_task`` (as :class:`StreamSpec`)."""
        if self.num_tasks is None or self.classes_per_task is None:
            return None
        return self.num_tasks * self.classes_per_task


def no_check(plan: ConfigPlan) -> None:
    """A method that any config of its supported scenarios suits (the default
    ``Method.check``)."""
    del plan


class Method(NamedTuple):
    """A CL method: a name and the hooks of the module docstring (each with a default).

    ``value_and_grad(loss, params, mstate, ctx)``, when given, replaces
    ``jax.value_and_grad(loss, has_aux=True)(params)`` (``loss(params) -> (loss, aux)``): NCL
    K-FAC preconditions inside the backward pass. ``predict`` None means the model's
    ``logits_fn``. ``requires`` names the :class:`cljax.nn.Model` functions the method calls
    beyond the logits (``"features_fn"``, ``"all_heads_fn"``, ``"apply_fn"``), checked on the
    model the method trains. ``hparam_domains`` maps a hyperparameter to "positive",
    "unit_interval" or "closed_unit_interval" (default "nonnegative");
    :func:`cljax.training.run_stream` checks the values given. ``model(base, spec)`` builds the
    network the method trains from the configured one (``spec`` describes the stream under the
    base model): RGO adds its feature encoding layer, HAT its gates, progressive networks their
    columns, BI-R its decoder; the trainer calls it once per traced function, so it must be pure
    and cheap (build modules, no arrays).

    Before any data is loaded the config check (:func:`cljax.experiment.validate_config`)
    refuses a scenario not in ``scenarios`` and calls ``check(plan)`` with a
    :class:`ConfigPlan` of every scenario of the run: a method raises ``ValueError`` there for
    a setting it cannot run (a memory larger than the stream, an optimizer it does not
    support), so the user learns it in a second, not after loading and compiling.

    ``samples(mstate)``, when given, returns examples the method generated after each task
    (``[T, n, *example]``, in the model's input space): a generative replay's samples, which
    the experiment shows in the run's outputs (``samples_<scenario>.png``).
    """

    name: str
    make_optimizer: Callable[[Hparams, optax.GradientTransformation],
                             optax.GradientTransformation] = base_only
    init: Callable[[Params, PRNGKey, Hparams, StreamSpec], Any] = no_state
    batch: Callable[[BatchContext, Any], Rows] = current_task_batch
    loss: Callable[[Params, Batch, Any, LossContext], tuple[Array, Any]] = task_loss
    optimizer_args: Callable[[Params, Batch, Any, LossContext], dict] = no_optimizer_args
    after_step: Callable[[StepInfo], tuple[Params, Any, Any]] = keep_after_step
    end_task: Callable[[BoundaryContext], tuple[Params, Any, Any]] = keep_state
    begin_task: Callable[[BoundaryContext], tuple[Params, Any, Any]] = keep_state
    predict: Callable[[Params, Any, Batch, PredictContext], Array] | None = None
    value_and_grad: Callable[..., tuple[tuple[Array, Any], Params]] | None = None
    default_hparams: Mapping[str, float] = {}
    requires: tuple[str, ...] = ()
    hparam_domains: Mapping[str, str] = {}
    model: Callable[[Model, StreamSpec], Model] = base_model
    scenarios: tuple[str, ...] = SCENARIOS
    check: Callable[[ConfigPlan], None] = no_check
    samples: Callable[[Any], Array] | None = None


HPARAM_DOMAINS = ("nonnegative", "positive", "unit_interval", "closed_unit_interval")


def check_hparam(method: Method, name: str, value: Any, *, label: str | None = None) -> None:
    """A concrete value of hyperparameter ``name`` lies in its declared domain
    (``Method.hparam_domains``: "nonnegative" (the default), "positive" or "unit_interval"
    (0, 1]) and is finite; the error names it as ``label`` (default ``hparams[name]``) of the
    method."""
    from cljax.validation import check_in_unit_interval, check_nonnegative, check_positive

    checks: dict[str, Callable[..., None]] = {"nonnegative": check_nonnegative, "positive": check_positive,
              "unit_interval": check_in_unit_interval,
              "closed_unit_interval": partial(check_in_unit_interval, closed_left=True)}
    domain = method.hparam_domains.get(name, "nonnegative")
    if domain not in checks:
        raise ValueError(f"method {method.name!r} declares hyperparameter {name!r} with "
                         f"domain {domain!r}; domains are {HPARAM_DOMAINS}")
    checks[domain](value, name=f"{label or f'hparams[{name!r}]'} of method {method.name!r}")


def check_hparams(method: Method, hparams: Mapping[str, Any]) -> None:
    """Concrete hyperparameter values lie in their declared domains (:func:`check_hparam`),
    finite everywhere."""
    for name, value in hparams.items():
        check_hparam(method, name, value)


def check_scenario(method: Method, scenario: str) -> None:
    """``scenario`` is one the method supports (``Method.scenarios``)."""
    if scenario not in method.scenarios:
        raise ValueError(f"method {method.name!r} does not support the {scenario!r} scenario "
                         f"(it supports {', '.join(method.scenarios)}): choose its scenarios "
                         f"with --scenarios / config['scenarios']")


def get_hparam(hparams: Hparams, name: str, method: str) -> Array:
    """``hparams[name]`` with an error naming the method when it is missing."""
    if name not in hparams:
        raise KeyError(f"method {method!r} needs the hyperparameter {name!r}; got "
                       f"{sorted(hparams)} (set it in the config's 'hparams' or with --sweep)")
    return hparams[name]


__all__ = ["Method", "StreamSpec", "Clock", "BatchContext", "LossContext", "StepInfo",
           "BoundaryContext", "PredictContext", "Rows", "Hparams", "no_state", "current_task_batch",
           "all_tasks_batch", "union_batch", "cross_entropy", "task_loss", "no_optimizer_args",
           "keep_after_step", "keep_state", "base_only", "base_model", "get_hparam", "check_hparams",
           "HPARAM_DOMAINS", "ConfigPlan", "no_check", "check_hparam", "check_scenario"]
