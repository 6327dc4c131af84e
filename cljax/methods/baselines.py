"""The two baselines of every CL table: fine-tuning ("none", the lower bound) and joint training
("joint", the upper bound: each task trains on the union of all tasks seen so far, so after the
last task the model has been trained on the whole stream's data)."""
from cljax.methods.base import (Method, all_tasks_so_far, current_task_only, keep_state,
                                base_only)

none = Method(name="none", make_optimizer=base_only, sample_tasks=current_task_only,
              end_task=keep_state)
joint = Method(name="joint", make_optimizer=base_only, sample_tasks=all_tasks_so_far,
               end_task=keep_state)

__all__ = ["none", "joint"]
