"""Training curves as TensorBoard event files (``tensorboardX``, an optional extra).

``pip install "cljax[tensorboard]"`` installs the writer; without it nothing is written and
:func:`available` is False. One event directory per run (``<logdir>/<scenario>/<run>``, the
layout TensorBoard lists as separate runs), with the scalars

- ``train/loss`` — the training loss of every step, at global step ``t·steps + k``;
- ``test/accuracy_task<j>`` — the test accuracy on task j after each task (j = 1..T, every task,
  the unseen ones included: forward transfer), at the global step that ends the task;
- ``test/acc_seen`` — the mean test accuracy over the tasks seen so far (ACC after the last task).

``tensorboard --logdir <workdir>/tensorboard`` shows them.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["available", "run_names", "write_scenario_events"]


def available() -> bool:
    """Whether ``tensorboardX`` is installed (the writer this module uses)."""
    return importlib.util.find_spec("tensorboardX") is not None


def _label(value) -> str:
    text = f"{value:g}" if isinstance(value, (int, float, np.floating, np.integer)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def run_names(grid: Sequence[dict], seeds: int) -> list[str]:
    """Directory names of the runs ``g·seeds + s`` (sweep point g, seed s): ``seed<s>``, with the
    swept values in front where the grid has more than one point (``strength=100_seed0``)."""
    if not isinstance(seeds, (int, np.integer)) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    if not grid:
        raise ValueError("grid must hold at least one sweep point (a dict), got an empty grid")
    varying = [k for k in grid[0] if len({repr(p[k]) for p in grid}) > 1] if len(grid) > 1 else []
    names = []
    for point in grid:
        prefix = "_".join(f"{k}={_label(point[k])}" for k in varying)
        names += [f"{prefix}_seed{s}" if prefix else f"seed{s}" for s in range(seeds)]
    return names


def write_scenario_events(logdir: str | os.PathLike, scenario: str, train_loss: np.ndarray,
                          accuracy: np.ndarray, names: Sequence[str]) -> pathlib.Path:
    """Write one scenario's curves of R runs over T tasks: ``train_loss`` ``[R, T, steps]``
    (per-step training losses; non-finite values of diverged runs are written as they are),
    ``accuracy`` ``[R, T, T]`` (``accuracy[r, i, j]``: task j after training task i, in
    [0, 1]), ``names`` the R run directory names (:func:`run_names`). Returns
    ``<logdir>/<scenario>``. Raises ImportError when tensorboardX is missing."""
    if not available():
        raise ImportError("write_scenario_events needs tensorboardX: pip install "
                          "'cljax[tensorboard]' (or tensorboardX)")
    loss = np.asarray(train_loss)
    acc = np.asarray(accuracy)
    if loss.ndim != 3 or loss.shape[0] < 1 or loss.shape[1] < 1 or loss.shape[2] < 1:
        raise ValueError(f"train_loss must be [runs, tasks, steps] with every size ≥ 1, got "
                         f"shape {loss.shape}")
    R, T, S = loss.shape
    if acc.shape != (R, T, T):
        raise ValueError(f"accuracy must be [runs, tasks, tasks] = {(R, T, T)} to match "
                         f"train_loss {loss.shape}, got shape {acc.shape}")
    finite = acc[np.isfinite(acc)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"accuracy must lie in [0, 1] (fractions, not %), got values in "
                         f"[{finite.min():.4g}, {finite.max():.4g}]")
    if len(names) != R or len(set(names)) != R:
        raise ValueError(f"names must be {R} distinct run names (one per run), got {list(names)!r}")
    if not isinstance(scenario, str) or not scenario or "/" in scenario:
        raise ValueError(f"scenario must be a non-empty name without '/', got {scenario!r}")

    from tensorboardX import SummaryWriter

    root = pathlib.Path(logdir) / scenario
    for r, name in enumerate(names):
        writer = SummaryWriter(logdir=str(root / name))
        try:
            for t in range(T):
                for k in range(S):
                    writer.add_scalar("train/loss", float(loss[r, t, k]), t * S + k)
                end = (t + 1) * S
                for j in range(T):
                    writer.add_scalar(f"test/accuracy_task{j + 1}", float(acc[r, t, j]), end)
                writer.add_scalar("test/acc_seen", float(np.mean(acc[r, t, :t + 1])), end)
        finally:
            writer.close()
    return root
