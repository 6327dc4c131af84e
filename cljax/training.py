"""Jitted, scanned, vmapped training over a task stream.

* :func:`make_trainer` turns a model, a :class:`~cljax.methods.Method` and a base optax optimizer
  into pure functions: ``init``, ``fit`` (all steps of a task in one ``lax.scan``, batches drawn on
  device with ``fold_in`` keys), ``evaluate`` (every task's test set, in chunks) and ``end_task``.
* :func:`run_stream` runs them over a stream for many runs at once: seeds (and, for methods with
  hyperparameters, hyperparameter values) are a ``jax.vmap`` axis, so R runs are one compiled
  program. The task index is a traced argument: one compilation serves every task.

Randomness: run r has its own key; step s of the run uses ``fold_in(key_r, s)``, so results do not
depend on how the steps are split into calls, nor on which other runs share the vmapped program.

Scale-out (both off by default, when everything is one device's): ``run_stream(devices=...)`` /
``mesh=`` shards the runs axis (and optionally each batch) over a :mod:`cljax.sharding` mesh, and
``prepare_data(placement=...)`` keeps a stream too large for the device on the host, from where
``run_stream`` feeds each call of the scanned steps (:mod:`cljax.data.pipeline`; the trainer's
``plan`` / ``fit_rows`` / ``evaluate_task`` / ``end_task_rows`` are the same step, evaluation and
boundary with the examples fed in).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.data.scenarios import Scenario
from cljax.data.streams import TaskArrays, TaskStream
from cljax.methods.base import (BatchContext, BoundaryContext, LossContext, Method,
                                PredictContext, Rows, StepInfo, StreamSpec, check_hparams)
from cljax.nn.model import Model
from cljax.types import Array, Batch, Params, PRNGKey
from cljax.validation import check_positive, check_positive_int


class TrainState(NamedTuple):
    """One run's whole state (a pytree; vmapped runs stack it along a leading axis)."""

    params: Params
    opt_state: Any          # state of method.make_optimizer(hparams, optimizer)
    mstate: Any             # the method's own state (Method.init): memories, anchors, ...
    hparams: Mapping[str, Array]
    step: Array             # global step counter over the stream (int32)
    key: PRNGKey            # the run's key; step s uses fold_in(key, s)


@flax.struct.dataclass
class StreamData:
    """A stream under one scenario, as device arrays ready for jitted functions (a pytree;
    ``train_counts``, the real examples per task, is static).

    Two static fields serve the scale-out paths (both None by default: everything on one
    device): ``host`` — the stream's arrays in host memory (:class:`cljax.data.pipeline.
    HostArrays`) when it is too large for the device; then ``train`` / ``test`` hold only
    shape-carrying placeholders ``[T, 0, ...]`` and their counts ``n``, and :func:`run_stream`
    feeds the steps from the host; ``batch_sharding`` — a
    :class:`~jax.sharding.NamedSharding` every batch's examples are constrained to
    (:func:`to_batch`; data parallelism within a run, :mod:`cljax.sharding`).
    """

    train: TaskArrays
    test: TaskArrays         # padded so N is a multiple of the evaluation chunk
    label_table: Array       # int32 [T, k]
    mean: Array              # float32 [C]
    std: Array               # float32 [C]
    train_counts: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    host: Any = flax.struct.field(pytree_node=False, default=None)
    batch_sharding: Any = flax.struct.field(pytree_node=False, default=None)


def _placeholder(arrays: TaskArrays) -> TaskArrays:
    """``arrays`` without their rows: ``x [T, 0, ...]``, ``y [T, 0]`` (shapes and dtypes for
    tracing) and the real counts ``n``."""
    T = arrays.x.shape[0]
    return TaskArrays(jnp.zeros((T, 0) + tuple(arrays.x.shape[2:]), arrays.x.dtype),
                      jnp.zeros((T, 0), jnp.int32), jnp.asarray(arrays.n))


def prepare_data(stream: TaskStream, scenario: Scenario, *, eval_chunk: int = 1000,
                 placement: str = "auto", memory_cap: int | None = None,
                 mesh: Any = None) -> StreamData:
    """Move ``stream`` to the device with ``scenario``'s labels; pad test sets to ``eval_chunk``.

    Args:
      placement: ``"device"`` (the whole stream on the device), ``"host"`` (the arrays stay in
        host memory and :func:`run_stream` feeds the device in chunks,
        :mod:`cljax.data.pipeline`), or ``"auto"``: ``"device"`` unless the stream's bytes
        exceed ``memory_cap`` (default: :func:`cljax.data.pipeline.default_memory_cap`, half the
        device's memory). Both give the same results.
      memory_cap: the device-memory cap in bytes for ``"auto"`` (and for sizing the host
        path's calls).
      mesh: a :func:`cljax.sharding.make_mesh` mesh: the arrays are replicated on its devices
        and, when its ``"batch"`` axis has several devices, every batch is split over it
        (:func:`run_stream` does the same for data prepared without it).
    """
    from cljax.data import pipeline

    check_positive_int(eval_chunk, name="eval_chunk")
    if scenario.label_table.shape[0] != stream.num_tasks:
        raise ValueError(f"scenario has {scenario.label_table.shape[0]} tasks; stream "
                         f"{stream.name} has {stream.num_tasks}")
    devices = None if mesh is None else list(mesh.devices.flat)
    where = pipeline.choose_placement(stream, placement=placement, memory_cap=memory_cap,
                                      devices=devices)
    test = stream.test
    chunk = min(eval_chunk, test.x.shape[1])
    pad = -test.x.shape[1] % chunk
    if pad:
        test = TaskArrays(np.pad(test.x, [(0, 0), (0, pad)] + [(0, 0)] * (test.x.ndim - 2)),
                          np.pad(test.y, [(0, 0), (0, pad)]), test.n)
    if where == "host":
        cap = memory_cap if memory_cap is not None else pipeline.default_memory_cap(devices)
        data = StreamData(_placeholder(stream.train), _placeholder(test),
                          jnp.asarray(scenario.label_table, jnp.int32),
                          jnp.asarray(stream.mean, jnp.float32),
                          jnp.asarray(stream.std, jnp.float32),
                          tuple(int(n) for n in stream.train.n),
                          host=pipeline.HostArrays(stream.train, test, cap))
        return data if mesh is None else place_data(data, mesh)
    if mesh is not None:
        from cljax import sharding as shd

        shd.check_mesh(mesh)
        rep = shd.replicated(mesh)
        return place_data(StreamData(
            shd.put(stream.train, rep), shd.put(test, rep),
            shd.put(np.asarray(scenario.label_table, np.int32), rep),
            shd.put(np.asarray(stream.mean, np.float32), rep),
            shd.put(np.asarray(stream.std, np.float32), rep),
            tuple(int(n) for n in stream.train.n)), mesh)
    return StreamData(jax.device_put(stream.train), jax.device_put(test),
                      jnp.asarray(scenario.label_table, jnp.int32),
                      jnp.asarray(stream.mean, jnp.float32), jnp.asarray(stream.std, jnp.float32),
                      tuple(int(n) for n in stream.train.n))


