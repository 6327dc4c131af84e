"""``cljax bench``: run a protocol's methods, resumably, and write its leaderboard.

The benchmark's work directory holds one ordinary run directory per entry run (what
``cljax run --workdir`` would write: ``results.json``, ``report.md``, the plots, checkpoints),
``provenance.json`` (per run: the commit and cljax version that produced it, and when), and the
leaderboard (``leaderboard.json``, ``leaderboard.md``, ``leaderboard.png``), rewritten after
every run so the progress is visible while the rest trains. The directory is a cljax work
directory (:mod:`cljax.workdir`): created, checked and locked before anything runs; ``resume``
continues it — finished runs are skipped, an interrupted one resumes from its checkpoints — so
a protocol larger than one sitting finishes over several; ``merge_from`` copies in the runs
another directory of the same benchmark finished (two processes or machines filling one table).
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from cljax.bench.leaderboard import (
    leaderboard,
    leaderboard_markdown,
    plot_leaderboard,
    replace_block,
)
from cljax.bench.protocol import (
    EntryRun,
    Protocol,
    check_seed_runs,
    chosen_hparams,
    default_seed_runs,
    entry_runs,
    is_complete,
    pending_run,
    selection_run,
)
from cljax.bench.registry import get_protocol

PROVENANCE_FILE = "provenance.json"
"""Per finished run of a benchmark: ``{"commit", "cljax_version", "finished_at"}``."""


SOURCE_PATHS = ("cljax", "pyproject.toml")
"""What of a checkout makes the numbers: a change under these marks a run's commit dirty; a
change elsewhere (the benchmark directories kept in ``benchmarks/results``, documents) does
not."""


def source_commit(root: pathlib.Path | None = None) -> str | None:
    """The git commit of the cljax source that is running (``<sha>-dirty`` when the source
    differs from it: a changed or new file under :data:`SOURCE_PATHS` that git does not
    ignore), or None when cljax is not a git checkout (an installed wheel). ``root``: the
    checkout (default: the one this module is in)."""
    here = pathlib.Path(__file__).resolve().parents[2]
    root = here if root is None else pathlib.Path(root).resolve()

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                 text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or pathlib.Path(top).resolve() != root:
        return None
    sha = git("rev-parse", "HEAD")
    if sha is None:
        return None
    dirty = git("status", "--porcelain", "--", *SOURCE_PATHS)
    return sha + ("-dirty" if dirty else "")


def select_entries(protocol: Protocol, methods: str | Sequence[str] | None) -> list[str]:
    """The entry keys ``methods`` selects: None or ``"all"`` every entry; else each name is an
    entry's key or a method's name (every entry of that method). An unknown name is an error
    naming the protocol's entries."""
    if methods is None or methods == "all":
        return [e.key for e in protocol.entries]
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    names = [m for m in names if m]
    if not names:
        raise ValueError("methods must name at least one entry (or 'all')")
    keys: list[str] = []
    for name in names:
        hits = [e.key for e in protocol.entries if name in (e.key, e.method)]
        if not hits:
            raise ValueError(f"methods: protocol {protocol.name!r} has no entry or method "
                             f"{name!r}; entries: {', '.join(e.key for e in protocol.entries)}")
        keys += [k for k in hits if k not in keys]
    return keys


def bench_runs(protocol: Protocol, *, seeds: int,
               overrides: Mapping[str, Any] | None = None,
               selections: Mapping[str, Mapping[str, Any]] | None = None,
               seed_runs: str | None = None) -> list[EntryRun]:
    """Every run of every entry of ``protocol`` (:func:`cljax.bench.entry_runs`, its seeds laid
    out by ``seed_runs``), in order; an entry with a grid gets its runs from
    ``selections[key]`` (its finished selection run's results), else a
    :func:`cljax.bench.pending_run`."""
    runs: list[EntryRun] = []
    selections = selections or {}
    for entry in protocol.entries:
        chosen = selections.get(entry.key)
        if not entry.grid:
            runs += entry_runs(protocol, entry, seeds=seeds, overrides=overrides,
                               seed_runs=seed_runs)
        elif chosen is not None:
            runs += entry_runs(protocol, entry, seeds=seeds, overrides=overrides,
                               chosen=chosen_hparams(chosen), seed_runs=seed_runs)
        else:
            runs.append(pending_run(protocol, entry))
    return runs



