"""The task loop: :func:`run_stream` trains R runs over a stream, one task after another.

For each task: train its steps in compiled calls (an executor, :mod:`cljax.training.executors`,
knows where the examples come from), let the method close the task (its boundary), evaluate
every task, record. A :class:`~cljax.training.record.Record` keeps the results and decides
divergence; :class:`Checkpointing` saves around the loop and restores a run to continue it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax.methods.base import check_hparams
from cljax.training.data import StreamData
from cljax.training.executors import make_executor
from cljax.training.record import DIVERGENCE_FACTOR, Record, StreamResult
from cljax.training.runs import RunLayout, resolve_mesh
from cljax.training.trainer import Trainer, TrainState
from cljax.validation import check_positive, check_positive_int


def call_length(num_steps: int, requested: int | None) -> int:
    """The largest divisor of ``num_steps`` that is at most ``requested`` (None: all of them)."""
    if requested is None or requested >= num_steps:
        return num_steps
    return max(d for d in range(1, requested + 1) if num_steps % d == 0)


class Checkpointing:
    """Saving around the task loop: after every task, every ``every`` steps within one, and
    when the loop is interrupted; and restoring the latest complete state to continue from.

    A checkpoint is indexed by the steps done over the stream (``task · num_steps + done``);
    it holds the real runs' state and the :class:`Record`, and its meta where the run stands,
    the steps per task and the number of runs (the checkpointer adds the arrays' shapes and
    the run's identity): a checkpoint of another run is refused, never resumed from.
    """

    def __init__(self, checkpoint: Any, *, every: int | None, num_steps: int,
                 layout: RunLayout):
        self.checkpoint, self.every, self.num_steps, self.layout = (checkpoint, every, num_steps,
                                                                    layout)
        self.saved = -1
        self.task_seconds: list[float] = []

    def restore(self, state: TrainState, record: Record
                ) -> tuple[TrainState, int, int] | None:
        """``(state, task, steps done in it)`` of the latest readable checkpoint (the record
        restored in place), or None when there is none."""
        restored = self.checkpoint.restore_latest(
            {"state": self.layout.real(state), "record": record.tree},
            expect={"num_steps": self.num_steps, "runs": self.layout.runs})
        if restored is None:
            return None
        payload, meta = restored
        record.restore(payload["record"])
        task, done = int(meta["task"]), int(meta["done"])
        self.task_seconds = list(meta["task_seconds"])
        self.saved = task * self.num_steps + done
        return self.layout.pad(payload["state"]), task, done

    def save(self, state: TrainState, task: int, done: int, record: Record) -> None:
        """Checkpoint the position ``(task, done)`` unless it is already saved."""
        index = task * self.num_steps + done
        if self.checkpoint is None or index <= self.saved:
            return
        self.checkpoint.save(index, {"state": self.layout.real(state), "record": record.tree},
                             {"task": task, "done": done, "task_seconds": self.task_seconds,
                              "num_steps": self.num_steps, "runs": self.layout.runs})
        self.saved = index

    def within_task(self, state: TrainState, task: int, done: int, record: Record) -> None:
        """After a call: a checkpoint every ``every`` steps (the task's end is saved after its
        boundary instead)."""
        if self.every is not None and done % self.every == 0 and done < self.num_steps:
            self.save(state, task, done, record)

    def interrupted(self, position: tuple[TrainState, int, int], record: Record) -> None:
        """The latest consistent ``(state, task, done)`` when the loop is interrupted (nothing
        before the first step: there is nothing to continue)."""
        state, task, done = position
        if 0 < done < self.num_steps or (done == 0 and task > 0):
            self.save(state, task, done, record)


def _check_arguments(trainer: Trainer, num_steps: int, keys: Any, hparams: Mapping | None, *,
                     on_nonfinite: str, divergence_factor: float | None, checkpoint: Any,
                     checkpoint_every: int | None, resume: bool) -> tuple[jax.Array, dict]:
    """Every argument of :func:`run_stream` checked; the keys and the ``[R]`` hyperparameters."""
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
    if getattr(trainer, "method", None) is not None:
        check_hparams(trainer.method, {k: np.asarray(v) for k, v in hp.items()})
    return keys, hp


def run_stream(trainer: Trainer, data: StreamData, *, num_steps: int,
               keys: jax.Array, hparams: Mapping[str, Any] | None = None,
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
      mesh: a :func:`cljax.sharding.make_mesh` mesh ``("runs", "batch")``: run r lives on its
        slice of the ``"runs"`` axis (``runs="vmap"``) and each batch is split over ``"batch"``.
        R is padded to a multiple of the ``"runs"`` axis with copies of run 0, dropped from
        every result and checkpoint (a checkpoint resumes on any device count). Results match
        the one-device ``runs="vmap"`` path to float tolerance, not bit for bit.
    """
    keys, hp = _check_arguments(trainer, num_steps, keys, hparams, on_nonfinite=on_nonfinite,
                                divergence_factor=divergence_factor, checkpoint=checkpoint,
                                checkpoint_every=checkpoint_every, resume=resume)
    requested = [c for c in (steps_per_call, checkpoint_every) if c is not None]
    chunk = call_length(num_steps, min(requested) if requested else None)
    layout = RunLayout(runs, keys.shape[0], resolve_mesh(devices, mesh))
    T = data.train.n.shape[0]
    t0 = time.perf_counter()
    executor = make_executor(trainer, data, layout, num_steps=num_steps, steps_per_call=chunk)
    try:
        state = executor.start(layout.pad(keys), layout.pad(hp))
        jax.block_until_ready(state)
        chunk = executor.steps_per_call      # the host path may lower it to fit its budget
        timings: dict[str, Any] = {**({"data": executor.info} if executor.info else {}),
                   "compile_seconds": time.perf_counter() - t0,
                   **({"devices": layout.devices()} if layout.mesh is not None else {})}
        record = Record(layout.runs, T, num_steps, on_nonfinite=on_nonfinite,
                        divergence_factor=divergence_factor,
                        params=state.params if keep_params else None)
        every = checkpoint_every and call_length(num_steps, checkpoint_every)
        saving = Checkpointing(checkpoint, every=every, num_steps=num_steps, layout=layout)
        t0 = time.perf_counter()
        state, start = _starting_point(executor, state, record, saving, resume)
        state = _train_tasks(executor, state, start, record, saving,
                             num_tasks=T, chunk=chunk, num_steps=num_steps, keep_params=keep_params,
                             layout=layout, progress=progress)
    finally:
        executor.close()
    timings.update(run_seconds=time.perf_counter() - t0, task_seconds=saving.task_seconds)
    return record.result(layout.real(state), timings)


__all__ = ["run_stream", "Checkpointing", "call_length"]


def _starting_point(executor: Any, state: Any, record: Record, saving: Checkpointing,
                    resume: bool) -> tuple[Any, tuple[int, int]]:
    """The state and (task, steps done) to train from: the checkpoint's latest when resuming
    (``record`` restored with it), else the fresh state, evaluated (the matrices' row 0)."""
    restored = saving.restore(state, record) if resume else None
    if restored is None:
        record.initial(*executor.evaluate(state))
        return state, (0, 0)
    state, task, done = restored
    return state, (task, done)


def _train_tasks(executor: Any, state: Any, start: tuple[int, int], record: Record,
                 saving: Checkpointing, *, num_tasks: int, chunk: int, num_steps: int,
                 keep_params: bool,
                 layout: RunLayout, progress: Callable[[int, int, int], None] | None) -> Any:
    """The task loop of :func:`run_stream` from ``start`` = (task, steps done): each task's
    steps in calls, its boundary, the evaluation of every task, the record and the checkpoints;
    on an interrupt the latest consistent (state, task, steps) is saved before it propagates."""
    start_task, start_done = start
    position = (state, start_task, start_done)   # the latest consistent (state, task, steps)
    try:
        for t in range(start_task, num_tasks):
            t_start = time.perf_counter()
            first = start_done if t == start_task else 0
            if first == 0:   # the task's beginning (kept out of `position`: a resume redoes it)
                state = executor.begin(state, t)
            calls = executor.calls(state, t, first)
            for state, losses, done in calls:
                record.losses(t, done - chunk, losses)
                position = (state, t, done)
                saving.within_task(state, t, done, record)
                if progress is not None:
                    progress(t, done, num_steps)
            # the boundary first: a method's task ends with it (exemplar means, pruning), and
            # the accuracy matrix is that of the model the task leaves behind
            state = executor.boundary(state, t)
            record.evaluation(t, *executor.evaluate(state))
            if keep_params:
                record.keep(t, layout.real(layout.to_host(state.params)))
            saving.task_seconds.append(time.perf_counter() - t_start)
            position = (state, t + 1, 0)
            saving.save(state, t + 1, 0, record)
    except KeyboardInterrupt:
        saving.interrupted(position, record)
        raise
    return state
