"""How the task loop's calls reach the device: two executors with one interface.

Both compile a :class:`~cljax.training.Trainer`'s functions once for the stream (over the runs of
a :class:`~cljax.training.runs.RunLayout`, ahead of time) and offer the loop of
:func:`cljax.training.run_stream` five verbs: ``start`` (the runs' initial state), ``begin``
(the method's ``begin_task``, where it has one), ``calls`` (a task's steps, one compiled call
at a time), ``boundary`` and ``evaluate``.

* :class:`DeviceExecutor` — the whole stream is on the device; every batch is gathered there,
  inside the scanned step.
* :class:`HostExecutor` — the stream stays in host memory (:mod:`cljax.data.pipeline`): a small
  program *plans* each call's draws (the steps' own keys and the method's batch hook, no
  gathering), numpy gathers those rows on the host in a background thread one call ahead, and
  the scanned step takes them as its inputs, checking that it draws what was planned. A boundary
  gets the ending task's training rows, an evaluation one task's test rows at a time. Same keys,
  same examples: the same results as the device path, bit for bit (tests/test_pipeline.py).
"""
from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cljax.methods.base import Clock, Rows
from cljax.training.data import StreamData
from cljax.training.runs import RunLayout
from cljax.training.trainer import Feed, Trainer, TrainState

Call = tuple[TrainState, np.ndarray, int]   # (state after the call, losses [R, n], steps done)


class DeviceExecutor:
    """Calls of ``steps_per_call`` steps with the stream on the device."""

    def __init__(self, trainer: Trainer, data: StreamData, layout: RunLayout, *,
                 num_steps: int, steps_per_call: int):
        self.trainer, self.data, self.layout = trainer, data, layout
        self.num_steps, self.steps_per_call = num_steps, steps_per_call
        self.info: dict = {}

    def start(self, keys: jax.Array, hparams: dict) -> TrainState:
        """The runs' initial state; compiles the stream's programs."""
        tr, data, lay = self.trainer, self.data, self.layout
        state = lay.jit(tr.init, (0, 0, None))(keys, hparams, data)
        task = lay.scalar(0)
        self._fit = lay.compile(tr.fit, (0, None, None, None, None), state, data, task,
                                self.steps_per_call, self.num_steps, static=(3, 4))
        self._evaluate = lay.compile(tr.evaluate, (0, None), state, data)
        self._end_task = lay.compile(tr.end_task, (0, None, None), state, data, task)
        self._begin_task = (lay.compile(tr.begin_task, (0, None, None), state, data, task)
                            if tr.has_begin else None)
        return state

    def calls(self, state: TrainState, t: int, first: int) -> Iterator[Call]:
        """Task ``t``'s calls from ``first`` steps done on."""
        task = self.layout.scalar(t)
        for done in range(first + self.steps_per_call, self.num_steps + 1, self.steps_per_call):
            state, losses = self._fit(state, self.data, task)
            yield state, self.layout.real(self.layout.to_host(losses)), done

    def boundary(self, state: TrainState, t: int) -> TrainState:
        return self._end_task(state, self.data, self.layout.scalar(t))

    def begin(self, state: TrainState, t: int) -> TrainState:
        """The method's ``begin_task`` of task ``t`` (unchanged state when it has none)."""
        if self._begin_task is None:
            return state
        return self._begin_task(state, self.data, self.layout.scalar(t))

    def evaluate(self, state: TrainState) -> tuple[np.ndarray, np.ndarray]:
        """Every task's accuracy and loss, ``[R, T]`` each (host arrays, real runs)."""
        return self.layout.real(self.layout.to_host(self._evaluate(state, self.data)))

    def close(self) -> None:
        pass


def _fed_step_feed(fed: tuple[Rows, ...], ok: list) -> Feed:
    """The step's feed on the host path: the j-th draw of the step answers with ``fed[j]`` and
    checks that it asks for the planned examples (``ok[0]`` turns False where it does not)."""
    calls = iter(fed)

    def gather(tasks, idx):
        b = next(calls, None)
        if b is None:
            raise ValueError("the method's batch hook draws more often than the plan recorded")
        ok[0] = ok[0] & jnp.all(b["task"] == tasks) & jnp.all(b["idx"] == idx)
        return {"x": b["x"], "label": b["label"], "task": tasks}

    return Feed(gather, _no_whole_task, 0)


def _no_whole_task(task, idx):
    raise NotImplementedError(
        "the method reads a whole task (BatchContext.task_rows) in its batch hook, which the "
        "host pipeline cannot feed: prepare the data with placement='device'")


