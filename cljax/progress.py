"""Where runs stand, read from their work directories without touching them (``cljax
progress``).

A run that takes hours (a CIFAR protocol on a CPU) keeps its results so far only inside its
checkpoints until it finishes. :func:`find_scenarios` finds every scenario under a directory — a
``cljax run`` work directory, a ``cljax bench`` one (a run per sub-directory), a script's own
:class:`cljax.checkpoint.Checkpointer` directory, or any folder of them — and
:func:`scenario_progress` reads where each stands: finished (its ``result.json``), or
the newest checkpoint (:func:`cljax.checkpoint.read_latest`: read-only, digest checked), with
the accuracy matrix so far, the pace of its finished tasks, and whether a process holds its work
directory now (:func:`cljax.workdir.lock_holder`). Nothing is written, locked or moved.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
from typing import NamedTuple

import numpy as np

from cljax.checkpoint import CheckpointError, read_latest
from cljax.workdir import CHECKPOINT_DIR, RESULT_FILE, STATE_DIR, lock_holder


class Scenario(NamedTuple):
    """A scenario found by :func:`find_scenarios`: the ``workdir`` whose lock says whether a
    process runs in it, its ``name`` (``task``, ``<regime>/class``; ``""`` for a bare checkpoint
    directory), the ``checkpoints`` directory and the finished ``result`` file (None: none is
    written there)."""

    workdir: pathlib.Path
    name: str
    checkpoints: pathlib.Path
    result: pathlib.Path | None


def _holds_steps(path: pathlib.Path, dirs: list[str]) -> bool:
    """Whether ``path`` is a checkpoint directory: numbered checkpoints orbax completed."""
    return any(d.isdigit() and (path / d / "_CHECKPOINT_METADATA").is_file() for d in dirs)


def find_scenarios(directory: str | os.PathLike) -> list[Scenario]:
    """Every scenario of a stream run under ``directory`` (itself included), in path order: a
    ``cljax run`` scenario — a directory under a work directory's ``checkpoints/`` that holds
    ``state/`` or ``result.json`` — or a bare checkpoint directory of
    :class:`cljax.checkpoint.Checkpointer` (numbered checkpoints: a script's own
    ``run_stream(checkpoint=...)``; its work directory is its parent)."""
    root = pathlib.Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"directory {str(root)!r} does not exist or is not a directory")
    found = []
    for here, dirs, files in os.walk(root):
        path = pathlib.Path(here)
        inside = CHECKPOINT_DIR in path.parts
        if inside and (STATE_DIR in dirs or RESULT_FILE in files) and path.name != CHECKPOINT_DIR:
            top = len(path.parts) - 1 - path.parts[::-1].index(CHECKPOINT_DIR)
            workdir = pathlib.Path(*path.parts[:top])
            found.append(Scenario(workdir, "/".join(path.parts[top + 1:]), path / STATE_DIR,
                                  path / RESULT_FILE))
        elif _holds_steps(path, dirs):
            found.append(Scenario(path.parent, "", path, None))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if d not in (STATE_DIR, "tensorboard")
                         and not (inside and d.startswith("."))
                         and len(path.relative_to(root).parts) < 12)
    return found


def _rows(accuracy: np.ndarray, finished: int) -> dict[str, list[float | None]]:
    """Per finished task i, means over the runs (a diverged run's blanked, non-finite values
    left out): the average over the tasks seen, the task just trained, and the first task."""
    def mean(values: np.ndarray) -> float | None:
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else None

    a = np.asarray(accuracy, dtype=float)
    return {"average_seen": [mean(a[:, i, :i + 1].mean(axis=1)) for i in range(finished)],
            "just_trained": [mean(a[:, i, i]) for i in range(finished)],
            "first_task": [mean(a[:, i, 0]) for i in range(finished)]}


def _saved_at(path: pathlib.Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _finished(result: pathlib.Path) -> dict:
    entry = json.loads(result.read_text())["result"]
    a = np.asarray(entry["accuracy"], dtype=float)
    acc = entry.get("metrics", {}).get("acc", {})
    return {"status": "finished", "runs": int(a.shape[0]), "tasks": int(a.shape[1]),
            "tasks_done": int(a.shape[1]), "acc": acc.get("mean"),
            "acc_per_run": acc.get("per_run"), "saved": _saved_at(result),
            "task_seconds": entry.get("timings", {}).get("task_seconds"),
            **_rows(a, int(a.shape[1]))}


def _checkpointed(state: pathlib.Path) -> dict | None:
    read = read_latest(state)
    if read is None:
        return None
    payload, meta = read.payload, read.meta
    a = np.asarray(payload["record"]["accuracy"], dtype=float)
    task, done, steps = int(meta["task"]), int(meta["done"]), int(meta["num_steps"])
    diverged = np.asarray(payload["record"].get("diverged", np.full((a.shape[0], 2), -1)))
    seconds = [float(s) for s in meta.get("task_seconds", [])]
    left = a.shape[1] - task - done / steps
    pace = float(np.median(seconds)) if seconds else None
    return {"status": "checkpointed", "runs": int(a.shape[0]), "tasks": int(a.shape[1]),
            "tasks_done": task, "step": done, "steps": steps,
            "diverged_runs": int((diverged[:, 0] >= 0).sum()),
            "saved": _saved_at(state / str(read.step)), "task_seconds": seconds,
            "seconds_left": None if pace is None else pace * left, **_rows(a, task)}


def scenario_progress(scenario: Scenario) -> dict:
    """Where one scenario (:func:`find_scenarios`) stands, a JSON-able dict: ``status`` is
    ``finished`` (with ``acc``, the run's metric), ``checkpointed`` (``tasks_done`` of
    ``tasks``, ``step`` of ``steps`` in the next, ``seconds_left`` at the median pace of its
    finished tasks), ``not started`` or ``unreadable`` (``error``); ``holder`` names the
    process that holds the work directory now (None: no process holds its lock); the per-task
    rows are means over the runs, fractions in [0, 1]."""
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario (find_scenarios); got "
                        f"{type(scenario).__name__}")
    base = {"workdir": str(scenario.workdir), "scenario": scenario.name,
            "checkpoints": str(scenario.checkpoints), "holder": lock_holder(scenario.workdir)}
    try:
        if scenario.result is not None and scenario.result.is_file():
            return {**base, **_finished(scenario.result)}
        found = _checkpointed(scenario.checkpoints)
    except (CheckpointError, OSError, ValueError, KeyError, TypeError) as e:
        return {**base, "status": "unreadable", "error": f"{type(e).__name__}: {e}"}
    return {**base, **(found or {"status": "not started"})}


def _percent(values: list, digits: int = 1) -> str:
    return " ".join("–" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}"
                    for v in values)


def _duration(seconds: float) -> str:
    return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
            if seconds < 7200 else f"{seconds / 3600:.1f} h")


def _headline(p: dict) -> str:
    who = p["holder"]
    running = ("running" + (f" (pid {who['pid']} on {who['host']} since {who['since']})"
                            if who.get("pid") else "")) if who is not None else None
    if p["status"] == "not started":
        return f"{running}, no checkpoint yet" if running else "not started"
    if p["status"] == "unreadable":
        return f"unreadable ({running or 'stopped'}): {p['error']}"
    runs = f"{p['runs']} run{'s' if p['runs'] != 1 else ''}"
    if p["status"] == "finished":
        return f"finished: ACC {_percent([p['acc']], 2)} ({runs}), saved {p['saved']}"
    trained = p["tasks_done"] >= p["tasks"]
    where = (f"all {p['tasks']} tasks trained" if trained else
             f"task {p['tasks_done'] + 1} of {p['tasks']}, step {p['step']} of {p['steps']}")
    if not p["scenario"]:       # a script's own directory: no lock says whether it runs
        state = "no lock tells whether a process writes it"
    else:
        state = running or ("no process runs in it" if trained else "stopped: rerun its "
                            "command with --resume to continue")
    diverged = f", {p['diverged_runs']} diverged" if p.get("diverged_runs") else ""
    return f"{where} ({runs}{diverged}); last checkpoint {p['saved']}; {state}"


def format_progress(reports: list[dict]) -> str:
    """The text ``cljax progress`` prints for :func:`scenario_progress` reports (accuracies in
    %)."""
    if not reports:
        return "no cljax runs found"
    lines = []
    for p in reports:
        where = (f"{p['workdir']} · {p['scenario']}-IL" if p["scenario"] else
                 f"{p['checkpoints']} (checkpoints)")
        lines.append(f"{where}: {_headline(p)}")
        n = len(p.get("average_seen", []))
        if n:
            lines.append(f"  after {'task 1' if n == 1 else f'tasks 1–{n}'}, average over the tasks seen: "
                         f"{_percent(p['average_seen'])}")
            lines.append(f"  each task right after training: {_percent(p['just_trained'])}")
            lines.append(f"  task 1 after each: {_percent(p['first_task'])}")
        if p.get("seconds_left") is not None and (p["holder"] is not None
                                                   or not p["scenario"]):
            lines.append(f"  ≈ {_duration(p['seconds_left'])} to the end at the median pace "
                         f"of its finished tasks ({_duration(float(np.median(p['task_seconds'])))}"
                         " a task)")
    return "\n".join(lines)


__all__ = ["Scenario", "find_scenarios", "scenario_progress", "format_progress"]