def read_finished(workdir: str | pathlib.Path, runs: Sequence[EntryRun]) -> dict[str, dict]:
    """The ``results.json`` of each run of ``runs`` found in the benchmark directory
    ``workdir`` whose run identity is that run's (a directory left by other options is
    ignored; so is a pending run)."""
    from cljax.experiment import run_identity, validate_config
    from cljax.workdir import describe_mismatch, read_marker

    out = {}
    for run in runs:
        path = pathlib.Path(workdir) / run.name
        marker = read_marker(path)
        if run.config is None or marker is None or not (path / "results.json").is_file():
            continue
        if describe_mismatch(marker.get("identity"), run_identity(validate_config(run.config))):
            continue
        out[run.name] = json.loads((path / "results.json").read_text())
    return out


def _write_leaderboard(bench: pathlib.Path, board: dict) -> None:
    from cljax.workdir import write_json_atomic, write_recording, write_text_atomic

    def write() -> None:
        write_json_atomic(bench / "leaderboard.json", board)
        write_text_atomic(bench / "leaderboard.md", leaderboard_markdown(board))
        plot_leaderboard(board, bench / "leaderboard.png")

    write_recording(bench, write)


def _run_one(run: EntryRun, bench: pathlib.Path, *, resume: bool,
             log: Callable[[str], None], progress_factory: Callable | None,
             checkpoint_every: int | None, devices: int | None) -> dict:
    """One entry run into ``bench/<run.name>``, a run directory as ``cljax run`` writes it."""
    from cljax.experiment import deferred_interrupts, run_experiment, run_identity, validate_config
    from cljax.report import write_outputs
    from cljax.workdir import CHECKPOINT_DIR, prepare_workdir, record_outputs, write_recording

    if run.config is None:
        raise ValueError(f"run {run.name!r} has no config yet (its selection has not chosen)")
    valid = validate_config(run.config)
    prepared = prepare_workdir(bench / run.name, valid, resume=resume,
                               identity=run_identity(valid), option=f"run {run.name!r} in")
    record_outputs(bench, [run.name])
    path = prepared["path"]
    try:
        record_outputs(path, [CHECKPOINT_DIR])

        def write(results: dict) -> Any:
            return write_recording(path, lambda: write_outputs(results, path))

        results = run_experiment(run.config, progress_factory=progress_factory, log=log,
                                 on_scenario=write, checkpoint_dir=str(path / CHECKPOINT_DIR),
                                 resume=prepared["resume"], checkpoint_every=checkpoint_every,
                                 devices=devices)
        with deferred_interrupts():
            write(results)
    finally:
        prepared["lock"].release()
    return results


def _check_merge_source(source: str | pathlib.Path, identity: Mapping[str, Any],
                        workdir: str | pathlib.Path) -> pathlib.Path:
    """``source`` as a path, checked to be another cljax directory of the benchmark whose
    identity (protocol, seeds, options, cljax version) is ``identity``."""
    from cljax.workdir import MARKER_FILE, WorkdirError, describe_mismatch, read_marker

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"merge_from: each entry must be a directory path; got "
                        f"{type(source).__name__}")
    path = pathlib.Path(source)
    where = f"--merge-from {str(source)!r}"
    marker = read_marker(path) if path.is_dir() else None
    if marker is None:
        raise WorkdirError(f"{where} is not a cljax benchmark directory (no {MARKER_FILE})")
    if pathlib.Path(workdir).exists() and path.resolve() == pathlib.Path(workdir).resolve():
        raise WorkdirError(f"{where} is the benchmark directory itself (--workdir)")
    mismatch = describe_mismatch(marker.get("identity"), dict(identity))
    if mismatch:
        raise WorkdirError(f"{where} holds another benchmark than --workdir "
                           f"{str(workdir)!r}: {mismatch}")
    return path


def _validated(run: EntryRun, protocol: Protocol) -> dict:
    from cljax.experiment import validate_config

    if run.config is None:
        raise ValueError(f"protocol {protocol.name!r}, run {run.name!r}: no config yet (its "
                         "selection has not chosen)")
    try:
        return validate_config(run.config)
    except Exception as e:
        raise ValueError(f"protocol {protocol.name!r}, run {run.name!r}: {e}") from e


