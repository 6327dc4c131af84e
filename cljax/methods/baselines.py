"""The two baselines of every CL table: fine-tuning ("none", the lower bound) and joint training
("joint", the upper bound: each task trains on the union of all tasks seen so far, so after the
last task the model has been trained on the whole stream's data)."""
from cljax.methods.base import Method, all_tasks_batch

none = Method(name="none")
joint = Method(name="joint", batch=all_tasks_batch)

__all__ = ["none", "joint"]
