"""The three continual-learning scenarios of van de Ven & Tolias 2019.

* ``task`` (Task-IL): the task id is given; one output head per task (``num_heads = T``) over the
  task's ``k`` classes; labels are within-task (0..k-1).
* ``domain`` (Domain-IL): the task id is hidden; one shared ``k``-way head; within-task labels.
* ``class`` (Class-IL): the task id is hidden; one shared head over every class of the stream;
  labels are class identities (all classes active at all times).

Task-IL has a second form, ``task_heads="masked"``: one head over every class, as in Class-IL,
with the logits of the classes outside the example's task masked out (van de Ven's "Task-IL by
masking"), so a single-head method gets a Task-IL number too.

A scenario is a label table ``[T, k]`` mapping (task, within-task label) to the model's target,
plus the head layout. The model receives ``batch['task']`` in every scenario; single-head models
ignore it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cljax.data.streams import TaskStream
from cljax.validation import check_choice

SCENARIOS = ("task", "domain", "class")
TASK_HEADS = ("separate", "masked")
"""The two forms of Task-IL: a head per task, or one head with the other tasks' classes masked."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """The head layout and label table of one scenario (made by :func:`make_scenario`).

    ``name`` is ``"task"``, ``"domain"`` or ``"class"``; the model has ``num_heads`` heads of
    ``num_outputs`` logits each; ``label_table`` (int32 ``[T, k]``) maps (task t, within-task
    label) to the model's target; ``logit_mask`` (bool ``[T, num_outputs]``, masked Task-IL
    only, else None) says which outputs task t may predict.
    """

    name: str
    num_heads: int
    num_outputs: int
    label_table: np.ndarray  # int32 [T, k]: target of (task t, within-task label)
    logit_mask: np.ndarray | None = None


def make_scenario(stream: TaskStream, name: str, *, task_heads: str = "separate") -> Scenario:
    """Heads and label table of scenario ``name`` ('task', 'domain' or 'class') for ``stream``;
    ``task_heads`` ('separate' or 'masked') is the form of Task-IL (module docstring)."""
    check_choice(name, SCENARIOS, name="scenario")
    check_choice(task_heads, TASK_HEADS, name="task_heads")
    if name == "task" and task_heads == "masked":
        single = make_scenario(stream, "class")
        mask = np.zeros((stream.num_tasks, single.num_outputs), bool)
        for t, cls in enumerate(stream.classes):
            mask[t, single.label_table[t, :len(cls)]] = True
        return Scenario("task", 1, single.num_outputs, single.label_table, mask)
    sizes = {len(c) for c in stream.classes}
    k = max(sizes)
    if name in ("task", "domain") and len(sizes) > 1:
        raise ValueError(f"the {name!r} scenario needs the same number of classes in every task; "
                         f"{stream.name} has tasks of sizes {sorted(sizes)}")
    T = stream.num_tasks
    if name == "class":
        identities = sorted({c for cls in stream.classes for c in cls})
        rank = {c: i for i, c in enumerate(identities)}
        table = np.zeros((T, k), dtype=np.int32)
        for t, cls in enumerate(stream.classes):
            table[t, :len(cls)] = [rank[c] for c in cls]
        return Scenario(name, 1, len(identities), table)
    table = np.tile(np.arange(k, dtype=np.int32), (T, 1))
    return Scenario(name, T if name == "task" else 1, k, table)


__all__ = ["SCENARIOS", "TASK_HEADS", "Scenario", "make_scenario"]
