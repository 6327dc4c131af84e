"""Checkpoints of a whole stream run with orbax: save atomically, resume bit-identically.

What :func:`cljax.training.run_stream` saves (every ``checkpoint_every`` steps and after every
task) is everything the rest of the run depends on: the :class:`cljax.training.TrainState` of
every run — parameters, optimizer state, method state (importances, anchors, memories, bases),
hyperparameters, step counters and PRNG keys — and the results so far (accuracy and loss matrices,
per-step training losses, the kept θ*_t, diverged runs), plus where it stands (task, steps done
in the task). Restoring it and continuing gives the same arrays, bit for bit, as a run that was
never interrupted: every step's randomness is ``fold_in(run key, step)`` and the compiled
program is the same.

**Sharded runs** (:func:`cljax.training.run_stream` with ``devices=`` / ``mesh=``): the state is
saved as the R real runs' arrays, gathered from the devices (the dummy runs that pad R to a
multiple of the device count are not saved), so a checkpoint written on 4 devices resumes on 1
and one written on 1 resumes on 4: ``run_stream`` re-pads the restored state for its mesh and
shards it again (``tests/test_sharding.py``). Gathering costs host memory equal to the state of
all runs; on several hosts every host gathers it (``process_allgather``; tested with two
processes of two devices joined by ``jax.distributed`` on one machine, not on a real cluster).

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
checkpoint is either whole or absent; :meth:`Checkpointer.restore_latest` also reads the payload
back completely before returning it, and a checkpoint that cannot be read (truncated, corrupt, a
different structure) is reported by name and skipped in favour of the previous one (``keep``
checkpoints are kept), never half-loaded.
"""
from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host(x: Any) -> np.ndarray:
    """``x`` as a host numpy array: a sharded array is gathered (from every host where this one
    does not address all its shards: ``process_allgather``)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def to_savable(tree: Any) -> Any:
    """``tree`` with typed PRNG keys replaced by their raw ``uint32`` data and every leaf as a
    host numpy array (what orbax stores; sharded arrays are gathered whole, so a checkpoint
    does not depend on the devices it was written from)."""
    return jax.tree.map(lambda x: _host(jax.random.key_data(x)) if _is_key(x)
                        else _host(x), tree)


def from_savable(tree: Any, template: Any) -> Any:
    """Inverse of :func:`to_savable`, with ``template``'s structure and key types."""
    def back(x, t):
        if _is_key(t):
            return jax.random.wrap_key_data(jnp.asarray(x), impl=jax.random.key_impl(t))
        return np.asarray(x, dtype=t.dtype)
    return jax.tree.map(back, tree, template)


class CheckpointError(ValueError):
    """No checkpoint of the directory could be restored (every one is damaged or belongs to
    another run)."""


class Checkpointer:
    """A directory of numbered checkpoints (``<dir>/<step>/``) of one payload pytree + JSON meta.

    Args:
      directory: where the checkpoints live (created if needed).
      keep: how many recent checkpoints to keep (≥ 2, so a damaged last one has a fallback).
      log: where warnings about skipped checkpoints go.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2,
                 log: Callable[[str], None] | None = None):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive int; got {keep!r}")
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda msg: warnings.warn(msg, stacklevel=2))
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True))

    def save(self, index: int, payload: Any, meta: dict) -> None:
        """Save checkpoint ``index`` (increasing) of ``payload`` and the JSON-able ``meta``."""
        self._manager.save(index, args=ocp.args.Composite(
            payload=ocp.args.StandardSave(to_savable(payload)), meta=ocp.args.JsonSave(meta)),
            force=True)
        self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        """Indices of the complete checkpoints, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_meta(self) -> dict | None:
        """The JSON meta of the newest checkpoint whose meta can be read (None if none)."""
        for index in reversed(self.steps()):
            try:
                return dict(self._manager.restore(index, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"])
            except Exception:  # noqa: BLE001 - unreadable: restore_latest reports it
                continue
        return None

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """``(payload, meta)`` of the newest readable checkpoint (``payload`` with ``template``'s
        structure, shapes and dtypes), or None if there is none. Unreadable checkpoints are
        reported and skipped; if none can be read, :class:`CheckpointError`."""
        steps = self.steps()
        if not steps:
            return None
        target = to_savable(template)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
        errors = []
        for index in reversed(steps):
            try:
                out = self._manager.restore(index, args=ocp.args.Composite(
                    payload=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                payload = jax.tree.map(np.asarray, out["payload"])
                if jax.tree.structure(payload) != jax.tree.structure(target) or any(
                        a.shape != b.shape or a.dtype != b.dtype
                        for a, b in zip(jax.tree.leaves(payload), jax.tree.leaves(target))):
                    raise ValueError("its arrays do not match this run's state")
                return from_savable(payload, template), dict(out["meta"])
            except Exception as e:  # noqa: BLE001 - any damage: report it, try an older one
                errors.append(f"{self.directory / str(index)}: {type(e).__name__}: {e}")
                self.log(f"checkpoint {self.directory / str(index)} cannot be restored "
                         f"({type(e).__name__}: {str(e)[:200]}); trying an older one")
        raise CheckpointError("no checkpoint could be restored:\n  " + "\n  ".join(errors))

    def close(self) -> None:
        self._manager.close()


__all__ = ["Checkpointer", "CheckpointError", "to_savable", "from_savable"]
