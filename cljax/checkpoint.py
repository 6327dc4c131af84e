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
back completely and checks it against the digest saved with it before returning it. A checkpoint
that cannot be read (truncated, corrupt, bytes flipped) is reported by name, moved aside to
``<step>.corrupt-<UTC time>`` (never deleted; the run saves that step again later) and skipped
in favour of the previous one (``keep`` checkpoints are kept), never half-loaded. A checkpoint
of another run — the meta records the run's identity (config hash, method, seeds, steps, cljax
version) and the payload's array layout — is refused with one message naming what differs,
never resumed from.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import pathlib
import re
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cljax.workdir import describe_mismatch, to_strict_json


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


class CheckpointMismatchError(CheckpointError):
    """A checkpoint (or a finished scenario's results) belongs to another run: another config,
    method, seeds, steps, cljax version or state shapes. The message names what differs."""


def payload_spec(savable: Any) -> list:
    """``[[path, shape, dtype], …]`` of every leaf of a :func:`to_savable` tree."""
    return [[jax.tree_util.keystr(path), list(np.shape(x)), str(np.asarray(x).dtype)]
            for path, x in jax.tree_util.tree_leaves_with_path(savable)]


def payload_digest(savable: Any) -> str:
    """A BLAKE2b digest of every leaf of a :func:`to_savable` tree (paths, shapes, dtypes and
    bytes): a checkpoint whose files were damaged without changing their size is caught."""
    h = hashlib.blake2b(digest_size=16)
    for path, x in jax.tree_util.tree_leaves_with_path(savable):
        x = np.ascontiguousarray(x)
        h.update(f"{jax.tree_util.keystr(path)}|{x.shape}|{x.dtype}|".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def _key_name(entry: Any) -> str:
    for field in ("key", "idx", "name"):    # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(entry, field):
            return str(getattr(entry, field))
    return str(entry)


def leaves_by_path(tree: Any) -> dict[tuple[str, ...], Any]:
    """Every leaf of ``tree`` under its path written as plain names (a dict key, a sequence
    index or an attribute name, as a string), so a NamedTuple's ``.field`` and the ``['field']``
    of the dict orbax writes it as name the same leaf. Empty containers have no leaves."""
    return {tuple(_key_name(e) for e in path): x
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def arrange_like(restored: Any, target: Any) -> Any:
    """The leaves of ``restored`` (a checkpoint's payload as orbax reads it back, without a
    template: nested dicts and lists) placed in ``target``'s structure by their paths.

    Matching leaves by path rather than trees by structure means a container that holds no
    arrays (an empty dict, ``()``, None) never decides whether a checkpoint restores: a
    checkpoint written before a state gained an empty field still restores. Every path must be
    present on both sides with the same shape and dtype, else ValueError naming the first
    that differs."""
    found = {p: np.asarray(x) for p, x in leaves_by_path(restored).items()}
    paths_shapes = leaves_by_path(target)
    missing = [p for p in paths_shapes if p not in found]
    extra = [p for p in found if p not in paths_shapes]
    if missing or extra:
        what = (f"this run's array {'/'.join(missing[0])} is not in it" if missing else
                f"its array {'/'.join(extra[0])} is not in this run's state")
        raise ValueError(f"its arrays do not match this run's state: {what}")
    for p, t in paths_shapes.items():
        x, t = found[p], np.asarray(t)
        if x.shape != t.shape or x.dtype != t.dtype:
            raise ValueError(f"its arrays do not match this run's state: {'/'.join(p)} is "
                             f"{x.dtype}{x.shape}, this run's {t.dtype}{t.shape}")
    return jax.tree_util.tree_unflatten(jax.tree.structure(target),
                                        [found[p] for p in paths_shapes])


def path_names(keystr: str) -> tuple[str, ...]:
    """The plain names (:func:`leaves_by_path`'s) of a leaf path written by
    ``jax.tree_util.keystr`` — ``['state'].opt[0]`` is ``('state', 'opt', '0')`` — the form of
    the paths a checkpoint's meta records (``payload_spec``)."""
    if not isinstance(keystr, str):
        raise TypeError(f"keystr must be a str; got {type(keystr).__name__}")
    names, i = [], 0
    while i < len(keystr):
        if keystr[i] == ".":
            m = re.match(r"\.([^.\[]+)", keystr[i:])
            if m is None:
                raise ValueError(f"keystr {keystr!r}: no name after '.' at {i}")
            names.append(m.group(1))
            i += m.end()
        elif keystr[i] == "[":
            end = keystr.find("]", i)
            while end != -1:
                try:
                    names.append(str(ast.literal_eval(keystr[i + 1:end])))
                    break
                except (ValueError, SyntaxError):
                    end = keystr.find("]", end + 1)
            if end == -1:
                raise ValueError(f"keystr {keystr!r}: unclosed '[' at {i}")
            i = end + 1
        else:
            raise ValueError(f"keystr {keystr!r}: expected '.' or '[' at {i}")
    return tuple(names)


class ReadCheckpoint(NamedTuple):
    """A checkpoint as :func:`read_latest` reads it: the ``step`` it was saved under (its
    directory's number), the ``payload`` tree without a template and its JSON ``meta``."""

    step: int
    payload: dict
    meta: dict


def read_latest(directory: str | os.PathLike) -> ReadCheckpoint | None:
    """``(step, payload, meta)`` of the newest checkpoint of ``directory`` that reads back
    whole, for looking at a run from outside it: nothing is written, locked or moved (a damaged
    checkpoint is skipped, not moved aside), and no template is needed — ``payload`` is the
    saved tree as orbax reads it back (nested dicts and lists of numpy arrays; a NamedTuple's
    fields as dict keys). The bytes are checked against the digest saved with them. None when
    the directory holds no checkpoint; :class:`CheckpointError` naming each one's fault when
    none reads.

    A run saving into the directory meanwhile may remove the one being read (it keeps the
    newest ``keep``): the next older one is tried, and a later call sees the new one. A
    ``directory`` that does not exist holds none; one that is a file: NotADirectoryError."""
    root = pathlib.Path(directory).absolute()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"directory {str(directory)!r} is a file, not a checkpoint "
                                 "directory")
    if not root.exists():
        return None
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)  # orbax's own notes: a damaged one is reported below
    try:
        manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, enable_async_checkpointing=False))
        try:
            return _read_newest(manager, root)
        finally:
            manager.close()
    finally:
        absl.setLevel(level)


