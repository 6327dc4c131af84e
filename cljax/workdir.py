"""The work directory of ``cljax run``: checked and locked before anything runs, written
atomically, and only cljax's own files ever removed.

:func:`prepare_workdir` runs before any data is loaded or anything is trained. The directory
must not be an existing file, must be creatable and writable, and must be empty — or hold an
earlier cljax run, recognised by the marker :data:`MARKER_FILE` that only cljax writes (the
run's identity and the list of what cljax wrote there): ``resume=True`` continues it (same
config, :data:`IGNORED_ON_RESUME` aside), ``overwrite=True`` removes what that run wrote
(nothing else: a user's notes beside it stay) so no stale file of it (a plot the new run does
not make) survives. A directory of other files (a user's ``config.json`` included) is never
written into. For the whole run the directory is locked (:func:`lock_workdir`: ``fcntl.flock``
on :data:`LOCK_FILE`, which names the holder's pid and host), so a second run into it fails at
once, and a dead holder's lock is released by the kernel.

:func:`write_json_atomic` / :func:`write_text_atomic` / :func:`write_bytes_atomic` write a temp
file in the target's directory and ``os.replace`` it over the target: a reader (or a run killed
mid-write) sees the old file or the new one, never half of one. JSON is strict (RFC 8259): NaN
and ±inf are written as ``null``.
"""
from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

CONFIG_FILE = "config.json"
"""The config of the run, written into the work directory at the start (compared on resume)."""

CHECKPOINT_DIR = "checkpoints"
"""The sub-directory of the work directory that holds the run's checkpoints."""

STATE_DIR = "state"
"""A scenario's checkpoints: ``<workdir>/checkpoints/[<regime>/]<scenario>/state``."""

RESULT_FILE = "result.json"
"""A finished scenario's results beside its checkpoints (``<scenario>/result.json``): what a
resumed run reuses instead of training the scenario again."""

MARKER_FILE = ".cljax-run.json"
"""The marker of a cljax run's work directory, written only by cljax: ``{"identity": the run's
identity, "wrote": [the names cljax wrote in the directory]}``."""

LOCK_FILE = ".cljax-lock"
"""The lock file of a work directory (:func:`lock_workdir`); it names the last holder."""

IGNORED_ON_RESUME = ("data_dir", "max_state_bytes")
"""Config keys that may differ on ``--resume``: where the data is read from and the state-size
limit do not change the results."""


class WorkdirError(ValueError):
    """The work directory cannot be used (the message says why and what to do)."""


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------