def _no_draws(tasks, idx):
    raise NotImplementedError("a task boundary draws through BoundaryContext.sample_batch")


class HostExecutor:
    """Calls fed from the host (:mod:`cljax.data.pipeline`), planned one call ahead."""

    def __init__(self, trainer: Trainer, data: StreamData, layout: RunLayout, *,
                 num_steps: int, steps_per_call: int):
        from cljax.data import pipeline

        self.trainer, self.data, self.layout, self.host = trainer, data, layout, data.host
        self.num_steps, self.steps_per_call = num_steps, steps_per_call
        self.pool = pipeline.Prefetcher()
        self.info: dict = {}

    # -- the host path's programs, from the trainer's primitives --------------------------------

    def _plan(self, state, data, task, offset, num_steps, task_steps):
        """The draws of the ``num_steps`` steps ``offset`` after ``state``'s: for each draw of
        the batch hook, ``(tasks, idx)`` ``[num_steps, n]`` (no example gathered)."""
        spec_shape = tuple(data.train.x.shape[2:])

        def one(i):
            calls = []

            def gather(tasks, idx):
                calls.append((tasks, idx))
                return {"x": jnp.zeros(tasks.shape + spec_shape, data.train.x.dtype),
                        "label": jnp.zeros(tasks.shape, jnp.int32), "task": tasks}

            clock = Clock(state.step + offset + i, state.task_step + offset + i,
                          jnp.asarray(task_steps, jnp.int32))
            self.trainer.draw(state, data, task, clock, Feed(gather, _no_whole_task, 0))
            return tuple(calls)

        return jax.lax.map(one, jnp.arange(num_steps, dtype=jnp.int32))

    def _fit_rows(self, state, data, task, rows, num_steps, task_steps):
        """The scanned steps with ``rows`` fed in; returns ``(state, (losses, ok))``."""
        def body(s, fed):
            ok = [jnp.ones((), bool)]
            new, loss = self.trainer.step(s, data, task, task_steps, _fed_step_feed(fed, ok))
            return new, (loss, ok[0])

        return jax.lax.scan(body, state, rows, length=num_steps)

    def _end_task_rows(self, state, data, task, train_t, begin=False):
        """The boundary (``begin``: the task's beginning) with the task's stored rows
        ``(x [N, ...], label [N])`` fed in: it may read only that task."""
        x_t, y_t = train_t

        def gather_task(t, idx):
            if t is not task:
                raise NotImplementedError(
                    f"method {self.trainer.method.name!r} reads another task than the one "
                    "beginning or ending at a task boundary, which the host pipeline does not "
                    "hold on the device: prepare the data with placement='device'")
            return {"x": x_t[idx], "label": y_t[idx], "task": jnp.full(idx.shape, t, jnp.int32)}

        return self.trainer.boundary(state, data, task,
                                     Feed(_no_draws, gather_task, int(y_t.shape[0])),
                                     begin=begin)

    # -- the executor's verbs -------------------------------------------------------------------

    def start(self, keys: jax.Array, hparams: dict) -> TrainState:
        from cljax.data import pipeline

        tr, data, lay, host = self.trainer, self.data, self.layout, self.host
        state = lay.jit(tr.init, (0, 0, None))(keys, hparams, data)
        task0 = lay.scalar(0)
        plan = lay.jit(self._plan, (0, None, None, None, None, None), static=(4, 5))
        draws1 = jax.eval_shape(lambda s: plan(s, data, task0, task0, 1, self.num_steps), state)
        step_bytes = lay.padded * sum(int(np.prod(t.shape[2:])) for t, _ in draws1) \
            * host.row_bytes
        budget = None if host.memory_cap is None else host.memory_cap // 4
        chunk = pipeline.steps_per_call_for(self.steps_per_call, self.steps_per_call,
                                            step_bytes=step_bytes, budget=budget)
        self.steps_per_call = chunk
        draws = jax.eval_shape(lambda s: plan(s, data, task0, task0, chunk, self.num_steps),
                               state)
        ex_shape, ex_dtype = host.train.x.shape[2:], host.train.x.dtype
        rows_spec = tuple({"x": lay.spec(t.shape + ex_shape, ex_dtype),
                           "label": lay.spec(t.shape, np.int32), "task": lay.spec(t.shape, t.dtype),
                           "idx": lay.spec(i.shape, i.dtype)} for t, i in draws)
        test_spec = (lay.spec(host.test.x.shape[1:], host.test.x.dtype, replicated=True),
                     lay.spec(host.test.y.shape[1:], host.test.y.dtype, replicated=True))
        train_spec = (lay.spec(host.train.x.shape[1:], ex_dtype, replicated=True),
                      lay.spec(host.train.y.shape[1:], host.train.y.dtype, replicated=True))
        self._plan_c = plan.lower(state, data, task0, task0, chunk, self.num_steps).compile()
        self._fit_c = lay.compile(self._fit_rows, (0, None, None, 0, None, None), state, data,
                                  task0, rows_spec, chunk, self.num_steps, static=(4, 5))
        self._evaluate_c = lay.compile(tr.evaluate_task, (0, None, None, None), state, data,
                                       task0, test_spec)
        self._end_c = lay.compile(self._end_task_rows, (0, None, None, None), state, data,
                                  task0, train_spec)
        self._begin_c = (lay.compile(lambda s, d, t, rows: self._end_task_rows(s, d, t, rows,
                                                                               begin=True),
                                     (0, None, None, None), state, data, task0, train_spec)
                         if tr.has_begin else None)
        self._offset_next = lay.scalar(chunk)
        self.info = {"placement": "host", "steps_per_call": chunk,
                     "call_bytes": chunk * step_bytes, "memory_cap": host.memory_cap,
                     "task_bytes": int(max(host.train.x[0].nbytes + host.train.y[0].nbytes,
                                           host.test.x[0].nbytes + host.test.y[0].nbytes))}
        return state

    def _fetch_rows(self, planned):
        return self.layout.distribute(self.host.gather(self.layout.to_host(planned)))

    def _fetch_test(self, t):
        return self.layout.replicate(self.host.test_task(t))

    def calls(self, state: TrainState, t: int, first: int) -> Iterator[Call]:
        data, lay, chunk = self.data, self.layout, self.steps_per_call
        task, start = lay.scalar(t), lay.scalar(0)
        fut = self.pool.submit(self._fetch_rows, self._plan_c(state, data, task, start))
        for done in range(first + chunk, self.num_steps + 1, chunk):
            rows = fut.result()
            if done + chunk <= self.num_steps:   # the next call's rows, while this one trains
                fut = self.pool.submit(self._fetch_rows,
                                       self._plan_c(state, data, task, self._offset_next))
            new, (losses, ok) = self._fit_c(state, data, task, rows)
            if not np.all(lay.to_host(ok)):
                # planned ahead from an older state: plan again from this call's own state
                rows = self._fetch_rows(self._plan_c(state, data, task, start))
                new, (losses, ok) = self._fit_c(state, data, task, rows)
                if not np.all(lay.to_host(ok)):
                    raise RuntimeError(
                        f"task {t}, steps {done - chunk}..{done}: the method's batch hook drew "
                        "other examples than planned (its draws depend on state changed within "
                        "a call); run the host pipeline with steps_per_call=1 or place the data "
                        "on the device")
            state = new
            yield state, lay.real(lay.to_host(losses)), done

    def boundary(self, state: TrainState, t: int) -> TrainState:
        return self._end_c(state, self.data, self.layout.scalar(t),
                           self.layout.replicate(self.host.train_task(t)))

    def begin(self, state: TrainState, t: int) -> TrainState:
        if self._begin_c is None:
            return state
        return self._begin_c(state, self.data, self.layout.scalar(t),
                             self.layout.replicate(self.host.train_task(t)))

    def evaluate(self, state: TrainState) -> tuple[np.ndarray, np.ndarray]:
        lay, T = self.layout, self.host.test.y.shape[0]
        outs, fut = [], self.pool.submit(self._fetch_test, 0)
        for t in range(T):
            test_t = fut.result()
            if t + 1 < T:
                fut = self.pool.submit(self._fetch_test, t + 1)
            outs.append(self._evaluate_c(state, self.data, lay.scalar(t), test_t))
        acc, loss = zip(*outs)
        return (lay.real(np.stack([lay.to_host(a) for a in acc], 1)),
                lay.real(np.stack([lay.to_host(a) for a in loss], 1)))

    def close(self) -> None:
        self.pool.close()


def make_executor(trainer: Trainer, data: StreamData, layout: RunLayout, *, num_steps: int,
                  steps_per_call: int) -> DeviceExecutor | HostExecutor:
    """The executor for where ``data`` lives (``data.host``: the host pipeline)."""
    kind = DeviceExecutor if getattr(data, "host", None) is None else HostExecutor
    return kind(trainer, layout.place(data), layout, num_steps=num_steps,
                steps_per_call=steps_per_call)


__all__ = ["DeviceExecutor", "HostExecutor", "make_executor"]
