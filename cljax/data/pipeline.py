"""Streams larger than the device: keep the arrays on the host, feed the scanned steps in chunks.

:func:`cljax.training.prepare_data` puts a whole stream on the device when it fits (today's
path: batches are gathered on the device inside the scanned step). When it does not — a stream
whose train and test arrays exceed a device-memory cap (:func:`default_memory_cap`, or the
``memory_cap`` given) — or with ``placement="host"``, the arrays stay in host memory
(:class:`HostArrays`) and :func:`cljax.training.run_stream` feeds the device one call of
``fit`` at a time:

1. **plan** — a small jitted program replays the step's randomness for the call's steps: the
   same ``fold_in(run key, step)`` keys, the method's own ``batch`` hook, and the same
   ``jax.random.randint`` draws the step makes, recording the (task, index) pairs of every draw
   instead of gathering rows (``Trainer.plan``);
2. **gather** — numpy gathers those rows from the host arrays (:meth:`HostArrays.gather`), in a
   background thread that prepares call k+1 while the device runs call k (:class:`Prefetcher`);
3. **fit** — ``Trainer.fit_rows`` runs the same scanned step with the gathered rows as the
   scan's inputs; each step recomputes its draws and checks them against the plan, so a method
   whose draws depended on state that changed within the call is reported, never silently
   trained on other examples.

The same keys pick the same examples, so the two paths give the same results (tests/
test_pipeline.py checks them bit for bit). At a task boundary the ending task's training set is
on the device (the boundary functions may read the whole task: exemplar selection, Fisher
samples), and evaluation puts one task's test set on the device at a time; so on the host path
the device holds the per-call rows (twice: one call prefetched), one task's train or test
arrays, and the model state — never the stream. :func:`steps_per_call_for` sizes the calls to
a budget (a quarter of the cap per buffer).

Dependencies: numpy and a thread; no grain / tf.data.
"""
from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cljax.validation import check_choice

if TYPE_CHECKING:
    from cljax.data.streams import TaskStream

PLACEMENTS = ("auto", "device", "host")
DEFAULT_MEMORY_FRACTION = 0.5
"""Default cap on the stream's bytes on one device, as a fraction of the device's memory (its
``memory_stats()['bytes_limit']``; on a CPU, of the host's physical memory): the rest is for
the model, optimizer and method states of every run and XLA's buffers."""


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def device_memory_bytes(devices: Sequence[Any] | None = None) -> int | None:
    """The smallest memory of ``devices`` (default: the first device) in bytes, from
    ``memory_stats()['bytes_limit']``; a CPU reports none: the host's physical memory; None if
    unknown."""
    import jax

    limits = []
    for d in (devices or jax.devices()[:1]):
        try:
            stats = d.memory_stats() or {}
        except Exception:
            stats = {}
        limit = stats.get("bytes_limit")
        if limit is None and d.platform == "cpu":
            limit = _physical_memory()
        if limit is not None:
            limits.append(int(limit))
    return min(limits) if limits else None


def default_memory_cap(devices: Sequence[Any] | None = None, *,
                       fraction: float = DEFAULT_MEMORY_FRACTION) -> int | None:
    """``fraction`` of :func:`device_memory_bytes` (None if the memory is unknown: then
    ``placement="auto"`` keeps the stream on the device)."""
    total = device_memory_bytes(devices)
    return None if total is None else int(fraction * total)


def _arrays_bytes(arrays) -> int:
    return int(sum(np.asarray(a).nbytes for a in (arrays.x, arrays.y, arrays.n)))


def stream_bytes(stream: TaskStream) -> int:
    """Bytes of a :class:`~cljax.data.TaskStream`'s train and test arrays (what the device path
    puts on every device)."""
    return _arrays_bytes(stream.train) + _arrays_bytes(stream.test)


def task_bytes(stream: TaskStream) -> int:
    """Bytes of the largest single task's train or test arrays (what the host path puts on the
    device at a boundary or an evaluation)."""
    def one(a):
        return (a.x.nbytes + a.y.nbytes) // max(1, a.x.shape[0])
    return int(max(one(stream.train), one(stream.test)))