def place_data(data: StreamData, mesh: Any) -> StreamData:
    """``data`` replicated on the devices of ``mesh`` (a :func:`cljax.sharding.make_mesh` mesh),
    with ``batch_sharding`` set when its ``"batch"`` axis has more than one device."""
    from cljax import sharding as shd

    shd.check_mesh(mesh)
    leaves, treedef = jax.tree.flatten(data)
    rep = shd.replicated(mesh)
    leaves = [x if isinstance(x, jax.Array) and x.sharding == rep else shd.put(x, rep)
              for x in leaves]
    data = jax.tree.unflatten(treedef, leaves)
    batch = shd.batch_sharding(mesh) if shd.axis_size(mesh, shd.BATCH_AXIS) > 1 else None
    return data.replace(batch_sharding=batch)


def gather_rows(arrays: TaskArrays, tasks: Array, idx: Array) -> Rows:
    """Examples ``idx`` of ``tasks`` (both ``[B]``) as stored: ``x``, within-task ``label``, ``task``."""
    return {"x": arrays.x[tasks, idx], "label": arrays.y[tasks, idx], "task": tasks}


def to_batch(data: StreamData, rows: Rows) -> Batch:
    """Model-ready batch of ``rows``: ``x`` normalised (uint8 pixels scaled to [0, 1] first),
    ``y`` the scenario's target of (task, label), ``task``; other keys of ``rows`` are kept."""
    x = rows["x"].astype(jnp.float32)
    if rows["x"].dtype == jnp.uint8:
        x = x / 255.0
    out = {k: v for k, v in rows.items() if k not in ("x", "label")}
    out.update(x=(x - data.mean) / data.std, y=data.label_table[rows["task"], rows["label"]],
               task=rows["task"])
    sharding = getattr(data, "batch_sharding", None)
    if sharding is not None:     # data parallelism: the examples split over the batch axis
        from cljax.sharding import constrain_examples
        out = constrain_examples(out, sharding)
    return out


def make_batch(data: StreamData, arrays: TaskArrays, tasks: Array, idx: Array) -> Batch:
    """Gather examples ``idx`` of ``tasks`` (both ``[B]``): normalised ``x``, scenario ``y``, ``task``."""
    return to_batch(data, gather_rows(arrays, tasks, idx))


def sample_task_batch(data: StreamData, task: Array, key: PRNGKey, size: int) -> Batch:
    """``size`` training examples of ``task``, uniformly with replacement."""
    tasks = jnp.full((size,), task, dtype=jnp.int32)
    idx = jax.random.randint(key, (size,), 0, data.train.n[task])
    return make_batch(data, data.train, tasks, idx)


def stream_spec(model: Model, data: StreamData) -> StreamSpec:
    """The :class:`~cljax.methods.StreamSpec` of ``data`` under ``model`` (shapes only)."""
    T, N = data.train.y.shape
    example_shape = tuple(data.train.x.shape[2:])
    dummy = {"x": jax.ShapeDtypeStruct((1, *example_shape), jnp.float32),
             "task": jax.ShapeDtypeStruct((1,), jnp.int32)}
    params = jax.eval_shape(model.init, jax.random.key(0), dummy)
    logits = jax.eval_shape(model.logits_fn, params, dummy)
    heads = getattr(model.module, "num_heads", 1)
    features = (None if model.features_fn is None
                else int(jax.eval_shape(model.features_fn, params, dummy).shape[-1]))
    return StreamSpec(example_shape, data.train.x.dtype, int(T), int(data.label_table.shape[1]),
                      int(logits.shape[-1]), int(heads), data.label_table, data.train_counts,
                      features)


class Trainer(NamedTuple):
    """Pure functions of one run (not jitted, not vmapped: :func:`run_stream` does both)."""

    init: Callable[[PRNGKey, Mapping[str, Array], StreamData], TrainState]
    fit: Callable[..., tuple[TrainState, Array]]
    evaluate: Callable[[Params, Any, StreamData], tuple[Array, Array]]
    end_task: Callable[[TrainState, StreamData, Array], TrainState]
    method: Method | None = None
    # the host pipeline's variants (cljax.data.pipeline), same steps with the examples fed in:
    plan: Callable[..., tuple] | None = None             # (state, data, task, offset, n) → draws
    fit_rows: Callable[..., tuple] | None = None         # (state, data, task, rows, n) → (state, (loss, ok))
    evaluate_task: Callable[..., tuple] | None = None    # (params, mstate, data, t, (x, y)) → (acc, loss)
    end_task_rows: Callable[..., TrainState] | None = None  # (state, data, task, (x, y)) → state