def _read_newest(manager: Any, root: pathlib.Path) -> ReadCheckpoint | None:
    errors = []
    for index in sorted(manager.all_steps(), reverse=True):
        try:
            out = manager.restore(index, args=ocp.args.Composite(
                payload=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
            payload, meta = jax.tree.map(np.asarray, out["payload"]), dict(out["meta"])
            _check_digest(payload, meta)
        except Exception as e:
            errors.append(f"{root / str(index)}: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}")
            continue
        return ReadCheckpoint(int(index), payload,
                              {k: v for k, v in meta.items() if k not in _INTERNAL})
    if errors:
        raise CheckpointError(f"no checkpoint in {root} could be read:\n  " + "\n  ".join(errors))
    return None


def _check_digest(payload: Any, meta: dict) -> None:
    """``payload`` read without a template against the digest and layout in ``meta`` (the
    leaves taken in the saved order by their paths); ValueError naming what differs."""
    spec, digest = meta.get("payload_spec"), meta.get("payload_digest")
    if spec is None or digest is None:
        return
    found = leaves_by_path(payload)
    h = hashlib.blake2b(digest_size=16)
    for path, shape, dtype in spec:
        x = found.pop(path_names(path), None)
        if x is None or list(x.shape) != shape or str(x.dtype) != dtype:
            raise ValueError(f"its array {path} is missing or not {dtype}{tuple(shape)}")
        x = np.ascontiguousarray(x)
        h.update(f"{path}|{x.shape}|{x.dtype}|".encode())
        h.update(x.tobytes())
    if found:
        raise ValueError(f"it holds an array its meta does not list: {'/'.join(next(iter(found)))}")
    if h.hexdigest() != digest:
        raise ValueError("its arrays' bytes do not match the digest saved with them")


def _spec_difference(found: list, expected: list) -> str:
    if len(found) != len(expected):
        return f"its state holds {len(found)} arrays, this run's {len(expected)}"
    for (path, shape, dtype), (_, shape2, dtype2) in zip(found, expected):
        if (shape, dtype) != (shape2, dtype2):
            return (f"its state's array {path} is {dtype}{tuple(shape)}, this run's "
                    f"{dtype2}{tuple(shape2)}")
    return "its state's arrays are laid out otherwise"


_INTERNAL = ("identity", "payload_spec", "payload_digest")   # meta keys the Checkpointer owns


class Checkpointer:
    """A directory of numbered checkpoints (``<dir>/<step>/``) of one payload pytree + JSON meta.

    Every checkpoint's meta also records the payload's layout (each array's path, shape and
    dtype), a digest of its bytes and, when given, the ``identity`` of the run that wrote it
    (:func:`cljax.experiment.run_identity`: config hash, method, seeds, steps, cljax
    version…). Restoring refuses, with :class:`CheckpointMismatchError` naming what differs, a
    checkpoint of another identity or layout; a damaged one (unreadable, or bytes that do not
    match the digest) is reported, moved aside to ``<dir>/<step>.corrupt-<UTC time>`` (never
    deleted; the run can save that step again) and the previous one is tried.

    Args:
      directory: where the checkpoints live (created if needed).
      keep: how many recent checkpoints to keep (≥ 2, so a damaged last one has a fallback).
      log: where warnings about skipped checkpoints go.
      identity: the JSON-able identity of the run (None: not recorded nor checked).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2,
                 log: Callable[[str], None] | None = None,
                 identity: Mapping[str, Any] | None = None):
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ValueError(f"keep must be a positive int; got {keep!r}")
        if identity is not None and not isinstance(identity, Mapping):
            raise TypeError(f"identity must be a JSON-able mapping or None; got "
                            f"{type(identity).__name__}")
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda msg: warnings.warn(msg, stacklevel=2))
        self.identity = (None if identity is None else
                         json.loads(json.dumps(to_strict_json(dict(identity)))))
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True))

    def save(self, index: int, payload: Any, meta: dict) -> None:
        """Save checkpoint ``index`` (increasing) of ``payload`` and the JSON-able ``meta``
        (its keys ``identity``, ``payload_spec`` and ``payload_digest`` are the
        Checkpointer's)."""
        savable = to_savable(payload)
        meta = {**meta, "payload_spec": payload_spec(savable),
                "payload_digest": payload_digest(savable),
                **({"identity": self.identity} if self.identity is not None else {})}
        self._manager.save(index, args=ocp.args.Composite(
            payload=ocp.args.StandardSave(savable), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        """Indices of the complete checkpoints, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def _meta(self, index: int) -> dict:
        return dict(self._manager.restore(index, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"])

    def latest_meta(self) -> dict | None:
        """The JSON meta of the newest checkpoint whose meta can be read (None if none)."""
        for index in reversed(self.steps()):
            try:
                return self._meta(index)
            except Exception:
                continue
        return None

    def _refuse(self, what: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(
            f"the checkpoint in {self.directory} is {what} (resume needs the same config, "
            "options and cljax version: rerun the command that wrote it, or start afresh "
            "elsewhere)")

    def _check(self, meta: dict, expect: Mapping[str, Any], spec: list) -> None:
        """Refuse a checkpoint of another run (identity, ``expect``ed meta, layout)."""
        if self.identity is not None:
            differs = describe_mismatch(meta.get("identity"), self.identity)
            if differs:
                raise self._refuse(differs)
        differs = describe_mismatch(meta, dict(expect))
        if differs:
            raise self._refuse(differs)
        found = meta.get("payload_spec")
        if found is not None and found != spec:
            raise self._refuse(f"of another model or method: {_spec_difference(found, spec)}")

    def move_aside(self, index: int) -> pathlib.Path | None:
        """Rename checkpoint ``index`` to ``<index>.corrupt-<UTC time>`` in the same directory
        (kept, no longer a checkpoint: the run can save ``index`` again); its new path, or None
        when it could not be moved (the reason is logged)."""
        src = self.directory / str(index)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dst = self.directory / f"{index}.corrupt-{stamp}"
        n = 1
        while dst.exists():
            dst, n = self.directory / f"{index}.corrupt-{stamp}-{n}", n + 1
        try:
            if jax.process_index() == 0:
                os.rename(src, dst)
        except OSError as e:
            self.log(f"checkpoint {src} could not be moved aside ({e})")
            return None
        self._manager.reload()
        return dst

    def restore_latest(self, template: Any, *, expect: Mapping[str, Any] | None = None
                       ) -> tuple[Any, dict] | None:
        """``(payload, meta)`` of the newest readable checkpoint (``payload`` with ``template``'s
        structure, shapes and dtypes), or None if there is none.

        A checkpoint of another run — another ``identity``, meta entries other than
        ``expect``'s, or arrays laid out otherwise than ``template`` — is refused with
        :class:`CheckpointMismatchError`. The arrays are read back without a template and
        placed into ``template``'s structure by their paths (:func:`arrange_like`), so
        containers without arrays (an empty field a newer state has) do not matter. A damaged
        one is reported, moved aside (:meth:`move_aside`) and the previous one tried; if none
        can be read, :class:`CheckpointError`."""
        steps = self.steps()
        if not steps:
            return None
        target = to_savable(template)
        spec = payload_spec(target)
        errors = []
        for index in reversed(steps):
            where = self.directory / str(index)
            try:
                meta = self._meta(index)
            except Exception as e:
                errors.append(self._damaged(index, e, movable=True))
                continue
            self._check(meta, expect or {}, spec)
            try:
                out = self._manager.restore(index, args=ocp.args.Composite(
                    payload=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
                payload = arrange_like(out["payload"], target)
                digest = meta.get("payload_digest")
                if digest is not None and payload_digest(payload) != digest:
                    raise ValueError(f"its arrays' bytes do not match the digest saved with "
                                     f"them: files of {where} were damaged")
            except Exception as e:
                # only a checkpoint that records its layout is known to be ours: an old one
                # that fails may be of another structure, so it is skipped, not moved
                errors.append(self._damaged(index, e, movable="payload_spec" in meta))
                continue
            return (from_savable(payload, template),
                    {k: v for k, v in meta.items() if k not in _INTERNAL})
        raise CheckpointError(f"no checkpoint in {self.directory} could be restored:\n  "
                              + "\n  ".join(errors))

    def _damaged(self, index: int, error: Exception, *, movable: bool) -> str:
        where = self.directory / str(index)
        text = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        moved = self.move_aside(index) if movable else None
        self.log(f"checkpoint {where} cannot be restored ({text}); "
                 + (f"moved aside to {moved}; " if moved else "") + "trying an older one")
        return f"{where}: {text}" + (f" (moved aside to {moved})" if moved else "")

    def close(self) -> None:
        self._manager.close()


__all__ = ["Checkpointer", "CheckpointError", "CheckpointMismatchError", "arrange_like",
           "describe_mismatch", "leaves_by_path", "path_names", "payload_spec", "payload_digest",
           "to_savable", "from_savable", "read_latest", "ReadCheckpoint"]
