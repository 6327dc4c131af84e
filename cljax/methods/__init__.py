"""CL methods as small recipes for :func:`cljax.training.run_stream` (see :mod:`.base`)."""
from cljax.methods.base import (BoundaryContext, Method, all_tasks_so_far, current_task_only,
                                keep_state, no_transform)
from cljax.methods.baselines import joint, none

METHODS = {"none": none, "joint": joint}


def get_method(name: str) -> Method:
    """The method registered as ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["BoundaryContext", "Method", "METHODS", "get_method", "all_tasks_so_far",
           "current_task_only", "keep_state", "no_transform", "none", "joint"]