def make_trainer(model: Model, method: Method, *, optimizer: optax.GradientTransformation,
                 batch_size: int, eval_chunk: int = 1000,
                 reset_optimizer: bool = False) -> Trainer:
    """Build the per-run training functions (the step of :mod:`cljax.methods.base`).

    Args:
      model: the network (:func:`cljax.nn.as_model`).
      method: the CL method; it builds the update rule around ``optimizer``.
      optimizer: the base optax optimizer (Adam in the van de Ven protocols).
      batch_size: current-task examples per step (a method may add memory examples).
      eval_chunk: test examples per evaluation chunk (bounds memory).
      reset_optimizer: re-initialise the optimizer state at each task boundary, before the
        method's boundary function (the method state is kept).
    """
    check_positive_int(batch_size, name="batch_size")
    check_positive_int(eval_chunk, name="eval_chunk")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation; got {type(optimizer)}")
    if not isinstance(method, Method):
        raise TypeError(f"method must be a cljax.methods.Method; got {type(method).__name__}")
    for name in method.requires:
        if getattr(model, name, None) is None:
            raise ValueError(f"method {method.name!r} needs the model's {name} (a flax module "
                             f"whose __call__ takes output='features'|'all_heads', e.g. "
                             f"cljax.nn.MLP); this model has none")

    def tx(hparams):
        return optax.with_extra_args_support(method.make_optimizer(hparams, optimizer))

    def init(key: PRNGKey, hparams: Mapping[str, Array], data: StreamData) -> TrainState:
        k_init, k_run = jax.random.split(key)
        spec = stream_spec(model, data)
        dummy = {"x": jnp.zeros((1, *spec.example_shape), jnp.float32),
                 "task": jnp.zeros((1,), jnp.int32)}
        params = model.init(k_init, dummy)
        hparams = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
        mstate = method.init(params, jax.random.fold_in(key, 2), hparams, spec)
        return TrainState(params, tx(hparams).init(params), mstate, hparams,
                          jnp.zeros((), jnp.int32), k_run)

    def rows_of_task(data: StreamData, task: Array) -> Rows:
        N = data.train.y.shape[1]
        return gather_rows(data.train, jnp.full((N,), task, jnp.int32), jnp.arange(N))

    def no_task_rows(t):
        raise NotImplementedError(
            f"method {method.name!r} reads a whole task (BatchContext.task_rows) in its batch "
            "hook, which the host pipeline cannot feed: prepare the data with "
            "placement='device'")

    def train_step(state: TrainState, data: StreamData, task: Array, gather=None):
        spec = stream_spec(model, data)
        key = jax.random.fold_in(state.key, state.step)
        k_task, k_idx, k_loss = jax.random.split(key, 3)
        k_opt, k_after = jax.random.split(jax.random.fold_in(key, 3))

        def draw(k, tasks):
            idx = jax.random.randint(k, tasks.shape, 0, data.train.n[tasks])
            if gather is not None:     # the host pipeline: rows fed in for these (tasks, idx)
                return gather(tasks, idx)
            return gather_rows(data.train, tasks, idx)

        bctx = BatchContext(k_task, k_idx, task, batch_size, state.hparams, spec, draw,
                            (lambda t: rows_of_task(data, t)) if gather is None else no_task_rows,
                            lambda t: data.train.n[t])
        rows = method.batch(bctx, state.mstate)
        batch = to_batch(data, rows)
        lctx = LossContext(model, k_loss, state.hparams, task, spec, lambda r: to_batch(data, r))

        def loss_fn(p):
            return method.loss(p, batch, state.mstate, lctx)

        if method.value_and_grad is None:
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        else:
            (loss, aux), grads = method.value_and_grad(loss_fn, state.params, state.mstate, lctx)
        extra = method.optimizer_args(state.params, batch, state.mstate, lctx._replace(key=k_opt))
        updates, opt_state = tx(state.hparams).update(grads, state.opt_state, state.params,
                                                      **extra)
        params = optax.apply_updates(state.params, updates)
        mstate = method.after_step(state.mstate, StepInfo(rows, batch, aux, grads, updates, params,
                                                          task, k_after, state.hparams, spec))
        return state._replace(params=params, opt_state=opt_state, mstate=mstate,
                              step=state.step + 1), loss

    def fit(state: TrainState, data: StreamData, task: Array, num_steps: int):
        """``num_steps`` (static) steps on ``task`` in one ``lax.scan``; returns the per-step losses."""
        return jax.lax.scan(lambda s, _: train_step(s, data, task), state, None, length=num_steps)

    def plan(state: TrainState, data: StreamData, task: Array, offset: Array, num_steps: int):
        """The draws of steps ``state.step + offset + [0, num_steps)`` (``num_steps`` static):
        for each ``draw`` call of the method's batch hook, ``(tasks, idx)`` ``[num_steps, n]``
        — the step's own keys and ``randint`` draws, without gathering any example (the
        method state is that of ``state``: :func:`fit_rows` checks that the draws agree)."""
        spec = stream_spec(model, data)

        def one(step):
            key = jax.random.fold_in(state.key, step)
            k_task, k_idx, _ = jax.random.split(key, 3)
            calls = []

            def draw(k, tasks):
                idx = jax.random.randint(k, tasks.shape, 0, data.train.n[tasks])
                calls.append((tasks, idx))
                return {"x": jnp.zeros(tasks.shape + spec.example_shape, spec.storage_dtype),
                        "label": jnp.zeros(tasks.shape, jnp.int32), "task": tasks}

            bctx = BatchContext(k_task, k_idx, task, batch_size, state.hparams, spec, draw,
                                no_task_rows, lambda t: data.train.n[t])
            method.batch(bctx, state.mstate)
            return tuple(calls)

        return jax.lax.map(one, state.step + offset + jnp.arange(num_steps, dtype=jnp.int32))

    def fit_rows(state: TrainState, data: StreamData, task: Array, rows: tuple, num_steps: int):
        """:func:`fit` with the examples fed in: ``rows[j]`` (``x``, ``label``, ``task``,
        ``idx``, each ``[num_steps, n, ...]``) answers the j-th draw of each step. Returns
        ``(state, (losses, ok))``; ``ok[s]`` is False where step s drew other examples than
        the plan said (its results are then not those of :func:`fit`)."""
        def body(s, fed):
            calls = iter(fed)
            ok = [jnp.ones((), bool)]

            def gather(tasks, idx):
                b = next(calls, None)
                if b is None:
                    raise ValueError("the method's batch hook draws more often than the plan "
                                     "recorded")
                ok[0] = ok[0] & jnp.all(b["task"] == tasks) & jnp.all(b["idx"] == idx)
                return {"x": b["x"], "label": b["label"], "task": tasks}

            new, loss = train_step(s, data, task, gather=gather)
            return new, (loss, ok[0])

        return jax.lax.scan(body, state, rows, length=num_steps)

    def task_metrics(params, mstate, data, t, N, chunk_batch):
        """Accuracy and mean loss of task ``t``'s ``N`` test rows (``chunk_batch(t, idx)``)."""
        test = data.test
        chunk = min(eval_chunk, N)
        if N % chunk:
            raise ValueError(f"the test arrays hold {N} examples per task, not a multiple of "
                             f"eval_chunk={chunk}: pass the same eval_chunk to prepare_data and "
                             "make_trainer")
        pctx = PredictContext(model, stream_spec(model, data))

        def predict(batch):
            if method.predict is None:
                return model.logits_fn(params, batch)
            return method.predict(params, mstate, batch, pctx)

        def one_chunk(carry, c):
            idx = c * chunk + jnp.arange(chunk)
            batch = chunk_batch(t, idx)
            logits = predict(batch)
            valid = idx < test.n[t]
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
            correct = jnp.argmax(logits, -1) == batch["y"]
            return (carry[0] + jnp.sum(correct * valid), carry[1] + jnp.sum(nll * valid)), None

        zero = jnp.zeros((), jnp.float32)
        (hits, nll), _ = jax.lax.scan(one_chunk, (zero, zero), jnp.arange(N // chunk))
        return hits / test.n[t], nll / test.n[t]

    def evaluate(params: Params, mstate: Any, data: StreamData) -> tuple[Array, Array]:
        """Accuracy and mean loss on every task's test set, ``[T]`` each (through the method's
        ``predict`` hook; the model's logits by default)."""
        test = data.test
        T, N = test.y.shape
        chunk = min(eval_chunk, N)
        if N % chunk:
            raise ValueError(f"the test arrays hold {N} examples per task, not a multiple of "
                             f"eval_chunk={chunk}: pass the same eval_chunk to prepare_data and "
                             "make_trainer")

        def chunk_batch(t, idx):
            return make_batch(data, test, jnp.full((chunk,), t, jnp.int32), idx)

        return jax.lax.map(lambda t: task_metrics(params, mstate, data, t, N, chunk_batch),
                           jnp.arange(T))

    def evaluate_task(params: Params, mstate: Any, data: StreamData, t: Array,
                      test_t: tuple[Array, Array]) -> tuple[Array, Array]:
        """:func:`evaluate` of task ``t`` alone, its test rows ``(x [N, ...], label [N])`` fed
        in (the host pipeline)."""
        x_t, y_t = test_t
        N = y_t.shape[0]
        chunk = min(eval_chunk, N)

        def chunk_batch(t, idx):
            return to_batch(data, {"x": x_t[idx], "label": y_t[idx],
                                   "task": jnp.full((chunk,), t, jnp.int32)})

        return task_metrics(params, mstate, data, t, N, chunk_batch)

    def end_task(state: TrainState, data: StreamData, task: Array) -> TrainState:
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), 1 << 30)
        opt_state = (tx(state.hparams).init(state.params) if reset_optimizer else state.opt_state)
        ctx = BoundaryContext(state.params, opt_state, state.mstate, state.hparams, task, key,
                              model, stream_spec(model, data),
                              lambda t, k, size: sample_task_batch(data, t, k, size),
                              lambda t: rows_of_task(data, t), lambda t: data.train.n[t],
                              lambda r: to_batch(data, r))
        params, opt_state, mstate = method.end_task(ctx)
        return state._replace(params=params, opt_state=opt_state, mstate=mstate)

    def end_task_rows(state: TrainState, data: StreamData, task: Array,
                      train_t: tuple[Array, Array]) -> TrainState:
        """:func:`end_task` with the ending task's stored training rows ``(x [N, ...],
        label [N])`` fed in (the host pipeline: the boundary may read only that task)."""
        x_t, y_t = train_t
        N = y_t.shape[0]

        def only_this(t):
            if t is not task:
                raise NotImplementedError(
                    f"method {method.name!r} reads another task than the one ending at a task "
                    "boundary, which the host pipeline does not hold on the device: prepare the "
                    "data with placement='device'")

        def sample_batch(t, k, size):
            only_this(t)
            idx = jax.random.randint(k, (size,), 0, data.train.n[t])
            return to_batch(data, {"x": x_t[idx], "label": y_t[idx],
                                   "task": jnp.full((size,), t, dtype=jnp.int32)})

        def task_rows(t):
            only_this(t)
            return {"x": x_t, "label": y_t, "task": jnp.full((N,), t, jnp.int32)}

        key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), 1 << 30)
        opt_state = (tx(state.hparams).init(state.params) if reset_optimizer else state.opt_state)
        ctx = BoundaryContext(state.params, opt_state, state.mstate, state.hparams, task, key,
                              model, stream_spec(model, data), sample_batch, task_rows,
                              lambda t: data.train.n[t], lambda r: to_batch(data, r))
        params, opt_state, mstate = method.end_task(ctx)
        return state._replace(params=params, opt_state=opt_state, mstate=mstate)

    return Trainer(init, fit, evaluate, end_task, method, plan, fit_rows, evaluate_task,
                   end_task_rows)


