"""A stream as device arrays ready for the jitted trainer, and the batches drawn from it.

:func:`prepare_data` moves a :class:`~cljax.data.TaskStream` under a scenario to the device (or
keeps it on the host, :mod:`cljax.data.pipeline`, or replicates it on a mesh's devices);
:func:`gather_rows` / :func:`to_batch` turn stored examples into model-ready batches (normalised
``x``, the scenario's ``y``, ``task``); :func:`stream_spec` is what a method may know of the
stream and model (:class:`~cljax.methods.StreamSpec`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from cljax.data.scenarios import Scenario
from cljax.data.streams import TaskArrays, TaskStream
from cljax.methods.base import Rows, StreamSpec
from cljax.nn.model import Model
from cljax.types import Array, Batch, PRNGKey
from cljax.validation import check_positive_int


@flax.struct.dataclass
class StreamData:
    """A stream under one scenario, as device arrays ready for jitted functions (a pytree;
    ``train_counts``, the real examples per task, is static).

    Two static fields serve the scale-out paths (both None by default: everything on one
    device): ``host`` — the stream's arrays in host memory
    (:class:`cljax.data.pipeline.HostArrays`) when it is too large for the device; then ``train`` / ``test`` hold only
    shape-carrying placeholders ``[T, 0, ...]`` and their counts ``n``, and :func:`run_stream`
    feeds the steps from the host; ``batch_sharding`` — a
    :class:`~jax.sharding.NamedSharding` every batch's examples are constrained to
    (:func:`to_batch`; data parallelism within a run, :mod:`cljax.sharding`).
    ``logit_mask`` is the scenario's (masked Task-IL): the trainer masks the model's logits
    with it (:func:`cljax.nn.mask_task_logits`).
    """

    train: TaskArrays
    test: TaskArrays         # padded so N is a multiple of the evaluation chunk
    label_table: Array       # int32 [T, k]
    mean: Array              # float32 [C]
    std: Array               # float32 [C]
    train_counts: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    logit_mask: Any = None   # bool [T, C]: masked Task-IL's classes per task, else None
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
    mask = None if scenario.logit_mask is None else jnp.asarray(scenario.logit_mask, bool)
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
                          tuple(int(n) for n in stream.train.n), mask,
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
            tuple(int(n) for n in stream.train.n),
            None if mask is None else shd.put(np.asarray(mask), rep)), mesh)
    return StreamData(jax.device_put(stream.train), jax.device_put(test),
                      jnp.asarray(scenario.label_table, jnp.int32),
                      jnp.asarray(stream.mean, jnp.float32), jnp.asarray(stream.std, jnp.float32),
                      tuple(int(n) for n in stream.train.n), mask)


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
    return dataclasses.replace(data, batch_sharding=batch)   # flax's StreamData.replace


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
                      features, data.logit_mask is not None)


__all__ = ["StreamData", "prepare_data", "place_data", "gather_rows", "to_batch", "make_batch",
           "sample_task_batch", "stream_spec"]
