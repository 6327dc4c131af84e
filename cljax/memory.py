"""A replay memory as a fixed-size pytree of stored examples (rehearsal methods).

:class:`ReplayMemory` holds up to ``capacity`` examples as the stream stores them — ``x`` in the
stream's storage dtype (uint8 pixels, or float features), ``label`` the label within its task,
``task`` — plus a validity mask and, optionally, the logits the model gave each example when it
was stored (DER++). Shapes never change, so a step that reads or writes the memory compiles once
for the whole stream and runs under ``vmap`` (one memory per run). Nothing here leaves the
device or uses Python lists; a memory stores examples, never indices into the stream.

Three ways to fill it:

* :func:`reservoir_add` — reservoir sampling over the whole stream (Vitter 1985, algorithm R):
  the n-th example offered is kept with probability m/n, replacing a uniformly chosen slot, so
  after n offers every example seen is held with probability m/n (ER_Res, DER++, A-GEM's paper).
  A batch is processed as if its rows were offered one after the other.
* :func:`store_task` with a **per-class budget** — at the end of each task, ``per_class``
  examples of each of its classes (van de Ven et al. 2022: "100 per class"; the memory grows
  with the classes seen, capacity = per_class × number of classes of the stream);
* :func:`store_task` with a **class-balanced budget** — a fixed total ``capacity`` shared equally
  by the classes seen so far (iCaRL's fixed memory K, m = K / classes seen): at each task end the
  quota shrinks to ``capacity // classes_seen``, each old class keeps its first examples in
  selection order (iCaRL's ``ReduceExemplarSet``) and each new class gets the quota.

In both class modes class c = task·k + label (k classes per task) owns the slots
``[c·q, c·q + q)`` for quota q. Which examples of a class are stored is a selection order: random
(without replacement) by default, or any order a method supplies (iCaRL's herding).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cljax.permutation import keyed_permutation
from cljax.types import Array, PRNGKey
from cljax.validation import check_positive_int, is_concrete

Rows = Mapping[str, Array]   # examples by field: x, label, task (and logits)


class ReplayMemory(NamedTuple):
    """A fixed-size memory of ``capacity = x.shape[0]`` stored examples.

    Attributes:
      x: ``[M, *example_shape]`` in the stream's storage dtype.
      label: int32 ``[M]``, each example's label within its task.
      task: int32 ``[M]``, its task.
      valid: bool ``[M]``, which slots hold an example.
      logits: float32 ``[M, C]`` stored with the examples (DER++), or None.
      seen: int32 scalar, examples offered so far (reservoir sampling's n).
    """

    x: Array
    label: Array
    task: Array
    valid: Array
    logits: Array | None
    seen: Array

    @property
    def capacity(self) -> int:
        return int(self.x.shape[0])


def init_memory(capacity: int, example_shape: Sequence[int], dtype: Any, *,
                logits_dim: int | None = None) -> ReplayMemory:
    """An empty memory for ``capacity`` examples of ``example_shape`` in ``dtype`` (plus stored
    logits of width ``logits_dim`` if given). ``capacity`` may be 0 (no memory)."""
    if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 0:
        raise ValueError(f"capacity must be an int >= 0; got {capacity!r}")
    try:
        shape = tuple(example_shape)
    except TypeError:
        raise TypeError(f"example_shape must be a sequence of ints >= 0 (one example's shape, "
                        f"e.g. (28, 28, 1)); got {example_shape!r}") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
               for d in shape):
        raise ValueError(f"example_shape must be a sequence of ints >= 0 (one example's shape, "
                         f"e.g. (28, 28, 1)); got {example_shape!r}")
    if logits_dim is not None:
        check_positive_int(logits_dim, name="logits_dim")
    m = int(capacity)
    return ReplayMemory(jnp.zeros((m, *shape), dtype), jnp.zeros((m,), jnp.int32),
                        jnp.zeros((m,), jnp.int32), jnp.zeros((m,), bool),
                        None if logits_dim is None else jnp.zeros((m, logits_dim), jnp.float32),
                        jnp.zeros((), jnp.int32))


def num_stored(memory: ReplayMemory) -> Array:
    """How many slots hold an example (int32 scalar)."""
    return jnp.sum(memory.valid.astype(jnp.int32))


def _check_rows(memory: ReplayMemory, rows: Rows, logits: Array | None) -> int:
    """The number of rows B, after checking each of ``x``, ``label``, ``task`` and ``logits``
    against the memory (each error names the array at fault)."""
    if not hasattr(rows, "keys"):
        raise TypeError(f"rows must be a dict with 'x', 'label' and 'task'; got "
                        f"{type(rows).__name__}")
    for key in ("x", "label", "task"):
        if key not in rows:
            raise KeyError(f"rows must hold 'x', 'label' and 'task'; got {sorted(rows)}")
    x_shape = jnp.shape(rows["x"])
    if len(x_shape) < 1 or x_shape[1:] != memory.x.shape[1:]:
        raise ValueError(f"rows['x'] must have shape [B, {', '.join(map(str, memory.x.shape[1:]))}]"
                         f" (B examples of the memory's shape); got {x_shape}")
    b = x_shape[0]
    for key in ("label", "task"):
        if jnp.shape(rows[key]) != (b,):
            raise ValueError(f"rows[{key!r}] must have shape ({b},), one per row of rows['x']; "
                             f"got {jnp.shape(rows[key])}")
    if memory.logits is None and logits is not None:
        raise ValueError("this memory stores no logits: create it with init_memory(..., "
                         "logits_dim=C) to store them (DER++)")
    if memory.logits is not None:
        if logits is None:
            raise ValueError("this memory stores logits with its examples: pass logits=[B, C]")
        if logits.shape != (b, memory.logits.shape[1]):
            raise ValueError(f"logits must have shape ({b}, {memory.logits.shape[1]}); got "
                             f"{logits.shape}")
    return b


def _check_mask(mask: Array | None, size: int, name: str, what: str) -> None:
    if mask is not None and (jnp.shape(mask) != (size,)
                             or jnp.asarray(mask).dtype != jnp.bool_):
        raise ValueError(f"{name} must be a bool array of shape ({size},), one per {what}; got "
                         f"{jnp.asarray(mask).dtype}{jnp.shape(mask)}")


def reservoir_add(memory: ReplayMemory, rows: Rows, key: PRNGKey, *,
                  logits: Array | None = None, mask: Array | None = None) -> ReplayMemory:
    """Offer ``rows`` (``[B]`` examples, in order) to the memory with reservoir sampling.

    The i-th example offered overall (0-based n_i) goes to slot n_i while the memory is not full,
    else to a slot j ~ U{0..n_i} if j < capacity (else it is dropped). The draws are independent
    of the memory's content, so a batch is exactly a sequence of offers in which a later row
    overwrites an earlier one drawn to the same slot. ``mask`` (bool ``[B]``) offers only some
    rows (e.g. not the memory rows of a mixed batch).
    """
    b = _check_rows(memory, rows, logits)
    _check_mask(mask, b, "mask", "row")
    m = memory.capacity
    if mask is None:
        mask = jnp.ones((b,), bool)
    if m == 0:
        return memory._replace(seen=memory.seen + jnp.sum(mask.astype(jnp.int32)))
    offered = mask.astype(jnp.int32)
    n = memory.seen + jnp.cumsum(offered) - 1                          # global index of each offer
    j = jax.random.randint(key, (b,), 0, jnp.maximum(n, 0) + 1)
    slot = jnp.where(n < m, n, jnp.where(j < m, j, m))
    slot = jnp.where(mask, slot, m)
    order = jnp.arange(b)
    last = jax.ops.segment_max(order, slot, num_segments=m + 1)      # the last writer of a slot
    write = mask & (slot < m) & (last[jnp.minimum(slot, m)] == order)
    target = jnp.where(write, slot, m)                                 # m: dropped by the scatter

    def put(dst, src):
        return dst.at[target].set(src.astype(dst.dtype), mode="drop")

    return ReplayMemory(put(memory.x, rows["x"]), put(memory.label, rows["label"]),
                        put(memory.task, rows["task"]), put(memory.valid, jnp.ones((b,), bool)),
                        None if memory.logits is None else put(memory.logits, logits),
                        memory.seen + jnp.sum(offered))


def sample_memory(memory: ReplayMemory, key: PRNGKey, size: int, *,
                  where: Array | None = None,
                  replace: bool = True) -> tuple[dict[str, Array], Array]:
    """``size`` stored examples drawn uniformly among the valid slots (and, if given, the slots
    where ``where`` (bool ``[M]``) holds): with replacement, or (``replace=False``) ``size``
    distinct slots — as many as the memory holds when it holds fewer, the rest of the rows
    marked not ok (a replay batch capped by how full the memory is).

    Returns ``(rows, ok)``: rows with ``x``, ``label``, ``task`` (and ``logits`` if stored), and
    ``ok`` (bool ``[size]``), False for every row when no slot qualifies (the rows are then
    arbitrary and must be masked out).
    """
    check_positive_int(size, name="size")
    m = memory.capacity
    if m == 0:
        raise ValueError("cannot sample from a memory of capacity 0")
    _check_mask(where, m, "where", "memory slot")
    eligible = memory.valid if where is None else memory.valid & where
    csum = jnp.cumsum(eligible.astype(jnp.int32))
    count = csum[-1]
    if replace:
        pos = jax.random.randint(key, (size,), 0, jnp.maximum(count, 1))
        ok = jnp.broadcast_to(count > 0, (size,))
    else:      # distinct positions: the first ``size`` of a keyed permutation of [0, count)
        lane = jnp.arange(size, dtype=jnp.int32)
        held = jnp.maximum(count, 1)
        pos = keyed_permutation(jnp.minimum(lane, held - 1), held, key)
        ok = lane < count
    slot = jnp.minimum(jnp.searchsorted(csum, pos, side="right"), m - 1)
    rows = {"x": memory.x[slot], "label": memory.label[slot], "task": memory.task[slot]}
    if memory.logits is not None:
        rows["logits"] = memory.logits[slot]
    return rows, ok


# --------------------------------------------------------------------------------------------
# Class-partitioned memories (per-class and class-balanced budgets), filled at task ends.
# --------------------------------------------------------------------------------------------

Selection = Callable[[Rows, Array, int, PRNGKey], tuple[Array, Array]]


def random_selection(rows: Rows, members: Array, size: int, key: PRNGKey
                     ) -> tuple[Array, Array]:
    """``size`` row indices of the rows where ``members`` holds, in a uniformly random order
    (without replacement), and which of them are members (False in the tail when fewer than
    ``size`` rows qualify)."""
    del rows
    scores = jnp.where(members, jax.random.uniform(key, members.shape), -1.0)
    idx = jax.lax.top_k(scores, size)[1]
    return idx, members[idx]


class ClassBudget(NamedTuple):
    """How :func:`store_task` shares a class-partitioned memory.

    ``per_class``: fixed examples per class (capacity = per_class × num_classes), or None with
    ``capacity``: a total shared equally by the classes seen so far.
    """

    classes_per_task: int
    num_classes: int
    per_class: int | None = None
    capacity: int | None = None

    def memory_capacity(self) -> int:
        if self.per_class is not None:
            return self.per_class * self.num_classes
        assert self.capacity is not None   # exactly one of the two (class_budget validates)
        return self.capacity

    def max_quota(self) -> int:
        """The largest quota of a class (the first task's, in class-balanced mode)."""
        if self.per_class is not None:
            return self.per_class
        assert self.capacity is not None
        return self.capacity // self.classes_per_task

    def quota(self, tasks_seen: Array) -> Array:
        """Examples per class once ``tasks_seen`` tasks (≥ 1) have been stored."""
        if self.per_class is not None:
            return jnp.asarray(self.per_class, jnp.int32)
        seen = jnp.maximum(tasks_seen, 1) * self.classes_per_task
        assert self.capacity is not None
        return (self.capacity // seen).astype(jnp.int32)


def class_budget(*, classes_per_task: int, num_classes: int, per_class: int | None = None,
                 capacity: int | None = None) -> ClassBudget:
    """A :class:`ClassBudget`, validated: exactly one of ``per_class`` (≥ 1) and ``capacity``
    (≥ ``num_classes``, so every class keeps at least one example)."""
    check_positive_int(classes_per_task, name="classes_per_task")
    check_positive_int(num_classes, name="num_classes")
    if (per_class is None) == (capacity is None):
        raise ValueError("give exactly one of per_class (a budget per class) and capacity "
                         "(a total shared by the classes seen)")
    if per_class is not None:
        check_positive_int(per_class, name="per_class")
    else:
        assert capacity is not None          # exactly one of the two, checked above
        check_positive_int(capacity, name="capacity")
        if capacity < num_classes:
            raise ValueError(f"a class-balanced memory of capacity {capacity} cannot hold one "
                             f"example of each of the stream's {num_classes} classes; use a "
                             f"capacity >= {num_classes}")
    return ClassBudget(classes_per_task, num_classes, per_class, capacity)


def store_task(memory: ReplayMemory, budget: ClassBudget, rows: Rows, count: Array, task: Array,
               key: PRNGKey, *, select: Selection = random_selection,
               logits: Array | None = None) -> ReplayMemory:
    """Store the finished ``task``'s examples class by class (per-class or class-balanced budget).

    Args:
      memory: a memory of ``budget.memory_capacity()`` slots.
      rows: the task's stored examples (``[N]`` rows; the first ``count`` are real).
      task: the task index (traced int), tasks being stored in order 0, 1, ….
      select: ``select(rows, members, size, key) -> (indices [size], ok [size])``, the order in
        which a class's examples (``members``: bool ``[N]``) are kept and which entries are
        real (default: random without replacement; iCaRL: herding). Only the first quota of
        them is stored.
      logits: ``[N, C]`` to store with the rows, if the memory keeps logits.

    Old classes keep their first ``quota`` examples (their slots move when the quota shrinks);
    a class with fewer examples than its quota keeps all of them.

    ``count`` must lie in [0, N], ``task`` in [0, the budget's tasks) and the real rows' labels
    in [0, classes per task): a ``ValueError`` when they are concrete; under ``jit`` they are
    traced and cannot raise (a task or label outside the budget then stores nothing, a count
    above N counts as N).
    """
    if not isinstance(budget, ClassBudget):
        raise TypeError(f"budget must be a ClassBudget (class_budget(...)); got "
                        f"{type(budget).__name__}")
    n = _check_rows(memory, rows, logits)
    m = memory.capacity
    if m != budget.memory_capacity():
        raise ValueError(f"memory has {m} slots; the budget needs {budget.memory_capacity()}")
    _check_task_values(budget, rows, count, task, n)
    k = budget.classes_per_task
    q_max = min(budget.max_quota(), n)
    real = jnp.arange(n) < count
    keys = jax.random.split(key, k)
    chosen = []
    for j in range(k):   # k classes of the task (static, small)
        members = real & (rows["label"] == j)
        chosen.append(select(rows, members, q_max, keys[j]))
    sel_idx = jnp.stack([c[0] for c in chosen])                     # [k, q_max]
    sel_ok = jnp.stack([c[1] for c in chosen])

    q_new = budget.quota(task + 1)
    q_old = budget.quota(task)
    s = jnp.arange(m)
    c = s // q_new
    i = s % q_new
    first_new = task * k
    is_new = (c >= first_new) & (c < first_new + k)
    is_old = c < first_new
    old_src = jnp.minimum(c * q_old + i, m - 1)
    jj = jnp.clip(c - first_new, 0, k - 1)
    ii = jnp.minimum(i, q_max - 1)
    new_row = sel_idx[jj, ii]
    new_ok = sel_ok[jj, ii] & (i < q_max)
    valid = jnp.where(is_new, new_ok, is_old & memory.valid[old_src])

    def pick(old, new):
        shape = (m,) + (1,) * (old.ndim - 1)
        return jnp.where(is_new.reshape(shape), new[new_row].astype(old.dtype), old[old_src])

    return ReplayMemory(pick(memory.x, rows["x"]), pick(memory.label, rows["label"]),
                        pick(memory.task, rows["task"]), valid,
                        None if memory.logits is None else pick(memory.logits, logits),
                        memory.seen + count.astype(jnp.int32))


def _check_task_values(budget: ClassBudget, rows: Rows, count: Array, task: Array,
                       n: int) -> None:
    """:func:`store_task`'s value checks, on concrete values only."""
    k = budget.classes_per_task
    tasks = budget.num_classes // k
    if jnp.ndim(count) != 0 or jnp.ndim(task) != 0:
        raise ValueError(f"count and task must be scalars; got shapes {jnp.shape(count)} and "
                         f"{jnp.shape(task)}")
    if is_concrete(count) and not 0 <= int(count) <= n:
        raise ValueError(f"count must lie in [0, {n}] (the real rows among the {n} given); got "
                         f"{int(count)}")
    if is_concrete(task) and not 0 <= int(task) < tasks:
        raise ValueError(f"task must lie in [0, {tasks}) (the budget's {budget.num_classes} "
                         f"classes in tasks of {k}); got {int(task)}")
    if is_concrete(count) and is_concrete(rows["label"]) and int(count) > 0:
        labels = np.asarray(rows["label"])[:int(count)]
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"rows['label'] of the {int(count)} real rows must lie in [0, {k}) "
                             f"(labels within the task; the budget has {k} classes per task); "
                             f"got labels in [{labels.min()}, {labels.max()}]")


__all__ = ["ReplayMemory", "init_memory", "num_stored", "reservoir_add", "sample_memory",
           "ClassBudget", "class_budget", "store_task", "random_selection", "Selection"]
