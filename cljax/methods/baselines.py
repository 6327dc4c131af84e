"""The baselines of every CL table: fine-tuning ("none", the lower bound), joint training
("joint", the upper bound: each task trains on the union of all tasks seen so far, so after the
last task the model has been trained on the whole stream's data), and offline joint training
("joint_offline": every step draws from the whole stream from the first task on — the
"multitask" / "offline" row of van de Ven & Tolias 2019, Hsu et al. 2018 and A-GEM's table)."""
import jax
import jax.numpy as jnp

from cljax.methods.base import BatchContext, Method, Rows, all_tasks_batch


def whole_stream_batch(ctx: BatchContext, mstate: object) -> Rows:
    """Each example from a task drawn uniformly among all the stream's tasks, the future ones
    included (offline joint training: not a continual learner, the ceiling it is compared
    with)."""
    del mstate
    tasks = jax.random.randint(ctx.key, (ctx.batch_size,), 0, ctx.spec.num_tasks,
                               dtype=jnp.int32)
    return ctx.draw(ctx.data_key, tasks)


none = Method(name="none")
joint = Method(name="joint", batch=all_tasks_batch)
joint_offline = Method(name="joint_offline", batch=whole_stream_batch)

__all__ = ["none", "joint", "joint_offline", "whole_stream_batch"]