class StreamResult(NamedTuple):
    """Outcome of :func:`run_stream` for R runs over T tasks (numpy arrays).

    ``accuracy[r, i, j]`` is run r's test accuracy on task j after training task i (the R matrix
    of Lopez-Paz & Ranzato 2017); ``loss`` likewise with the mean test loss; ``init_accuracy[r, j]``
    and ``init_loss`` are those of the random initialisation (FWT's baseline b_j).
    """

    accuracy: np.ndarray
    loss: np.ndarray
    init_accuracy: np.ndarray
    init_loss: np.ndarray
    train_loss: np.ndarray            # [R, T, steps]
    task_params: Any                  # pytree [R, T, ...] of θ*_t, or None
    final_state: TrainState
    timings: dict
    diverged: np.ndarray | None = None  # [R, 2] (task, step) of the first non-finite loss, or -1


RUNS = ("auto", "vmap", "map")


def runs_transform(runs: str, *, mesh: Any = None) -> Callable:
    """How the R runs of :func:`run_stream` share one program: ``"vmap"`` (batched: every array
    gets a leading run axis), ``"map"`` (``lax.map``: a loop over runs, each computed exactly as
    a lone run, so run r's results do not depend on R, bit for bit), ``"auto"``: ``"map"`` on
    the CPU, where batching runs gains nothing (BENCHMARKS.md: 8 vmapped seeds took 0.98× the
    time of 8 sequential ones) and XLA's batched matmuls round differently from R = 1, and
    ``"vmap"`` on accelerators.

    With a ``mesh`` (:func:`cljax.sharding.make_mesh`) the run axis is split over the mesh's
    ``"runs"`` axis: ``"vmap"`` with ``spmd_axis_name="runs"`` (``"auto"`` means ``"vmap"``);
    ``"map"`` is allowed only when that axis has one device (data parallelism alone)."""
    if runs not in RUNS:
        raise ValueError(f"runs must be one of {RUNS}; got {runs!r}")
    spmd = None
    if mesh is not None:
        from cljax import sharding as shd

        shd.check_mesh(mesh)
        if runs == "auto":
            runs = "vmap"
        if runs == "map" and shd.axis_size(mesh, shd.RUNS_AXIS) > 1:
            raise ValueError(f"runs='map' loops over the runs on every device and cannot split "
                             f"them over the mesh's {shd.axis_size(mesh, shd.RUNS_AXIS)} "
                             "'runs' devices: use runs='vmap' (or 'auto'), or a mesh with "
                             "batch= all its devices")
        spmd = shd.RUNS_AXIS if runs == "vmap" else None
    elif runs == "auto":
        runs = "map" if jax.default_backend() == "cpu" else "vmap"

    def transform(fn: Callable, in_axes: tuple, static: tuple = ()) -> Callable:
        if runs == "vmap":
            axes = tuple(None if i in static else a for i, a in enumerate(in_axes))
            if spmd is None:
                return jax.vmap(fn, in_axes=axes)
            return jax.vmap(fn, in_axes=axes, spmd_axis_name=spmd)

        def mapped(*args):
            batched = [a for i, (a, ax) in enumerate(zip(args, in_axes))
                       if ax == 0 and i not in static]

            def one(xs):
                it = iter(xs)
                full = [next(it) if (ax == 0 and i not in static) else a
                        for i, (a, ax) in enumerate(zip(args, in_axes))]
                return fn(*full)

            return jax.lax.map(one, batched)

        return mapped

    return transform


