"""The pure functions of one run: init, one step, a task's steps in a ``lax.scan``, the task
boundary and evaluation — the method protocol of :mod:`cljax.methods.base`, called in order.

Nothing here is jitted or vmapped (:func:`cljax.training.run_stream` does both), and nothing
knows where the examples live: a step and a boundary read them through a :class:`Feed`
(:func:`device_feed` gathers them from the device arrays of :class:`~cljax.training.StreamData`;
the host pipeline, :mod:`cljax.training.executors`, feeds rows gathered on the host), and
evaluation reads one task's test rows at a time, so the same functions serve both paths.

Randomness: step s of a run uses ``fold_in(key, s)``; a boundary ``fold_in(fold_in(key, s),
2³⁰)`` (a task's beginning ``2³⁰ + 2``); the evaluation of task t, chunk c
``fold_in(fold_in(fold_in(fold_in(key, s), 2³⁰ + 1), t), c)``; with shuffled epochs the order
of task t's epoch e is drawn by ``fold_in(fold_in(fold_in(key, 2³⁰ + 3), t), e)``; a step's
augmentation (``augment``) by ``fold_in(fold_in(key, s), 2³⁰ + 4)`` — so results
do not depend on how steps are split into calls, nor on which other runs share the program.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import chunking
from cljax.data.augment import AUGMENTATIONS, augment_images
from cljax.methods.base import (
    BatchContext,
    BoundaryContext,
    Clock,
    LossContext,
    Method,
    PredictContext,
    Rows,
    StepInfo,
    StreamSpec,
    check_scenario,
    keep_state,
)
from cljax.methods.base import base_model as unchanged_model
from cljax.nn.model import Model, mask_task_logits
from cljax.training.data import StreamData, gather_rows, stream_spec, to_batch
from cljax.training.sampling import SAMPLINGS, epoch_indices
from cljax.types import Array, Params, PRNGKey
from cljax.validation import check_choice, check_positive_int

BOUNDARY_SALT = 1 << 30
EVALUATION_SALT = BOUNDARY_SALT + 1
BEGIN_SALT = BOUNDARY_SALT + 2
SHUFFLE_SALT = BOUNDARY_SALT + 3
AUGMENT_SALT = BOUNDARY_SALT + 4


class TrainState(NamedTuple):
    """One run's whole state (a pytree; vmapped runs stack it along a leading axis)."""

    params: Params
    opt_state: Any          # state of method.make_optimizer(hparams, optimizer)
    mstate: Any             # the method's own state (Method.init): memories, anchors, ...
    hparams: Mapping[str, Array]
    step: Array             # global step counter over the stream (int32)
    key: PRNGKey            # the run's key; step s uses fold_in(key, s)
    task_step: Array        # steps taken in the current task (int32; 0 after a boundary)


class Feed(NamedTuple):
    """Where a step's or a boundary's training examples come from.

    ``gather(tasks, idx)`` returns the stored rows of examples ``idx`` of ``tasks`` (both
    ``int32 [n]``); ``gather_task(task, idx)`` the same for one task (a scalar; a boundary's
    draws and whole-task reads); ``rows_per_task`` the stored rows of a task (N, padding
    included: what a whole-task read returns).
    """

    gather: Callable[[Array, Array], Rows]
    gather_task: Callable[[Array, Array], Rows]
    rows_per_task: int


def device_feed(data: StreamData) -> Feed:
    """Rows gathered from the stream's training arrays on the device."""
    def gather_task(task, idx):
        return gather_rows(data.train, jnp.full(idx.shape, task, jnp.int32), idx)

    return Feed(lambda tasks, idx: gather_rows(data.train, tasks, idx), gather_task,
                int(data.train.y.shape[1]))


def task_rows(feed: Feed, task: Array) -> Rows:
    """Every stored row of ``task`` (``[N, ...]``, the first ``count(task)`` real)."""
    return feed.gather_task(task, jnp.arange(feed.rows_per_task))


def _check_requires(method: Method, model: Model) -> None:
    for name in method.requires:
        if getattr(model, name, None) is None:
            raise ValueError(f"method {method.name!r} needs the model's {name} (a flax module "
                             f"whose __call__ takes output='features'|'all_heads', e.g. "
                             f"cljax.nn.MLP); this model has none")


