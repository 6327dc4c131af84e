"""What a stream run records, and when a run has diverged.

A :class:`Record` holds the numpy results of R runs over T tasks as they arrive — every step's
training loss, the accuracy / loss matrices after each task, the random initialisation's, the
kept θ*_t — and decides divergence (a non-finite loss, or one above ``divergence_factor`` × the
run's first loss): it raises, or marks the run and blanks its later results. ``Record.tree`` is
what a checkpoint saves beside the state; :meth:`Record.result` the :class:`StreamResult`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DIVERGENCE_FACTOR = 100.0
"""Default of ``run_stream``'s ``divergence_factor``: a run whose training loss exceeds 100× its
first loss has diverged. The first loss of a fresh network is ≈ ln C (cross-entropy at chance,
0.7–4.6 for 2–100 classes), and a learning run stays within a few times that even when a new
Class-IL task meets confidently wrong predictions (≈ 5–15× here); 100× ln C needs logit gaps of
hundreds, which only a blow-up produces (Adam at lr 1e6 reaches 1e20 after a few steps)."""


class StreamResult(NamedTuple):
    """Outcome of :func:`run_stream` for R runs over T tasks (numpy arrays).

    ``accuracy[r, i, j]`` is run r's test accuracy on task j after training task i (the R matrix
    of Lopez-Paz & Ranzato 2017); ``loss`` likewise with the mean test loss; ``init_accuracy[r, j]``
    and ``init_loss`` are those of the random initialisation (FWT's baseline b_j).
    """

    accuracy: np.ndarray
    loss: np.ndarray
    init_accuracy: np.ndarray
    init_loss: np.ndarray
    train_loss: np.ndarray            # [R, T, steps]
    task_params: Any                  # pytree [R, T, ...] of θ*_t, or None
    final_state: Any                  # the TrainState of the R runs
    timings: dict
    diverged: np.ndarray | None = None  # [R, 2] (task, step) of the first non-finite loss, or -1


class Record:
    """The results so far of ``runs`` runs over ``tasks`` tasks of ``steps`` steps each.

    Args:
      params: the runs' parameters (``[R, ...]``: shapes of the kept θ*_t), or None not to keep
        them.
      on_nonfinite: ``"raise"`` (FloatingPointError at the first diverged step) or ``"mark"``.
      divergence_factor: a loss above this multiple of the run's first loss has diverged
        (None: only a non-finite loss).
    """

    def __init__(self, runs: int, tasks: int, steps: int, *, params: Any = None,
                 on_nonfinite: str = "raise", divergence_factor: float | None = None):
        nan = np.float32(np.nan)
        self.on_nonfinite = on_nonfinite
        self.divergence_factor = divergence_factor
        self.keeps = params is not None
        self.tree: dict[str, Any] = {
            "accuracy": np.full((runs, tasks, tasks), nan), "loss": np.full((runs, tasks, tasks), nan),
            "train_loss": np.full((runs, tasks, steps), nan),
            "init_accuracy": np.zeros((runs, tasks), np.float32),
            "init_loss": np.zeros((runs, tasks), np.float32),
            "first_loss": np.full((runs,), nan), "diverged": np.full((runs, 2), -1, np.int64),
            "kept": (() if params is None else jax.tree.map(
                lambda p: np.zeros((runs, tasks) + p.shape[1:], p.dtype), params))}

    def restore(self, tree: dict) -> None:
        """Continue from a checkpoint's ``tree`` (the ``Record.tree`` it saved)."""
        self.tree = jax.tree.map(np.array, tree)

    def initial(self, accuracy: np.ndarray, loss: np.ndarray) -> None:
        """The random initialisation's accuracy and loss on every task (``[R, T]``)."""
        self.tree["init_accuracy"][:], self.tree["init_loss"][:] = accuracy, loss

    def losses(self, task: int, start: int, losses: np.ndarray) -> None:
        """The training losses ``[R, n]`` of steps ``start .. start + n`` of ``task``: recorded,
        and checked for divergence (raises with task, step and run, or marks the run)."""
        rec = self.tree
        rec["train_loss"][:, task, start:start + losses.shape[1]] = losses
        if task == 0 and start == 0:
            rec["first_loss"][:] = losses[:, 0]
        bad = ~np.isfinite(losses)
        if self.divergence_factor is not None:
            with np.errstate(invalid="ignore"):
                bad |= losses > self.divergence_factor * rec["first_loss"][:, None]
        if self.on_nonfinite == "raise" and bad.any():
            run, step = np.argwhere(bad)[0]
            value = losses[run, step]
            raise FloatingPointError(
                f"training diverged at task {task}, step {start + step} (run {run}): loss "
                f"{value:.4g}" + ("" if not np.isfinite(value) else
                                  f" > {self.divergence_factor:g} × the first loss "
                                  f"{rec['first_loss'][run]:.4g}")
                + "; lower the learning rate or the method's strength")
        for run in np.flatnonzero(bad.any(axis=1) & (rec["diverged"][:, 0] < 0)):
            rec["diverged"][run] = (task, start + int(np.argmax(bad[run])))

    def evaluation(self, task: int, accuracy: np.ndarray, loss: np.ndarray) -> None:
        """Row ``task`` of the matrices (every task's accuracy and loss after training
        ``task``, ``[R, T]``); NaN for the runs that have diverged."""
        gone = self.tree["diverged"][:, 0] >= 0
        self.tree["accuracy"][:, task] = np.where(gone[:, None], np.nan, accuracy)
        self.tree["loss"][:, task] = np.where(gone[:, None], np.nan, loss)

    def keep(self, task: int, params: Any) -> None:
        """θ*_task of every run (host arrays ``[R, ...]``), if the record keeps them."""
        if self.keeps:
            jax.tree.map(lambda k, p: k.__setitem__((slice(None), task), p), self.tree["kept"],
                         params)

    def result(self, final_state: Any, timings: dict) -> StreamResult:
        """The :class:`StreamResult` of what is recorded, with the runs' ``final_state`` and
        the run's ``timings``."""
        rec = self.tree
        kept = jax.tree.map(jnp.asarray, rec["kept"]) if self.keeps else None
        return StreamResult(rec["accuracy"], rec["loss"], rec["init_accuracy"], rec["init_loss"],
                            rec["train_loss"], kept, final_state, timings, rec["diverged"])


__all__ = ["Record", "StreamResult", "DIVERGENCE_FACTOR"]