def _steps_per_call(num_steps: int, requested: int | None) -> int:
    if requested is None or requested >= num_steps:
        return num_steps
    return max(d for d in range(1, requested + 1) if num_steps % d == 0)


DIVERGENCE_FACTOR = 100.0
"""Default of ``run_stream``'s ``divergence_factor``: a run whose training loss exceeds 100× its
first loss has diverged. The first loss of a fresh network is ≈ ln C (cross-entropy at chance,
0.7–4.6 for 2–100 classes), and a learning run stays within a few times that even when a new
Class-IL task meets confidently wrong predictions (≈ 5–15× here); 100× ln C needs logit gaps of
hundreds, which only a blow-up produces (Adam at lr 1e6 reaches 1e20 after a few steps)."""


def _position_meta(task: int, done: int, task_seconds: list, num_steps: int, runs: int) -> dict:
    return {"task": task, "done": done, "task_seconds": task_seconds, "num_steps": num_steps,
            "runs": runs}


def _resolve_mesh(devices: Any, mesh: Any):
    if devices is not None and mesh is not None:
        raise ValueError("give devices= or mesh=, not both (devices=N is "
                         "mesh=cljax.sharding.make_mesh(N))")
    from cljax import sharding as shd

    if mesh is not None:
        return shd.check_mesh(mesh)
    if devices is not None:
        return shd.make_mesh(devices)
    return None


