"""The work directory of ``cljax run``: checked before anything runs, written atomically.

:func:`prepare_workdir` runs before any data is loaded or anything is trained. The directory
must not be an existing file, must be creatable and writable, and must be empty — or, with
``resume=True``, hold an earlier run of the same config (its ``config.json``, which
:func:`prepare_workdir` writes at the start of every run). ``overwrite=True`` empties an earlier
cljax run's directory first, so no stale file of that run (a plot the new run does not make)
survives into the new one.

:func:`write_json_atomic` / :func:`write_text_atomic` / :func:`write_bytes_atomic` write a temp
file in the target's directory and ``os.replace`` it over the target: a reader (or a run killed
mid-write) sees the old file or the new one, never half of one. JSON is strict (RFC 8259): NaN
and ±inf are written as ``null``.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
from typing import Any

CONFIG_FILE = "config.json"
"""The config of the run, written into the work directory at the start (compared on resume)."""

CHECKPOINT_DIR = "checkpoints"
"""The sub-directory of the work directory that holds the run's checkpoints."""

IGNORED_ON_RESUME = ("data_dir",)
"""Config keys that may differ on ``--resume``: where the data is read from does not change
the results."""

_MARKERS = (CONFIG_FILE, "results.json")  # what marks a directory as a cljax run's


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


def _describe(entries: list[str], limit: int = 5) -> str:
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _clear(path: pathlib.Path) -> None:
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_writable(path: pathlib.Path, option: str) -> None:
    probe = path / f".cljax-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"{option} {str(path)!r} is not writable ({e.strerror or e}); choose "
                           f"a directory you can write to") from e


def prepare_workdir(path: str | os.PathLike, config: dict, *, resume: bool = False,
                    overwrite: bool = False, option: str = "--workdir") -> dict:
    """Create and check the work directory of a run of ``config``, before anything runs.

    - ``path`` must not be an existing file and must be creatable and writable;
    - it must be empty, unless ``resume`` (it holds an earlier run of the same config: its
      ``config.json`` equals ``config`` except for :data:`IGNORED_ON_RESUME`; else the error
      names the differing keys, dotted) or ``overwrite`` (it is emptied first; only a
      directory that holds an earlier cljax run — ``config.json`` or ``results.json`` — is ever
      emptied, so a mistyped path cannot wipe unrelated files). A directory that holds only
      ``config.json`` (a run that stopped before writing anything else, e.g. on missing data)
      counts as empty;
    - ``config.json`` (strict JSON of ``config``) is then written into it.

    Returns ``{"path": Path, "resume": bool}``: ``resume`` is True only when there is an earlier
    run to continue (``resume=True`` on an empty or new directory starts a fresh run).
    Raises :class:`WorkdirError` with a one-line message naming ``option``.
    """
    if resume and overwrite:
        raise WorkdirError("--resume and --overwrite exclude each other: --resume continues the "
                           "run in the work directory, --overwrite deletes it")
    p = pathlib.Path(path).expanduser()
    where = f"{option} {str(p)!r}"
    if p.exists() and not p.is_dir():
        raise WorkdirError(f"{where} is an existing file, not a directory; choose a directory "
                           "path (it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"{where}: cannot create the directory ({e.strerror or e}); choose a "
                           "path under a directory you can write to") from e
    _check_writable(p, option)
    entries = sorted(e.name for e in p.iterdir())
    if entries == [CONFIG_FILE]:  # a run that stopped before anything else (e.g. bad data)
        entries = []
    earlier_run = any(name in entries for name in _MARKERS)
    new = to_strict_json(config)
    do_resume = False
    if entries:
        if overwrite:
            if not earlier_run:
                raise WorkdirError(
                    f"{where} holds files that are not a cljax run ({_describe(entries)}; no "
                    f"{CONFIG_FILE} or results.json); --overwrite only empties an earlier run's "
                    "directory: choose another --workdir or empty it yourself")
            _clear(p)
        elif resume:
            if CONFIG_FILE not in entries:
                raise WorkdirError(
                    f"{where} holds no {CONFIG_FILE}, so there is no run to resume there "
                    f"(it holds {_describe(entries)}); pass --overwrite to delete its contents "
                    "and start again, or choose another --workdir")
            try:
                old = json.loads((p / CONFIG_FILE).read_text())
            except (OSError, ValueError) as e:
                raise WorkdirError(f"{where}: cannot read {CONFIG_FILE} of the run to resume "
                                   f"({e}); pass --overwrite to start again") from e
            strip = (lambda c: {k: v for k, v in c.items() if k not in IGNORED_ON_RESUME}
                     if isinstance(c, dict) else c)
            diff = config_differences(strip(old), strip(new))
            if diff:
                raise WorkdirError(
                    f"{where} holds a run of a different config (differing keys: "
                    f"{_describe(diff, 10)}); --resume needs the same config file and options, "
                    "or pass --overwrite to replace that run, or choose another --workdir")
            do_resume = True
        else:
            what = "an earlier cljax run" if earlier_run else "other files"
            raise WorkdirError(
                f"{where} is not empty (it holds {what}: {_describe(entries)}); pass --resume "
                "to continue the run saved there, --overwrite to delete its contents first, or "
                "choose another --workdir")
    write_json_atomic(p / CONFIG_FILE, new)
    return {"path": p, "resume": do_resume}


__all__ = ["CONFIG_FILE", "CHECKPOINT_DIR", "IGNORED_ON_RESUME", "WorkdirError",
           "config_differences", "prepare_workdir", "to_strict_json", "write_bytes_atomic",
           "write_json_atomic", "write_text_atomic"]