class _BenchState:
    """What a benchmark directory holds while :func:`run_bench` works in it: the finished runs'
    results (read from disk, then added as runs finish), their provenance, the runs an entry's
    finished selection makes possible, the leaderboard and what is left to do."""

    def __init__(self, protocol: Protocol, bench: pathlib.Path, keys: Sequence[str],
                 selection: Mapping[str, EntryRun], seeds: int,
                 overrides: Mapping[str, Any] | None, deviations: Sequence[str],
                 seed_runs: str | None = None, only: Collection[str] | None = None) -> None:
        self.protocol, self.bench, self.keys, self.selection = protocol, bench, keys, selection
        self.seeds, self.overrides, self.deviations = seeds, overrides, deviations
        self.seed_runs, self.only = seed_runs, only
        self.prov_path = bench / PROVENANCE_FILE
        self.provenance = (json.loads(self.prov_path.read_text())
                           if self.prov_path.is_file() else {})
        self.finished = read_finished(bench, list(selection.values()))
        self.commit = source_commit()

    def runs(self) -> tuple[list[EntryRun], dict]:
        """Every run known now and the finished selections (``{key: results}``)."""
        chosen = {k: self.finished[r.name] for k, r in self.selection.items()
                  if is_complete(r, self.finished.get(r.name))}
        runs = bench_runs(self.protocol, seeds=self.seeds, overrides=self.overrides,
                          selections=chosen, seed_runs=self.seed_runs)
        self.finished.update({k: v for k, v in read_finished(self.bench, runs).items()
                              if k not in self.finished})
        return runs, chosen

    def board(self) -> dict:
        runs, chosen = self.runs()
        shown = [r for r in runs if r.entry in self.keys or r.name in self.finished]
        return leaderboard(self.protocol, shown, self.finished, provenance=self.provenance,
                           seeds=self.seeds, deviations=self.deviations,
                           selections={k: (self.selection[k].name, v) for k, v in chosen.items()})

    def todo(self) -> list[EntryRun]:
        """The selected runs not finished: selections first, then runs with a config (only
        those named in ``only`` when it is given)."""
        runs, _ = self.runs()
        pending = [self.selection[k] for k in self.keys if k in self.selection
                   and not is_complete(self.selection[k],
                                       self.finished.get(self.selection[k].name))]
        todo = pending + [r for r in runs if r.entry in self.keys and r.config is not None
                          and not is_complete(r, self.finished.get(r.name))]
        return todo if self.only is None else [r for r in todo if r.name in self.only]

    def merge(self, source: pathlib.Path) -> list[str]:
        """Copy into the benchmark the runs finished in ``source`` (a directory of the same
        benchmark: :func:`_check_merge_source`) that it has not finished, each with the
        provenance entry ``source`` recorded for it; returns their names. A run's checkpoints
        and lock file are not copied; a run whose lock another process holds (still writing
        its outputs) is refused."""
        import shutil

        from cljax.workdir import (
            CHECKPOINT_DIR,
            LOCK_FILE,
            WorkdirError,
            lock_workdir,
            record_outputs,
            write_json_atomic,
            write_recording,
        )

        where = f"--merge-from {str(source)!r}"
        prov_path = source / PROVENANCE_FILE
        provenance = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
        merged: list[str] = []
        while True:     # a merged selection run makes its entry's final runs known
            runs, _ = self.runs()
            candidates = [*self.selection.values(), *runs]
            found = read_finished(source, candidates)
            new = [r for r in candidates if is_complete(r, found.get(r.name))
                   and not is_complete(r, self.finished.get(r.name))]
            if not new:
                break
            for r in new:       # every run checked before any is copied
                if r.name not in provenance:
                    raise WorkdirError(f"{where}: run {r.name!r} has no entry in its "
                                       f"{PROVENANCE_FILE}")
                if (self.bench / r.name).exists():
                    raise WorkdirError(
                        f"--workdir {str(self.bench)!r} already holds run {r.name!r}, "
                        f"unfinished: finish it there with --resume, or remove it, before "
                        f"merging the one of {where}")
            locks = []
            try:        # every run locked (none still being written) before any is copied
                for r in new:
                    if os.access(source / r.name, os.W_OK):    # a read-only copy: no writer
                        locks.append(lock_workdir(source / r.name,
                                                  option=f"run {r.name!r} of {where}"))
                for r in new:
                    record_outputs(self.bench, [r.name])
                    shutil.copytree(source / r.name, self.bench / r.name,
                                    ignore=shutil.ignore_patterns(CHECKPOINT_DIR, LOCK_FILE))
                    self.finished[r.name] = found[r.name]
                    self.provenance[r.name] = provenance[r.name]
                    merged.append(r.name)
            finally:
                for lock in locks:
                    lock.release()
        if merged:
            write_recording(self.bench,
                            lambda: write_json_atomic(self.prov_path, self.provenance))
            _write_leaderboard(self.bench, self.board())
        return merged

    def record(self, name: str, results: dict) -> None:
        """A run finished: its results, its provenance (written), the leaderboard (written)."""
        from cljax import __version__
        from cljax.workdir import write_json_atomic, write_recording

        self.finished[name] = results
        self.provenance[name] = {
            "commit": self.commit, "cljax_version": __version__,
            "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        write_recording(self.bench, lambda: write_json_atomic(self.prov_path, self.provenance))
        _write_leaderboard(self.bench, self.board())


def _check_only_runs(protocol: Protocol, only_runs: Sequence[str] | None,
                     known: Sequence[EntryRun], waiting: Sequence[str]) -> set[str] | None:
    """``only_runs`` checked: a list of names of ``known`` runs (a name of a run ``waiting``
    for its entry's selection is refused with that reason), as a set; None stays None."""
    if only_runs is None:
        return None
    if isinstance(only_runs, str) or not all(isinstance(n, str) for n in only_runs):
        raise TypeError(f"only_runs must be a list of run names; got {only_runs!r}")
    if not only_runs:
        raise ValueError("only_runs must name at least one run (None: every run)")
    names = {r.name for r in known}
    for name in only_runs:
        if name in waiting and name not in names:
            raise ValueError(f"only_runs: run {name!r} of protocol {protocol.name!r} waits for "
                             "its entry's selection run; run that first")
        if name not in names:
            raise ValueError(f"only_runs: protocol {protocol.name!r} has no run {name!r} among "
                             f"the selected entries; its runs: {', '.join(sorted(names))}")
    return set(only_runs)


def _run_todo(state: _BenchState, *, run: bool, log: Callable[[str], None], **run_options: Any
              ) -> None:
    """Log what ``state`` has to do and, when ``run``, run it (selections first), recording
    each finished run; ``run_options``: :func:`_run_one`'s."""
    protocol = state.protocol
    remaining = state.todo()
    log(f"bench {protocol.name}: {len(remaining)} run(s) to do"
        + (f": {', '.join(r.name for r in remaining)}" if remaining else ""))
    done = 0
    while run and remaining:
        r = next((x for x in remaining if x.name.endswith("_select")), remaining[0])
        cfg = _validated(r, protocol)
        done += 1
        log(f"bench {protocol.name}: run {done} ({len(remaining) - 1} more after it): "
            f"{r.name} ({cfg['method']}, {', '.join(r.scenarios)}; {cfg['seeds']} seed(s)"
            + (", on the validation split)" if r.name.endswith("_select") else ")"))
        state.record(r.name, _run_one(r, state.bench, log=log, **run_options))
        remaining = state.todo()


def _bench_identity(protocol: Protocol, seeds: int, overrides: Mapping[str, Any] | None,
                    seed_runs: str) -> dict:
    """What a benchmark directory must match to be resumed or merged: the protocol, seeds,
    options and cljax version, and the seed layout when it is not the protocol's default."""
    from cljax import __version__

    identity = {"protocol": protocol.name, "seeds": seeds, "overrides": dict(overrides or {}),
                "version": __version__}
    if seed_runs != default_seed_runs(protocol):
        identity["seed_runs"] = seed_runs
    return identity


def _write_results_md(doc: pathlib.Path, protocol: Protocol, board: Mapping[str, Any]) -> None:
    """Replace ``protocol``'s block in the document ``doc`` with the leaderboard ``board``."""
    from cljax.workdir import write_text_atomic

    write_text_atomic(doc, replace_block(doc.read_text(), protocol.name,
                                         leaderboard_markdown(board)))


def _validate_planned_runs(protocol: Protocol, keys: Sequence[str],
                           selection: Mapping[str, EntryRun], *, seeds: int,
                           overrides: Mapping[str, Any] | None, seed_runs: str,
                           only_runs: Sequence[str] | None) -> set[str] | None:
    """Every run the selected entries ``keys`` will make (their selection runs, then the runs
    with a config; only those named in ``only_runs`` when given) validated before anything is
    written or trained; returns ``only_runs`` checked (:func:`_check_only_runs`)."""
    selected = [r for r in bench_runs(protocol, seeds=seeds, overrides=overrides,
                                      seed_runs=seed_runs) if r.entry in keys]
    known = [*(selection[k] for k in keys if k in selection),
             *(r for r in selected if r.config is not None)]
    only = _check_only_runs(protocol, only_runs, known, [r.name for r in selected])
    for r in known:
        if only is None or r.name in only:
            _validated(r, protocol)
    return only


def run_bench(protocol: Protocol | str, workdir: str | pathlib.Path, *,
              methods: str | Sequence[str] | None = None, seeds: int | None = None,
              overrides: Mapping[str, Any] | None = None, deviations: Sequence[str] = (),
              resume: bool = False, run: bool = True, results_md: str | None = None,
              log: Callable[[str], None] = print, progress_factory: Callable | None = None,
              checkpoint_every: int | None = None, devices: int | None = None,
              merge_from: Sequence[str | pathlib.Path] = (), seed_runs: str | None = None,
              only_runs: Sequence[str] | None = None) -> dict:
    """Run the selected entries of ``protocol`` (a :class:`Protocol` or a registered name) with
    ``seeds`` (default: the protocol's) into ``workdir``, and return its leaderboard
    (:func:`cljax.bench.leaderboard`).

    An entry with a grid first runs its selection (:func:`cljax.bench.selection_run`: the grid
    as one vmapped sweep on the protocol's validation split, the test split never read); its
    runs then use the chosen point of each scenario.

    ``methods``: entry keys or method names (:func:`select_entries`); ``overrides``: dotted
    config keys the user changes (every run gets them; ``deviations`` names them in the
    leaderboard, which then says it is not the paper's protocol); ``resume``: continue the
    benchmark in ``workdir`` (finished runs are skipped, an unfinished one resumes from its
    checkpoints); ``run=False``: run nothing, only write the leaderboard of what is finished;
    ``results_md``: a document (RESULTS.md) whose block for this protocol
    (:func:`cljax.bench.block_markers`) is replaced by the leaderboard's Markdown. Every
    selected run's config is validated before anything runs (a selected entry's final runs
    once its selection has chosen). ``merge_from``: other directories of this benchmark (the
    same protocol, seeds and options, e.g. runs split over two processes or machines) whose
    finished runs are copied in first, with their provenance. ``seed_runs``: ``"separate"``
    splits each entry's seeds into runs of one seed (``<entry>_seed<s>``, pooled into one row),
    which ``only_runs`` can then deal to processes, machines or sittings; ``"together"`` runs
    them vmapped in one program (default: the protocol's,
    :func:`cljax.bench.protocol.default_seed_runs`; the benchmark's identity records a choice
    other than the default). ``only_runs``: run only these of the selected entries' runs (their
    names, as the leaderboard's to-do line lists them); the others stay to do."""
    from cljax.workdir import prepare_workdir

    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    if not isinstance(protocol, Protocol):
        raise TypeError(f"protocol must be a Protocol or a registered name; got "
                        f"{type(protocol).__name__}")
    seeds = protocol.seeds if seeds is None else seeds
    keys = select_entries(protocol, methods)
    layout = check_seed_runs(protocol, seed_runs)
    selection = {e.key: selection_run(protocol, e, overrides=overrides)
                 for e in protocol.entries if e.grid}
    only = _validate_planned_runs(protocol, keys, selection, seeds=seeds, overrides=overrides,
                                  seed_runs=layout, only_runs=only_runs)
    identity = _bench_identity(protocol, seeds, overrides, layout)
    if isinstance(merge_from, (str, os.PathLike)):
        raise TypeError("merge_from must be a list of directories; got one path (wrap it in a "
                        "list)")
    sources = [_check_merge_source(s, identity, workdir) for s in merge_from]
    prepared = prepare_workdir(workdir, identity, resume=resume or not run, identity=identity)
    bench = prepared["path"]
    try:
        state = _BenchState(protocol, bench, keys, selection, seeds, overrides, deviations,
                            seed_runs=layout, only=only)
        for source in sources:
            merged = state.merge(source)
            log(f"bench {protocol.name}: merged {len(merged)} finished run(s) from {source}"
                + (f": {', '.join(merged)}" if merged else ""))
        _run_todo(state, run=run, log=log, resume=resume, progress_factory=progress_factory,
                  checkpoint_every=checkpoint_every, devices=devices)
        result = state.board()
        _write_leaderboard(bench, result)
    finally:
        prepared["lock"].release()
    if results_md is not None:
        _write_results_md(pathlib.Path(results_md), protocol, result)
        log(f"bench {protocol.name}: leaderboard written into {results_md}")
    return result


__all__ = ["PROVENANCE_FILE", "SOURCE_PATHS", "source_commit", "select_entries", "bench_runs",
           "read_finished", "run_bench"]
