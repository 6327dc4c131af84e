"""The baselines of every CL table: fine-tuning ("none", the lower bound), joint training
("joint", the upper bound: each task trains on the union of all tasks seen so far, so after the
last task the model has been trained on the whole stream's data), and offline joint training
("joint_offline": every step draws from the whole stream from the first task on — the
"multitask" / "offline" row of van de Ven & Tolias 2019, Hsu et al. 2018 and A-GEM's table).

How the joint baselines draw (``draw``, :data:`JOINT_DRAWS`): ``"task"`` (the default) picks each
example's task uniformly, then one of its examples i.i.d.; ``"example"`` draws from the union of
the tasks' examples, each equally likely, by the run's sampling rule — shuffled passes over the
union under ``sampling="shuffled"`` / ``"shuffled_drop_last"`` (:func:`union_batch`), what the
papers' code does: van de Ven's ``ConcatDataset`` loader of the tasks so far (drop-last passes),
A-GEM's multitask baseline (one shuffled pass over every task's examples concatenated);
``"stratified"`` gives every task alike its share of each batch (example i from task i mod the
number of tasks, i.i.d. within it), as van de Ven's Task-IL offline replay draws ⌈B/t⌉ examples
from each of the t tasks' own loaders (their ``train.py``; they average the t per-task losses,
ours the B examples' — the same to the ≤ 1-example differences of the shares)."""
import jax
import jax.numpy as jnp

from cljax.methods.base import BatchContext, Method, Rows, all_tasks_batch, union_batch
from cljax.types import Array
from cljax.validation import check_choice

JOINT_DRAWS = ("task", "example", "stratified")
"""How the joint baselines draw their batch (module docstring)."""


def whole_stream_batch(ctx: BatchContext, mstate: object) -> Rows:
    """Each example from a task drawn uniformly among all the stream's tasks, the future ones
    included (offline joint training: not a continual learner, the ceiling it is compared
    with)."""
    del mstate
    tasks = jax.random.randint(ctx.key, (ctx.batch_size,), 0, ctx.spec.num_tasks,
                               dtype=jnp.int32)
    return ctx.draw(ctx.data_key, tasks)


def seen_union_batch(ctx: BatchContext, mstate: object) -> Rows:
    """The union of tasks ``0..task``, each example equally likely (:func:`union_batch`): a pass
    over it per task, keyed by the task, positioned by the step within the task."""
    del mstate
    return union_batch(ctx, ctx.task, pool=ctx.task, position=ctx.clock.task_step)


def whole_union_batch(ctx: BatchContext, mstate: object) -> Rows:
    """The union of the stream's tasks, each example equally likely (:func:`union_batch`): its
    passes run across the task boundaries, positioned by the run's global step, so ``T`` tasks
    of ``n / batch`` steps each are one pass over the ``T · n`` examples."""
    del mstate
    return union_batch(ctx, ctx.spec.num_tasks - 1, pool=ctx.spec.num_tasks,
                       position=ctx.clock.step)


def stratified_batch(ctx: BatchContext, num_tasks: Array | int) -> Rows:
    """Tasks ``0..num_tasks-1`` alike in the batch: example i from task ``i mod num_tasks``
    (each task ⌊B/n⌋ or ⌈B/n⌉ examples), drawn by ``ctx.draw`` within its task. ``num_tasks``
    may be traced (the task index + 1); a Python int must be positive."""
    if isinstance(num_tasks, int) and (isinstance(num_tasks, bool) or num_tasks < 1):
        raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
    tasks = jnp.arange(ctx.batch_size, dtype=jnp.int32) % jnp.asarray(num_tasks, jnp.int32)
    return ctx.draw(ctx.data_key, tasks)


def _check_draw(draw: str) -> None:
    check_choice(draw, JOINT_DRAWS, name="draw")


none = Method(name="none")
joint = Method(name="joint", batch=all_tasks_batch)
joint_offline = Method(name="joint_offline", batch=whole_stream_batch)


def joint_training(draw: str = "task") -> Method:
    """Joint training: each task trains on the union of all tasks seen so far, the upper bound.
    ``draw``: ``"task"`` (a task uniformly, then an example i.i.d.), ``"example"`` (the
    union's examples alike, by the run's sampling rule) or ``"stratified"`` (every task seen
    alike in each batch; module docstring)."""
    _check_draw(draw)
    if draw == "stratified":
        return Method(name="joint", batch=lambda ctx, mstate: stratified_batch(ctx, ctx.task + 1))
    return joint if draw == "task" else Method(name="joint", batch=seen_union_batch)


def offline_joint_training(draw: str = "task") -> Method:
    """Offline joint training: every step, from the first task on, draws from the whole stream
    (future tasks included), so the model after the last task is one trained T × steps on all
    tasks at once — the papers' "multitask" / "offline" ceiling; its accuracy rows before the
    last are not a continual learner's, read ACC (the last row) only. ``draw`` as for
    :func:`joint_training`; with ``"example"`` and shuffled sampling the passes over the whole
    stream run across the task boundaries (A-GEM's multitask: one pass over every task's
    examples)."""
    _check_draw(draw)
    if draw == "task":
        return joint_offline
    if draw == "stratified":
        return Method(name="joint_offline",
                      batch=lambda ctx, mstate: stratified_batch(ctx, ctx.spec.num_tasks))
    return Method(name="joint_offline", batch=whole_union_batch)


__all__ = ["JOINT_DRAWS", "none", "joint", "joint_offline", "joint_training", "stratified_batch",
           "offline_joint_training", "whole_stream_batch", "seen_union_batch",
           "whole_union_batch"]
