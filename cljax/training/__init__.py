"""Jitted, scanned, vmapped training over a task stream.

Read in this order:

* :mod:`cljax.training.data` — :func:`prepare_data` puts a stream under a scenario on the device
  (:class:`StreamData`); batches are gathered from it with ``fold_in`` keys.
* :mod:`cljax.training.trainer` — :func:`make_trainer` turns a model, a
  :class:`~cljax.methods.Method` and a base optax optimizer into the pure functions of one run:
  ``init``, ``step``, ``fit`` (a task's steps in one ``lax.scan``), ``end_task`` and
  ``evaluate`` (every task's test set, in chunks).
* :mod:`cljax.training.loop` — :func:`run_stream`, the task loop: R runs (seeds × sweep points)
  as one compiled program; per task, its steps in calls, the boundary, the evaluation, the record.
  The task index is a traced argument: one compilation serves every task.
* The loop's parts: :mod:`~cljax.training.runs` (how runs share a program and a mesh),
  :mod:`~cljax.training.executors` (the examples on the device, or fed from the host:
  :mod:`cljax.data.pipeline`), :mod:`~cljax.training.record` (results and divergence) and
  :class:`~cljax.training.loop.Checkpointing` (:mod:`cljax.checkpoint` around the loop).
* :mod:`cljax.training.sampling` — how a step draws the current task's examples: i.i.d., or
  shuffled epochs (a keyed permutation per epoch, computed for the batch alone).

Randomness: run r has its own key; step s of the run uses ``fold_in(key_r, s)``, so results do not
depend on how the steps are split into calls, nor on which other runs share the program.
"""
from cljax.training.data import (
                                 StreamData,
                                 gather_rows,
                                 make_batch,
                                 place_data,
                                 prepare_data,
                                 sample_task_batch,
                                 stream_spec,
                                 to_batch,
)
from cljax.training.loop import Checkpointing, run_stream
from cljax.training.record import DIVERGENCE_FACTOR, Record, StreamResult
from cljax.training.runs import RUNS, RunLayout, runs_transform
from cljax.training.sampling import SAMPLINGS, epoch_indices
from cljax.training.trainer import Feed, Trainer, TrainState, device_feed, make_trainer

__all__ = ["TrainState", "StreamData", "StreamResult", "Trainer", "Feed", "device_feed",
           "prepare_data", "place_data", "gather_rows", "to_batch", "make_batch",
           "sample_task_batch", "stream_spec", "make_trainer", "run_stream", "runs_transform",
           "RUNS", "RunLayout", "Record", "Checkpointing", "DIVERGENCE_FACTOR", "SAMPLINGS",
           "epoch_indices"]