class Trainer(NamedTuple):
    """The pure functions of one run, as methods of its static settings (build it with
    :func:`make_trainer`; not jitted, not vmapped: :func:`run_stream` does both).

    ``fit`` / ``end_task`` / ``evaluate`` read the device arrays of the data; ``step`` /
    ``draw`` / ``boundary`` / ``evaluate_task`` take the examples from a :class:`Feed` or as
    given rows (what the host pipeline uses). ``model(data)`` is the network the method trains
    (``Method.model`` applied to the configured ``base_model``).
    """

    base_model: Model
    method: Method
    optimizer: optax.GradientTransformation
    batch_size: int
    eval_chunk: int = 1000
    reset_optimizer: bool = False
    sampling: str = "iid"
    task_epochs: float | None = None
    augment: str = "none"

    def model(self, data: StreamData) -> Model:
        """The network the method trains on ``data``."""
        return self.model_and_spec(data)[0]

    def model_and_spec(self, data: StreamData) -> tuple[Model, StreamSpec]:
        """The method's model for ``data`` and the stream's spec under it."""
        base, method = self.base_model, self.method
        if method.model is unchanged_model:
            built = base
        else:
            built = method.model(base, stream_spec(base, data))
            _check_requires(method, built)
        if data.logit_mask is not None:     # masked Task-IL: every logit of the method's model
            built = mask_task_logits(built, data.logit_mask)
        return built, stream_spec(built, data)

    def tx(self, hparams: Mapping[str, Array]) -> optax.GradientTransformationExtraArgs:
        """The update rule, rebuilt from the run's hyperparameters (as optax closures)."""
        return optax.with_extra_args_support(self.method.make_optimizer(hparams, self.optimizer))

    def init(self, key: PRNGKey, hparams: Mapping[str, Array], data: StreamData) -> TrainState:
        """A run's initial state: the model's parameters, optimizer and method state."""
        k_init, k_run = jax.random.split(key)
        net, spec = self.model_and_spec(data)
        if spec.scenario is not None:   # a method refuses a scenario it cannot run
            check_scenario(self.method, spec.scenario)
        dummy = {"x": jnp.zeros((1, *spec.example_shape), jnp.float32),
                 "task": jnp.zeros((1,), jnp.int32)}
        params = net.init(k_init, dummy)
        hparams = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
        mstate = self.method.init(params, jax.random.fold_in(key, 2), hparams, spec)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(params, self.tx(hparams).init(params), mstate, hparams, zero, k_run,
                          zero)

    def _batch_context(self, state, data, task, clock, feed, spec) -> BatchContext:
        k_task, k_idx, _ = jax.random.split(jax.random.fold_in(state.key, clock.step), 3)

        def draw(k, tasks):
            return feed.gather(tasks, jax.random.randint(k, tasks.shape, 0, data.train.n[tasks]))

        current = shuffle = None
        if self.sampling != "iid":
            if self.sampling == "shuffled_drop_last" and min(data.train_counts,
                                                             default=1) < self.batch_size:
                raise ValueError(f"sampling='shuffled_drop_last' needs every task to hold at "
                                 f"least batch_size={self.batch_size} examples; the smallest "
                                 f"holds {min(data.train_counts)}")

            def shuffle(pool, position, n):
                # one order per (run, pool, epoch): the run's key, not the step's
                order = jax.random.fold_in(jax.random.fold_in(state.key, SHUFFLE_SALT), pool)
                return epoch_indices(order, position, self.batch_size, n,
                                     drop_last=self.sampling == "shuffled_drop_last")

            def current(k):
                del k    # the order is the run's, not the step's
                idx = shuffle(task, clock.task_step, data.train.n[task])
                return feed.gather(jnp.full((self.batch_size,), task, jnp.int32), idx)

        return BatchContext(k_task, k_idx, task, self.batch_size, state.hparams, spec, draw,
                            lambda t: task_rows(feed, t), lambda t: data.train.n[t],
                            clock, feed.gather, current, shuffle)

    def draw(self, state: TrainState, data: StreamData, task: Array, clock: Clock,
             feed: Feed) -> Rows:
        """The rows the step at ``clock`` draws (the method's batch hook alone)."""
        ctx = self._batch_context(state, data, task, clock, feed, self.model_and_spec(data)[1])
        return self.method.batch(ctx, state.mstate)

    def own_steps(self, data: StreamData, task: Array) -> Array | None:
        """With ``task_epochs``: the steps ``task`` trains, ``task_epochs`` passes over its own
        examples (whole batches only under ``"shuffled_drop_last"``), else None."""
        if self.task_epochs is None:
            return None
        n = data.train.n[task].astype(jnp.float32)
        if self.sampling == "shuffled_drop_last":
            per_epoch = jnp.maximum(jnp.floor(n / self.batch_size), 1.0)
            steps = jnp.ceil(self.task_epochs * per_epoch)
        else:
            steps = jnp.ceil(self.task_epochs * n / self.batch_size)
        return jnp.maximum(steps, 1.0).astype(jnp.int32)

    def step(self, state: TrainState, data: StreamData, task: Array, task_steps: Array | int,
             feed: Feed) -> tuple[TrainState, Array]:
        """One training step of ``task`` (of ``task_steps``) on rows from ``feed``. With
        ``task_epochs`` a task has its own number of steps (:meth:`own_steps`, at most
        ``task_steps``): the steps past it change nothing (their loss is still reported)."""
        own = self.own_steps(data, task)
        if own is None:
            return self._step(state, data, task, task_steps, feed)
        new, loss = self._step(state, data, task, jnp.minimum(own, task_steps), feed)
        active = state.task_step < own
        kept = jax.tree.map(lambda a, b: jax.lax.select(active, a, b),
                            (new.params, new.opt_state, new.mstate, new.step, new.task_step),
                            (state.params, state.opt_state, state.mstate, state.step,
                             state.task_step))
        params, opt_state, mstate, step, task_step = kept
        return new._replace(params=params, opt_state=opt_state, mstate=mstate, step=step,
                            task_step=task_step), loss

    def _step(self, state: TrainState, data: StreamData, task: Array, task_steps: Array | int,
              feed: Feed) -> tuple[TrainState, Array]:
        method = self.method
        net, spec = self.model_and_spec(data)
        clock = Clock(state.step, state.task_step, jnp.asarray(task_steps, jnp.int32))
        key = jax.random.fold_in(state.key, state.step)
        _, _, k_loss = jax.random.split(key, 3)
        k_opt, k_after = jax.random.split(jax.random.fold_in(key, 3))
        rows = method.batch(self._batch_context(state, data, task, clock, feed, spec),
                            state.mstate)
        batch = to_batch(data, rows)
        if self.augment != "none":
            batch = {**batch, "x": augment_images(
                batch["x"], jax.random.fold_in(key, AUGMENT_SALT), self.augment)}
        lctx = LossContext(net, k_loss, state.hparams, task, spec, lambda r: to_batch(data, r),
                           clock)

        def loss_fn(p):
            return method.loss(p, batch, state.mstate, lctx)

        if method.value_and_grad is None:
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        else:
            (loss, aux), grads = method.value_and_grad(loss_fn, state.params, state.mstate, lctx)
        extra = method.optimizer_args(state.params, batch, state.mstate, lctx._replace(key=k_opt))
        if "task" in extra:
            raise ValueError(f"method {method.name!r}: optimizer_args returned the key 'task', "
                             f"which the trainer hands every update (the current task); "
                             f"name the method's argument otherwise")
        updates, opt_state = self.tx(state.hparams).update(grads, state.opt_state, state.params,
                                                           task=task, **extra)
        params = optax.apply_updates(state.params, updates)
        params, opt_state, mstate = method.after_step(StepInfo(
            rows, batch, aux, grads, updates, params, task, k_after, state.hparams, spec,
            opt_state, state.mstate, clock))
        return state._replace(params=params, opt_state=opt_state, mstate=mstate,
                              step=state.step + 1, task_step=state.task_step + 1), loss

    def fit(self, state: TrainState, data: StreamData, task: Array, num_steps: int,
            task_steps: Array | int | None = None) -> tuple[TrainState, Array]:
        """``num_steps`` (static) steps on ``task`` in one ``lax.scan``, examples gathered on the
        device; returns the per-step losses. ``task_steps``: the steps the task has in all
        (the clock's; default ``num_steps``, one call for the whole task)."""
        total = num_steps if task_steps is None else task_steps
        feed = device_feed(data)
        return jax.lax.scan(lambda s, _: self.step(s, data, task, total, feed), state, None,
                            length=num_steps)

    def boundary(self, state: TrainState, data: StreamData, task: Array,
                 feed: Feed, *, begin: bool = False) -> TrainState:
        """The method's ``end_task`` (``begin``: its ``begin_task``, before the task's first
        step) with the task's examples from ``feed``."""
        net, spec = self.model_and_spec(data)
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.step),
                                 BEGIN_SALT if begin else BOUNDARY_SALT)
        opt_state = (self.tx(state.hparams).init(state.params)
                     if self.reset_optimizer and not begin else state.opt_state)

        def sample_batch(t, k, size):
            idx = jax.random.randint(k, (size,), 0, data.train.n[t])
            return to_batch(data, feed.gather_task(t, idx))

        ctx = BoundaryContext(state.params, opt_state, state.mstate, state.hparams, task, key,
                              net, spec, sample_batch, lambda t: task_rows(feed, t),
                              lambda t: data.train.n[t], lambda r: to_batch(data, r),
                              Clock(state.step, state.task_step, state.task_step),
                              getattr(data, "batch_sharding", None))
        hook = self.method.begin_task if begin else self.method.end_task
        params, opt_state, mstate = hook(ctx)
        return state._replace(params=params, opt_state=opt_state, mstate=mstate,
                              task_step=jnp.zeros_like(state.task_step))

    @property
    def has_begin(self) -> bool:
        """Whether the method has a ``begin_task`` (the task loop calls it only then)."""
        return self.method.begin_task is not keep_state

    def end_task(self, state: TrainState, data: StreamData, task: Array) -> TrainState:
        """The task boundary, reading the device arrays of ``data``."""
        return self.boundary(state, data, task, device_feed(data))

    def begin_task(self, state: TrainState, data: StreamData, task: Array) -> TrainState:
        """The method's ``begin_task`` of ``task``, reading the device arrays of ``data``."""
        return self.boundary(state, data, task, device_feed(data), begin=True)

    def evaluate_task(self, state: TrainState, data: StreamData, t: Array,
                      test_rows: tuple[Array | np.ndarray, Array | np.ndarray]
                      ) -> tuple[Array, Array]:
        """Accuracy and mean loss of task ``t`` on its test rows ``(x [N, ...], label [N])``
        (N a multiple of the evaluation chunk; rows past ``data.test.n[t]`` are padding),
        through the method's ``predict`` hook (the model's logits by default)."""
        x_t, y_t = test_rows
        N = y_t.shape[0]
        chunk = min(self.eval_chunk, N)
        if N % chunk:
            raise ValueError(f"the test arrays hold {N} examples per task, not a multiple of "
                             f"eval_chunk={chunk}: pass the same eval_chunk to prepare_data and "
                             "make_trainer")
        net, spec = self.model_and_spec(data)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
            state.key, state.step), EVALUATION_SALT), t)

        # with the examples split over devices, each device keeps its own partial sums (the
        # carry [D]), added up once after the loop: no collective inside it
        sharding = getattr(data, "batch_sharding", None)
        shards = chunking.shard_count(sharding)
        split = shards if chunk % shards == 0 else 1

        def per_device(v):
            part = jnp.sum(v.reshape(split, -1), axis=1)
            return part if split == 1 else jax.lax.with_sharding_constraint(part, sharding)

        def one_chunk(carry, c):
            idx = c * chunk + jnp.arange(chunk)
            tasks = jnp.full((chunk,), t, jnp.int32)
            batch = to_batch(data, {"x": x_t[idx], "label": y_t[idx], "task": tasks})
            if self.method.predict is None:
                logits = net.logits_fn(state.params, batch)
            else:
                pctx = PredictContext(net, spec, jax.random.fold_in(key, c), tasks)
                logits = self.method.predict(state.params, state.mstate, batch, pctx)
            valid = idx < data.test.n[t]
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
            correct = jnp.argmax(logits, -1) == batch["y"]
            return (carry[0] + per_device(correct * valid),
                    carry[1] + per_device(nll * valid)), None

        zero = jnp.zeros((split,), jnp.float32)
        (hits, nll), _ = jax.lax.scan(one_chunk, (zero, zero), jnp.arange(N // chunk))
        return jnp.sum(hits) / data.test.n[t], jnp.sum(nll) / data.test.n[t]

    def evaluate(self, state: TrainState, data: StreamData) -> tuple[Array, Array]:
        """Accuracy and mean loss on every task's test set, ``[T]`` each."""
        test = data.test
        return jax.lax.map(lambda t: self.evaluate_task(state, data, t, (test.x[t], test.y[t])),
                           jnp.arange(test.y.shape[0]))


def make_trainer(model: Model, method: Method, *, optimizer: optax.GradientTransformation,
                 batch_size: int, eval_chunk: int = 1000,
                 reset_optimizer: bool = False, sampling: str = "iid",
                 task_epochs: float | None = None, augment: str = "none") -> Trainer:
    """Build the per-run training functions (the step of :mod:`cljax.methods.base`).

    Args:
      model: the configured network (:func:`cljax.nn.as_model`); the method may build the one
        it trains from it (``Method.model``).
      method: the CL method; it builds the update rule around ``optimizer``.
      optimizer: the base optax optimizer (Adam in the van de Ven protocols).
      batch_size: current-task examples per step (a method may add memory examples).
      eval_chunk: test examples per evaluation chunk (bounds memory).
      reset_optimizer: re-initialise the optimizer state at each task boundary, before the
        method's boundary function (the method state is kept).
      sampling: how a step draws the current task's examples (:data:`SAMPLINGS`): ``"iid"``
        (uniformly with replacement), ``"shuffled"`` (epochs of shuffled passes over the task's
        own examples) or ``"shuffled_drop_last"`` (:mod:`cljax.training.sampling`); a method's
        other draws (memories, past tasks) stay its own.
      task_epochs: each task trains ``task_epochs`` passes over its own examples
        (:meth:`Trainer.own_steps`): a task's steps past them (the stream's static steps per
        task are the largest task's) change nothing. None (the default): every task trains all
        the steps it is given.
      augment: what a training step does to its batch's images before the loss
        (:data:`cljax.data.augment.AUGMENTATIONS`): ``"none"``, or ``"crop_flip"`` (random
        crops of the normalised images zero-padded by 4 pixels — the mean pixel under mean/std
        normalisation, where torchvision pads black before normalising — and random
        horizontal flips). The rows a
        method draws itself inside its loss or at a boundary (memories, Fisher examples) and
        evaluation see the images as they are.
    """
    check_choice(sampling, SAMPLINGS, name="sampling")
    check_choice(augment, AUGMENTATIONS, name="augment")
    check_positive_int(batch_size, name="batch_size")
    check_positive_int(eval_chunk, name="eval_chunk")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation; got {type(optimizer)}")
    if not isinstance(method, Method):
        raise TypeError(f"method must be a cljax.methods.Method; got {type(method).__name__}")
    if method.model is unchanged_model:
        _check_requires(method, model)
    if task_epochs is not None and (isinstance(task_epochs, bool) or
                                    not isinstance(task_epochs, (int, float))
                                    or not task_epochs > 0):
        raise ValueError(f"task_epochs must be None or a number > 0 (passes over each task's "
                         f"examples); got {task_epochs!r}")
    return Trainer(model, method, optimizer, batch_size, eval_chunk, bool(reset_optimizer),
                   sampling, None if task_epochs is None else float(task_epochs), augment)


__all__ = ["TrainState", "Feed", "Trainer", "device_feed", "task_rows", "make_trainer",
           "BOUNDARY_SALT", "EVALUATION_SALT", "BEGIN_SALT", "SHUFFLE_SALT", "AUGMENT_SALT"]