def run_stream(trainer: Trainer, data: StreamData, *, num_steps: int,
               keys: Array, hparams: Mapping[str, Any] | None = None,
               keep_params: bool = False, steps_per_call: int | None = None,
               progress: Callable[[int, int, int], None] | None = None,
               on_nonfinite: str = "raise", runs: str = "auto",
               divergence_factor: float | None = DIVERGENCE_FACTOR,
               checkpoint: Any = None, checkpoint_every: int | None = None,
               resume: bool = False, devices: Any = None, mesh: Any = None) -> StreamResult:
    """Train R runs over every task of ``data`` and evaluate all tasks after each.

    Args:
      trainer: from :func:`make_trainer`.
      data: from :func:`prepare_data` (on the device, or kept on the host for a stream larger
        than the device: then every call's examples are gathered on the host and fed in,
        :mod:`cljax.data.pipeline`, with the same results).
      num_steps: training steps per task.
      keys: ``[R]`` PRNG keys, one per run (``jax.random.split(jax.random.key(seed), R)``).
      hparams: the method's hyperparameters, each a scalar (shared) or an ``[R]`` array (one value
        per run: a vmapped sweep).
      keep_params: also return θ*_t after every task (after its boundary; for the curvature
        analysis).
      steps_per_call: split each task's scan into calls of this many steps (for a progress bar;
        the results are identical). Rounded down to a divisor of ``num_steps``.
      progress: called as ``progress(task, steps_done, num_steps)`` after each call.
      on_nonfinite: what a diverged run does: ``"raise"`` (FloatingPointError naming task, step
        and run) or ``"mark"`` (the other runs go on; the run's task and step are recorded in
        ``diverged`` and its accuracies and losses from that task on are NaN: one unstable point
        of a sweep does not stop the others). Runs are independent, so a diverged run cannot
        contaminate the others.
      runs: how the runs share the program (:func:`runs_transform`: ``"auto"``, ``"vmap"``,
        ``"map"``).
      divergence_factor: a run has diverged when its training loss is non-finite or exceeds
        this multiple of its first training loss (:data:`DIVERGENCE_FACTOR`); None: only a
        non-finite loss counts.
      checkpoint: a :class:`cljax.checkpoint.Checkpointer`: the whole state and the results so far
        are saved after every task and every ``checkpoint_every`` steps (rounded down to a
        divisor of ``num_steps``; it also bounds the steps per call), and when the run is
        interrupted (KeyboardInterrupt, i.e. SIGINT, or SIGTERM turned into one), before the
        interruption propagates.
      resume: continue from the checkpoint's latest complete state (none: start afresh); the
        result is bit-identical to an uninterrupted run with the same arguments.
      devices: shard the runs over these devices (None: one device, the default path; an int N:
        the first N of ``jax.devices()``, every host's after ``jax.distributed.initialize``; or
        the devices): ``mesh=cljax.sharding.make_mesh(devices)``.
      mesh: a :func:`cljax.sharding.make_mesh` mesh ``("runs", "batch")``: run r lives on the
        devices of its slice of the ``"runs"`` axis (``runs="vmap"``; ``"auto"`` means it) and
        each batch is split over the ``"batch"`` axis (data parallelism within a run). R is
        padded to a multiple of the ``"runs"`` axis with dummy runs (copies of run 0) that are
        dropped from every result and from the checkpoints, so a checkpoint resumes on any
        device count. Results match the one-device ``runs="vmap"`` path to float tolerance
        (XLA may round batched products differently), not bit for bit.
    """
    check_positive_int(num_steps, name="num_steps")
    if on_nonfinite not in ("raise", "mark"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'mark'; got {on_nonfinite!r}")
    if divergence_factor is not None:
        check_positive(divergence_factor, name="divergence_factor", scalar=True)
        if not divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1 (a multiple of the first loss); got "
                             f"{divergence_factor}")
    if checkpoint_every is not None:
        check_positive_int(checkpoint_every, name="checkpoint_every")
    if (checkpoint_every is not None or resume) and checkpoint is None:
        raise ValueError("checkpoint_every and resume need a checkpoint (a "
                         "cljax.checkpoint.Checkpointer)")
    keys = jnp.asarray(keys)
    if keys.ndim != 1 or not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        raise ValueError(f"keys must be a 1-D array of typed PRNG keys (jax.random.split("
                         f"jax.random.key(seed), R)); got dtype {keys.dtype}, shape {keys.shape}")
    R = keys.shape[0]
    hp = {}
    for name, value in (hparams or {}).items():
        value = jnp.asarray(value, jnp.float32)
        if value.ndim == 0:
            value = jnp.full((R,), value)
        if value.shape != (R,):
            raise ValueError(f"hparams[{name!r}] must be a scalar or have shape ({R},) (one value "
                             f"per run); got {value.shape}")
        if not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(f"hparams[{name!r}] must be finite; got {value}")
        hp[name] = value
    method = getattr(trainer, "method", None)
    if method is not None:
        check_hparams(method, {k: np.asarray(v) for k, v in hp.items()})
    mesh = _resolve_mesh(devices, mesh)
    host = getattr(data, "host", None)
    if host is not None and getattr(trainer, "fit_rows", None) is None:
        raise ValueError("data kept on the host (prepare_data placement='host') needs a trainer "
                         "from make_trainer (its plan / fit_rows functions)")
    requested = [c for c in (steps_per_call, checkpoint_every) if c is not None]
    chunk = _steps_per_call(num_steps, min(requested) if requested else None)
    every = None if checkpoint_every is None else _steps_per_call(num_steps, checkpoint_every)
    T = data.train.n.shape[0]

    timings = {}
    t0 = time.perf_counter()
    over_runs = runs_transform(runs, mesh=mesh)
    R_pad = R
    if mesh is None:
        shard = lambda fn, **kw: jax.jit(fn, **kw)          # noqa: E731
        put_runs = put_rep = lambda x: x                     # noqa: E731
    else:
        from cljax import sharding as shd

        R_pad = shd.padded_size(R, shd.axis_size(mesh, shd.RUNS_AXIS))
        data = place_data(data, mesh)
        runs_sh, rep = shd.runs_sharding(mesh), shd.replicated(mesh)

        def shard(fn, **kw):
            return jax.jit(fn, out_shardings=runs_sh, **kw)

        def put_runs(x):
            return shd.put(x, runs_sh)

        def put_rep(x):
            return shd.put(x, rep)

        # dummy runs: copies of run 0 (a valid run: it cannot diverge where run 0 does not)
        keys = put_runs(shd.pad_axis0(keys, R_pad, mode="first"))
        hp = put_runs(shd.pad_axis0(hp, R_pad, mode="first"))

    def scalar(v):
        return put_rep(jnp.asarray(v, jnp.int32)) if mesh is not None else jnp.asarray(v, jnp.int32)

    def real(tree):    # the R real runs of a (possibly padded) [R_pad, ...] tree
        return tree if R_pad == R else jax.tree.map(lambda x: x[:R], tree)

    def host_array(x):
        if mesh is None:
            return jax.device_get(x)
        from cljax.sharding import to_host
        return to_host(x)

    init = shard(over_runs(trainer.init, (0, 0, None)))
    state = init(keys, hp, data)
    task0 = scalar(0)
    pool = None
    if host is None:
        fit = shard(over_runs(trainer.fit, (0, None, None, None), static=(3,)), static_argnums=3)
        evaluate = shard(over_runs(trainer.evaluate, (0, 0, None)))
        end_task = shard(over_runs(trainer.end_task, (0, None, None)))
        fit_c = fit.lower(state, data, task0, chunk).compile()
        eval_c = evaluate.lower(state.params, state.mstate, data).compile()
        end_c = end_task.lower(state, data, task0).compile()
    else:
        from cljax.data import pipeline

        plan = shard(over_runs(trainer.plan, (0, None, None, None, None), static=(4,)),
                     static_argnums=4)
        draws1 = jax.eval_shape(lambda s: plan(s, data, task0, task0, 1), state)
        step_bytes = R_pad * sum(int(np.prod(t.shape[2:])) for t, _ in draws1) * host.row_bytes
        budget = None if host.memory_cap is None else host.memory_cap // 4
        chunk = pipeline.steps_per_call_for(chunk, chunk, step_bytes=step_bytes, budget=budget)
        fit_rows = shard(over_runs(trainer.fit_rows, (0, None, None, 0, None), static=(4,)),
                         static_argnums=4)
        evaluate_task = shard(over_runs(trainer.evaluate_task, (0, 0, None, None, None)))
        end_task_rows = shard(over_runs(trainer.end_task_rows, (0, None, None, None)))
        draws = jax.eval_shape(lambda s: plan(s, data, task0, task0, chunk), state)
        ex_shape, ex_dtype = host.train.x.shape[2:], host.train.x.dtype

        def spec(shape, dtype, replicate=False):
            if mesh is None:
                return jax.ShapeDtypeStruct(shape, dtype)
            return jax.ShapeDtypeStruct(shape, dtype, sharding=rep if replicate else runs_sh)

        rows_spec = tuple({"x": spec(t.shape + ex_shape, ex_dtype),
                           "label": spec(t.shape, np.int32), "task": spec(t.shape, t.dtype),
                           "idx": spec(i.shape, i.dtype)} for t, i in draws)
        test_spec = (spec(host.test.x.shape[1:], host.test.x.dtype, True),
                     spec(host.test.y.shape[1:], host.test.y.dtype, True))
        train_spec = (spec(host.train.x.shape[1:], ex_dtype, True),
                      spec(host.train.y.shape[1:], host.train.y.dtype, True))
        plan_c = plan.lower(state, data, task0, task0, chunk).compile()
        fitr_c = fit_rows.lower(state, data, task0, rows_spec, chunk).compile()
        evt_c = evaluate_task.lower(state.params, state.mstate, data, task0, test_spec).compile()
        endr_c = end_task_rows.lower(state, data, task0, train_spec).compile()
        offset_next = scalar(chunk)
        pool = pipeline.Prefetcher()
        to_device = (lambda x: jax.device_put(x)) if mesh is None else put_runs
        to_device_rep = (lambda x: jax.device_put(x)) if mesh is None else put_rep

        def fetch_rows(planned):
            return to_device(host.gather(host_array(planned)))

        def fetch_test(t):
            return to_device_rep(host.test_task(t))

        timings["data"] = {"placement": "host", "steps_per_call": chunk,
                           "call_bytes": chunk * step_bytes, "memory_cap": host.memory_cap,
                           "task_bytes": int(max(host.train.x[0].nbytes + host.train.y[0].nbytes,
                                                 host.test.x[0].nbytes + host.test.y[0].nbytes))}
    jax.block_until_ready(state)
    timings["compile_seconds"] = time.perf_counter() - t0
    if mesh is not None:
        timings["devices"] = {"runs": shd.axis_size(mesh, shd.RUNS_AXIS),
                              "batch": shd.axis_size(mesh, shd.BATCH_AXIS),
                              "padded_runs": R_pad}

    def evaluate_all(state):
        if host is None:
            return host_array(eval_c(state.params, state.mstate, data))
        outs, fut = [], pool.submit(fetch_test, 0)
        for t in range(T):
            test_t = fut.result()
            if t + 1 < T:
                fut = pool.submit(fetch_test, t + 1)
            outs.append(evt_c(state.params, state.mstate, data, scalar(t), test_t))
        acc, loss = zip(*outs)
        return (np.stack([host_array(a) for a in acc], 1),
                np.stack([host_array(a) for a in loss], 1))

    def boundary(state, t, task):
        if host is None:
            return end_c(state, data, task)
        return endr_c(state, data, task, to_device_rep(host.train_task(t)))

    def calls(state, t, task, first):
        """The task's calls from ``first`` steps done on: yields (state, losses, done)."""
        if host is None:
            for done in range(first + chunk, num_steps + 1, chunk):
                state, step_losses = fit_c(state, data, task)
                yield state, step_losses, done
            return
        fut = pool.submit(fetch_rows, plan_c(state, data, task, task0))
        for done in range(first + chunk, num_steps + 1, chunk):
            rows = fut.result()
            if done + chunk <= num_steps:   # the next call's rows, while this one trains
                fut = pool.submit(fetch_rows, plan_c(state, data, task, offset_next))
            new, (step_losses, ok) = fitr_c(state, data, task, rows)
            if not np.all(host_array(ok)):
                # planned ahead from an older state: plan again from this call's own state
                rows = fetch_rows(plan_c(state, data, task, task0))
                new, (step_losses, ok) = fitr_c(state, data, task, rows)
                if not np.all(host_array(ok)):
                    raise RuntimeError(
                        f"task {t}, steps {done - chunk}..{done}: the method's batch hook drew "
                        "other examples than planned (its draws depend on state changed within "
                        "a call); run the host pipeline with steps_per_call=1 or place the data "
                        "on the device")
            state = new
            yield state, step_losses, done

    t0 = time.perf_counter()
    nan = np.float32(np.nan)
    rec = {"accuracy": np.full((R, T, T), nan), "loss": np.full((R, T, T), nan),
           "train_loss": np.full((R, T, num_steps), nan),
           "init_accuracy": np.zeros((R, T), np.float32), "init_loss": np.zeros((R, T), np.float32),
           "first_loss": np.full((R,), nan), "diverged": np.full((R, 2), -1, np.int64),
           "kept": (jax.tree.map(lambda p: np.zeros((R, T) + p.shape[1:], p.dtype),
                                 state.params) if keep_params else ())}
    start_task, start_done, task_seconds = 0, 0, []
    meta = checkpoint.latest_meta() if resume else None
    if meta is not None and (meta.get("num_steps") != num_steps or meta.get("runs") != R):
        raise ValueError(f"the checkpoint in {checkpoint.directory} is of a run with "
                         f"{meta.get('runs')} runs and {meta.get('num_steps')} steps per task; "
                         f"this one has {R} and {num_steps}")
    restored = checkpoint.restore_latest({"state": real(state), "record": rec}) if resume else None
    try:
        if restored is not None:
            payload, meta = restored
            state = payload["state"]
            if mesh is not None:   # onto this mesh: re-pad with dummy runs, shard
                state = put_runs(shd.pad_axis0(state, R_pad, mode="first"))
            rec = jax.tree.map(np.array, payload["record"])
            start_task, start_done = int(meta["task"]), int(meta["done"])
            task_seconds = list(meta["task_seconds"])
        else:
            acc0, loss0 = evaluate_all(state)
            rec["init_accuracy"][:], rec["init_loss"][:] = acc0[:R], loss0[:R]
        position = (state, start_task, start_done)   # the latest consistent (state, task, steps)
        saved = [start_task * num_steps + start_done if restored is not None else -1]

        def save(state, task, done, index):
            if checkpoint is not None and index > saved[0]:
                checkpoint.save(index, {"state": real(state), "record": rec},
                                _position_meta(task, done, task_seconds, num_steps, R))
                saved[0] = index

        try:
            for t in range(start_task, T):
                t_start = time.perf_counter()
                task = scalar(t)
                first = start_done if t == start_task else 0
                for state, step_losses, done in calls(state, t, task, first):
                    step_losses = host_array(step_losses)[:R]
                    rec["train_loss"][:, t, done - chunk:done] = step_losses
                    if t == 0 and done == chunk:
                        rec["first_loss"][:] = step_losses[:, 0]
                    bad = ~np.isfinite(step_losses)
                    if divergence_factor is not None:
                        with np.errstate(invalid="ignore"):
                            bad |= step_losses > divergence_factor * rec["first_loss"][:, None]
                    if on_nonfinite == "raise" and bad.any():
                        run, step = np.argwhere(bad)[0]
                        value = step_losses[run, step]
                        raise FloatingPointError(
                            f"training diverged at task {t}, step {done - chunk + step} (run "
                            f"{run}): loss {value:.4g}" + ("" if not np.isfinite(value) else
                                                          f" > {divergence_factor:g} × the first "
                                                          f"loss {rec['first_loss'][run]:.4g}")
                            + "; lower the learning rate or the method's strength")
                    for run in np.flatnonzero(bad.any(axis=1) & (rec["diverged"][:, 0] < 0)):
                        rec["diverged"][run] = (t, done - chunk + int(np.argmax(bad[run])))
                    position = (state, t, done)
                    if every is not None and done % every == 0 and done < num_steps:
                        save(state, t, done, t * num_steps + done)
                    if progress is not None:
                        progress(t, done, num_steps)
                # the boundary first: a method's task ends with it (exemplar means, pruning), and
                # the accuracy matrix is that of the model the task leaves behind
                state = boundary(state, t, task)
                acc, loss = evaluate_all(state)
                gone = rec["diverged"][:, 0] >= 0
                rec["accuracy"][:, t] = np.where(gone[:, None], np.nan, acc[:R])
                rec["loss"][:, t] = np.where(gone[:, None], np.nan, loss[:R])
                if keep_params:
                    jax.tree.map(lambda k, p: k.__setitem__((slice(None), t), host_array(p)[:R]),
                                 rec["kept"], state.params)
                task_seconds.append(time.perf_counter() - t_start)
                position = (state, t + 1, 0)
                save(state, t + 1, 0, (t + 1) * num_steps)
        except KeyboardInterrupt:
            if checkpoint is not None:
                s_, t_, d_ = position
                if 0 < d_ < num_steps or (d_ == 0 and t_ > 0):
                    save(s_, t_, d_, t_ * num_steps + d_)
            raise
    finally:
        if pool is not None:
            pool.close()
    timings["run_seconds"] = time.perf_counter() - t0
    timings["task_seconds"] = task_seconds
    task_params = jax.tree.map(jnp.asarray, rec["kept"]) if keep_params else None
    return StreamResult(rec["accuracy"], rec["loss"], rec["init_accuracy"], rec["init_loss"],
                        rec["train_loss"], task_params, real(state), timings, rec["diverged"])


__all__ = ["TrainState", "StreamData", "StreamResult", "Trainer", "prepare_data", "place_data",
           "gather_rows",
           "to_batch", "make_batch", "sample_task_batch", "stream_spec", "make_trainer",
           "run_stream", "runs_transform", "RUNS", "DIVERGENCE_FACTOR"]