def choose_placement(stream: TaskStream, *, placement: str = "auto", memory_cap: int | None = None,
                     devices: Sequence[Any] | None = None) -> str:
    """``"device"`` or ``"host"`` for ``stream``: ``placement`` when forced; with ``"auto"``,
    ``"device"`` unless :func:`stream_bytes` exceeds ``memory_cap`` (default
    :func:`default_memory_cap` of ``devices``). A host placement whose single task does not
    fit the cap is an error (a boundary needs one task's training set on the device)."""
    check_choice(placement, PLACEMENTS, name="placement")
    if memory_cap is not None and (not isinstance(memory_cap, (int, np.integer))
                                   or isinstance(memory_cap, bool) or memory_cap < 1):
        raise ValueError(f"memory_cap must be a positive number of bytes; got {memory_cap!r}")
    cap = memory_cap if memory_cap is not None else (
        default_memory_cap(devices) if placement != "device" else None)
    if placement == "auto":
        placement = "device" if cap is None or stream_bytes(stream) <= cap else "host"
    if placement == "host" and cap is not None and task_bytes(stream) > cap:
        raise ValueError(f"one task of {stream.name} takes {task_bytes(stream) / 2**20:.1f} MiB,"
                         f" more than the device-memory cap of {cap / 2**20:.1f} MiB: the host "
                         "pipeline puts one task's arrays on the device at a task boundary and "
                         "at evaluation; raise the cap or split the stream into more tasks")
    return placement


class HostArrays:
    """A stream's arrays kept in host memory (numpy), with the gathers the host path needs.

    Compared and hashed by identity (it is a static part of :class:`cljax.training.StreamData`).
    ``train`` / ``test`` are :class:`~cljax.data.TaskArrays` (test padded to the evaluation
    chunk); ``memory_cap`` the cap the calls are sized to (None: unknown).
    """

    def __init__(self, train, test, memory_cap: int | None = None):
        from cljax.data.streams import TaskArrays

        self.train = TaskArrays(*(np.asarray(a) for a in train))
        self.test = TaskArrays(*(np.asarray(a) for a in test))
        self.memory_cap = memory_cap

    @property
    def row_bytes(self) -> int:
        """Bytes of one gathered training row (example, label, task and index)."""
        return int(np.prod(self.train.x.shape[2:], dtype=np.int64) * self.train.x.itemsize
                   + 12)

    def gather(self, plan: Sequence[tuple[Any, Any]]) -> tuple[dict, ...]:
        """The rows of every draw of a plan: for each draw, ``x``, ``label`` (the stored
        within-task label), ``task`` and ``idx`` with the plan's leading shape."""
        out = []
        for tasks, idx in plan:
            tasks = np.asarray(tasks)
            idx = np.asarray(idx)
            out.append({"x": self.train.x[tasks, idx], "label": self.train.y[tasks, idx],
                        "task": tasks, "idx": idx})
        return tuple(out)

    def train_task(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Task ``t``'s stored training rows ``(x [N, ...], label [N])``."""
        return np.asarray(self.train.x[t]), np.asarray(self.train.y[t])   # views: numpy already

    def test_task(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Task ``t``'s padded test rows ``(x [N, ...], label [N])``."""
        return np.asarray(self.test.x[t]), np.asarray(self.test.y[t])

    def __repr__(self) -> str:
        return (f"HostArrays(train x {self.train.x.shape} {self.train.x.dtype}, test x "
                f"{self.test.x.shape})")


def steps_per_call_for(num_steps: int, requested: int, *, step_bytes: int,
                       budget: int | None) -> int:
    """The largest divisor of ``num_steps`` that is ``<= requested`` and whose calls' rows
    (``step_bytes`` a step, for every run) fit ``budget`` bytes (at least 1)."""
    best = 1
    for d in range(1, min(requested, num_steps) + 1):
        if num_steps % d == 0 and (budget is None or d * step_bytes <= budget):
            best = d
    return best


class Prefetcher:
    """One background thread that prepares the next host→device transfer while the device
    computes (numpy's gathers and ``device_put`` release the GIL for the copying); ``submit``
    returns a future, ``close`` stops the thread."""

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cljax-data")

    def submit(self, fn: Callable, *args: Any) -> concurrent.futures.Future:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["PLACEMENTS", "DEFAULT_MEMORY_FRACTION", "device_memory_bytes", "default_memory_cap",
           "stream_bytes", "task_bytes", "choose_placement", "HostArrays", "steps_per_call_for",
           "Prefetcher"]