def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same directory (so the rename
    never crosses file systems), flushed and fsynced, then ``os.replace``. The temp file is
    removed if anything fails; the old ``path``, if any, is then left as it was. The file gets
    the usual permissions (0o666 minus the umask), not a temp file's 0o600."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def to_strict_json(obj: Any) -> Any:
    """``obj`` with numpy arrays / scalars as Python lists / numbers, tuples as lists, and every
    non-finite float (NaN, ±inf) as ``None`` — what strict JSON can hold."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: to_strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_strict_json(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    tolist = getattr(obj, "tolist", None)  # numpy / JAX arrays and scalars
    if callable(tolist):
        return to_strict_json(tolist())
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__} ({obj!r:.80})")


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 1
                      ) -> pathlib.Path:
    """Write ``obj`` as strict JSON (:func:`to_strict_json`: NaN / ±inf become ``null``) to
    ``path`` atomically (see :func:`write_bytes_atomic`)."""
    text = json.dumps(to_strict_json(obj), indent=indent, allow_nan=False, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


# --------------------------------------------------------------------------------------------
# The work directory
# --------------------------------------------------------------------------------------------

def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two JSON-like configs differ (``[]`` when they are equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(dotted)
            else:
                out += config_differences(old[key], new[key], dotted)
        return out
    return [] if old == new else [prefix or "<config>"]


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _hparams_summary(grid: Any) -> str:
    if not isinstance(grid, list) or not all(isinstance(p, dict) for p in grid):
        return f"hyperparameters {grid}"
    names = sorted({n for p in grid for n in p})
    values = {n: sorted({p.get(n) for p in grid},
                        key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
              for n in names}
    if len(grid) <= 1:
        return "hyperparameters " + (", ".join(f"{n}={v[0]}" for n, v in values.items())
                                     or "none")
    return f"a sweep of {len(grid)} points (" + ", ".join(
        f"{n} in {v}" for n, v in values.items()) + ")"


_DESCRIBE: dict[str, Callable[[Any], str]] = {
    "method": lambda v: f"method {v}",
    "seeds": lambda v: _plural(v, "seed"),
    "steps": lambda v: _plural(v, "step"),
    "epochs": lambda v: f"{v} epochs" if v is not None else "no epochs",
    "sweep": _hparams_summary,
    "scenario": lambda v: f"the {v} scenario",
    "version": lambda v: f"cljax {v}",
    "config": lambda v: f"config {v}",
    "num_steps": lambda v: _plural(v, "step") + " per task",
    "runs": lambda v: _plural(v, "run"),
}
"""How :func:`describe_mismatch` names each field of a run identity or checkpoint meta."""


def describe_mismatch(found: Mapping[str, Any] | None, expected: Mapping[str, Any]
                      ) -> str | None:
    """``"of method none, 1 seed, 20 steps; this run is method er, 2 seeds, 100 steps"`` —
    the fields of ``expected`` that ``found`` has otherwise (the config hash only when nothing
    else differs), or None when they agree. ``found`` None: it carries no identity."""
    if found is None:
        return ("carries no run identity (it was written by a cljax that did not record one); "
                "this run is " + ", ".join(_DESCRIBE.get(k, lambda v, k=k: f"{k} {v}")(v)
                                            for k, v in expected.items() if k != "config"))
    keys = [k for k in expected if found.get(k) != expected[k]]
    if not keys:
        return None
    if len(keys) > 1 and "config" in keys:
        keys.remove("config")    # the hash differs because a named field does

    def describe(identity):
        return ", ".join(_DESCRIBE.get(k, lambda v, k=k: f"{k} {v}")(identity.get(k))
                         for k in keys)
    return f"of {describe(found)}; this run is {describe(expected)}"


def _describe(entries: list[str], limit: int = 5) -> str:
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _fs_error(where: str, e: OSError) -> WorkdirError:
    if e.errno == errno.ENAMETOOLONG:
        name_max, path_max = _limit("PC_NAME_MAX", 255), _limit("PC_PATH_MAX", 4096)
        return WorkdirError(f"{where}: the path is too long ({e.strerror}: at most {name_max} "
                            f"bytes per name and {path_max} in all); choose a shorter path")
    return WorkdirError(f"{where}: {e.strerror or e}; choose a path under a directory you can "
                        "write to")


def _limit(name: str, default: int) -> int:
    try:
        return int(os.pathconf("/", name))
    except (OSError, ValueError):
        return default


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------

class WorkdirLock:
    """An exclusive lock on a work directory, held until :meth:`release` (or the process
    ends: the kernel releases a dead holder's lock)."""

    def __init__(self, path: pathlib.Path, handle: Any):
        self.path, self._handle = path, handle

    def release(self) -> None:
        """Release the lock (the lock file stays: removing it would let two runs lock two
        different files)."""
        if self._handle is not None:
            import fcntl

            try:
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            finally:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_workdir(path: str | os.PathLike, *, option: str = "--workdir") -> WorkdirLock:
    """Lock the existing directory ``path`` for this process (``fcntl.flock`` on
    :data:`LOCK_FILE`, written with this process's pid, host and start time). Another holder
    alive: :class:`WorkdirError` naming it, at once."""
    import fcntl

    p = pathlib.Path(path)
    where = f"{option} {str(p)!r}"
    try:
        handle = open(p / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as e:
        raise _fs_error(where, e) from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.seek(0)
        text = handle.read()
        handle.close()
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise _fs_error(where, e) from e
        try:
            holder = json.loads(text)
            who = (f"pid {holder['pid']} on host {holder['host']}, running since "
                   f"{holder['since']}")
        except (ValueError, KeyError, TypeError):
            who = "a process that has not written its pid yet"
        raise WorkdirError(f"{where} is in use by another cljax run ({who}; lock file "
                           f"{p / LOCK_FILE}): wait for it to finish, or choose another "
                           f"--workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    handle.flush()
    return WorkdirLock(p, handle)


def lock_holder(path: str | os.PathLike) -> dict | None:
    """Who holds the lock of the work directory ``path`` now: the holder's ``{"pid", "host",
    "since"}`` as its lock file names them (``{}`` when it has not written them yet), or None
    when no process holds it (or it has no lock file). Only looks: the lock file is opened
    read-only and a shared lock is taken and dropped at once (a ``cljax run`` starting in that
    very instant is refused as if another run held the directory; started again, it runs)."""
    import fcntl

    try:
        handle = open(pathlib.Path(path) / LOCK_FILE, encoding="utf-8")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            try:
                holder = json.loads(handle.read())
            except ValueError:
                return {}
            return holder if isinstance(holder, dict) else {}
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


# --------------------------------------------------------------------------------------------
# The marker
# --------------------------------------------------------------------------------------------

def read_marker(path: str | os.PathLike) -> dict | None:
    """The marker of the cljax run in ``path`` (None: no readable marker, not a cljax run)."""
    try:
        marker = json.loads((pathlib.Path(path) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("wrote"), list):
        return None
    return marker


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and os.sep not in name)


def record_outputs(path: str | os.PathLike, names: Any) -> None:
    """Add ``names`` (entries of the directory ``path`` that cljax wrote) to its marker."""
    marker = read_marker(path)
    if marker is None:
        raise WorkdirError(f"{str(path)!r} holds no {MARKER_FILE}: prepare_workdir it first")
    new = [n for n in names if _plain_name(n) and n not in marker["wrote"]]
    if new:
        marker["wrote"] = sorted(marker["wrote"] + new)
        write_json_atomic(pathlib.Path(path) / MARKER_FILE, marker)


def write_recording(path: str | os.PathLike, write: Callable[[], Any]) -> Any:
    """Call ``write()`` (which writes into the work directory ``path``) and record in the
    marker every entry it created; returns what ``write`` returns."""
    p = pathlib.Path(path)
    before = {e.name for e in p.iterdir()}
    out = write()
    record_outputs(p, sorted({e.name for e in p.iterdir()} - before))
    return out


def _remove_written(path: pathlib.Path, marker: dict) -> None:
    """Remove what the marker lists (plain names in ``path``; links removed, not followed)."""
    for name in marker["wrote"]:
        if not _plain_name(name) or name == LOCK_FILE:
            continue
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
    (path / MARKER_FILE).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Preparing the directory
# --------------------------------------------------------------------------------------------

def _check_writable(path: pathlib.Path, option: str) -> None:
    probe = path / f".cljax-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"{option} {str(path)!r} is not writable ({e.strerror or e}); choose "
                           f"a directory you can write to") from e


def _create(p: pathlib.Path, where: str) -> None:
    try:
        if p.exists() and not p.is_dir():
            raise WorkdirError(f"{where} is an existing file, not a directory; choose a "
                               "directory path (it is created if missing)")
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise _fs_error(where, e) from e
        raise WorkdirError(f"{where}: cannot create the directory ({e.strerror or e}); choose a "
                           "path under a directory you can write to") from e


def _entries(p: pathlib.Path, where: str) -> list[str]:
    """What the directory holds, its lock file aside."""
    try:
        return sorted(e.name for e in p.iterdir() if e.name != LOCK_FILE)
    except OSError as e:
        raise _fs_error(where, e) from e


def _refuse_other_files(entries: list[str], where: str, *, resume: bool,
                        overwrite: bool) -> NoReturn:
    """A directory of files that are not a cljax run's: refused, whatever the flags."""
    what = f"it holds {_describe(entries)}, and no {MARKER_FILE}, the marker of a cljax run"
    if resume:
        raise WorkdirError(f"{where} holds no cljax run to resume ({what}); choose another "
                           "--workdir, or move those files away to start afresh there")
    why = " (--overwrite removes only what cljax wrote)" if overwrite else ""
    raise WorkdirError(f"{where} is not empty and not a cljax run's directory ({what}); "
                       f"cljax never writes among or removes other files{why}: choose "
                       "another --workdir, or an empty one")


def _resume_check(p: pathlib.Path, where: str, marker: dict, new: dict,
                  identity: Mapping | None) -> None:
    """The run in ``p`` is one of the same config (and identity) as this one."""
    try:
        old = json.loads((p / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{where}: cannot read {CONFIG_FILE} of the run to resume ({e}); "
                           "pass --overwrite to replace that run, or choose another "
                           "--workdir") from e
    strip = (lambda c: {k: v for k, v in c.items() if k not in IGNORED_ON_RESUME}
             if isinstance(c, dict) else c)
    diff = config_differences(strip(old), strip(new))
    if diff:
        raise WorkdirError(
            f"{where} holds a run of a different config (differing keys: "
            f"{_describe(diff, 10)}); --resume needs the same config file and options, "
            "or pass --overwrite to replace that run, or choose another --workdir")
    if identity is not None:
        differs = describe_mismatch(marker.get("identity"), to_strict_json(dict(identity)))
        if differs:
            raise WorkdirError(f"{where} holds a run {differs}; --resume needs the same config, "
                               "options and cljax version, or pass --overwrite to replace that "
                               "run, or choose another --workdir")


def prepare_workdir(path: str | os.PathLike, config: dict, *, resume: bool = False,
                    overwrite: bool = False, option: str = "--workdir",
                    identity: Mapping[str, Any] | None = None) -> dict:
    """Create, check and lock the work directory of a run of ``config``, before anything runs.

    - ``path`` must be a non-empty path, not an existing file, creatable and writable;
    - it is locked for this run (:func:`lock_workdir`): another run holding it is an error;
    - it must be empty (its lock file aside), unless it holds an earlier cljax run (its
      :data:`MARKER_FILE`) and ``resume`` (that run's ``config.json`` equals ``config`` except
      for :data:`IGNORED_ON_RESUME`, and its identity ``identity``; else the error names the
      differing keys, dotted, or fields) or ``overwrite`` (what that run wrote is removed first,
      and nothing else). An earlier run that wrote nothing but its config (it stopped before
      anything else, e.g. on missing data) counts as empty. A directory of other files — a
      user's ``config.json`` included — is refused whatever the flags;
    - ``config.json`` (strict JSON of ``config``) and the marker (``identity`` and what cljax
      wrote) are then written into it.

    Returns ``{"path": Path, "resume": bool, "lock": WorkdirLock}``: ``resume`` is True only
    when there is an earlier run to continue (``resume=True`` on an empty or new directory
    starts a fresh run); the caller holds ``lock`` for the whole run and releases it at the
    end. Raises :class:`WorkdirError` with a one-line message naming ``option``.
    """
    if resume and overwrite:
        raise WorkdirError("--resume and --overwrite exclude each other: --resume continues the "
                           "run in the work directory, --overwrite deletes it")
    if not os.fspath(path).strip():
        raise WorkdirError(f"{option} {os.fspath(path)!r} is empty; give a directory path (it "
                           "is created if missing)")
    p = pathlib.Path(path).expanduser()
    where = f"{option} {str(p)!r}"
    _create(p, where)
    entries = _entries(p, where)
    if entries and read_marker(p) is None:     # refused before anything is written there
        _refuse_other_files(entries, where, resume=resume, overwrite=overwrite)
    _check_writable(p, option)
    lock = lock_workdir(p, option=option)
    try:
        do_resume = _prepare_locked(p, where, config, resume=resume, overwrite=overwrite,
                                    identity=identity)
    except BaseException:
        lock.release()
        raise
    return {"path": p, "resume": do_resume, "lock": lock}


def _prepare_locked(p: pathlib.Path, where: str, config: dict, *, resume: bool,
                    overwrite: bool, identity: Mapping | None) -> bool:
    entries = _entries(p, where)     # again, under the lock
    marker = read_marker(p) if MARKER_FILE in entries else None
    if marker is not None and set(entries) <= {CONFIG_FILE, MARKER_FILE} \
            and CONFIG_FILE in marker["wrote"]:
        entries = []       # a run that stopped before anything else (e.g. on missing data)
    new = to_strict_json(config)
    do_resume = False
    if entries and marker is None:
        _refuse_other_files(entries, where, resume=resume, overwrite=overwrite)
    if entries:
        assert marker is not None          # refused just above
        if overwrite:
            try:
                _remove_written(p, marker)
            except OSError as e:
                raise _fs_error(where, e) from e
            marker = None
        elif resume:
            _resume_check(p, where, marker, new, identity)
            do_resume = True
        else:
            raise WorkdirError(
                f"{where} is not empty (it holds an earlier cljax run: {_describe(entries)}); "
                "pass --resume to continue it, --overwrite to remove what it wrote (other "
                "files are kept), or choose another --workdir")
    wrote = sorted(set((marker or {}).get("wrote", [])) | {CONFIG_FILE, MARKER_FILE, LOCK_FILE})
    write_json_atomic(p / CONFIG_FILE, new)
    write_json_atomic(p / MARKER_FILE, {"identity": None if identity is None
                                        else dict(identity), "wrote": wrote})
    return do_resume


__all__ = ["CONFIG_FILE", "CHECKPOINT_DIR", "STATE_DIR", "RESULT_FILE", "MARKER_FILE",
           "LOCK_FILE", "IGNORED_ON_RESUME", "WorkdirError", "WorkdirLock", "config_differences",
           "describe_mismatch", "lock_holder", "lock_workdir", "prepare_workdir", "read_marker",
           "record_outputs", "write_recording", "to_strict_json", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]
