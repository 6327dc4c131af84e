"""The leaderboard of a benchmark: ours beside the published values, as JSON, Markdown and a plot.

:func:`leaderboard` reads the finished runs' ``results.json`` and returns a strict-JSON dict
(schema :data:`SCHEMA`, documented in :func:`leaderboard`); :func:`leaderboard_markdown` and
:func:`plot_leaderboard` draw it; :func:`replace_block` puts the Markdown into a document
(``RESULTS.md``) between the markers of :func:`block_markers`, so the tables there are generated,
never typed.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from cljax.bench.protocol import EntryRun, Protocol, is_complete

SCHEMA = "cljax.leaderboard/1"
"""The ``schema`` field of a leaderboard's JSON; bumped when a field changes meaning."""

SCENARIO_NAMES = {"task": "Task-IL", "domain": "Domain-IL", "class": "Class-IL"}


def _percent(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else 100.0 * float(x)


def interval95(per_run: Sequence[float | None]) -> dict:
    """Mean, SEM and the two-sided 95 % Student-t interval of the finite values of
    ``per_run`` (``{"n", "mean", "sem", "low", "high"}``; the interval is None below 2 values).

    Example:
        >>> r = interval95([1.0, 2.0, 3.0])
        >>> r["mean"], round(r["sem"], 4), round(r["high"] - r["mean"], 4)
        (2.0, 0.5774, 2.4841)
    """
    values = np.asarray([v for v in per_run if v is not None and math.isfinite(v)], float)
    n = int(values.size)
    if n == 0:
        return {"n": 0, "mean": None, "sem": None, "low": None, "high": None}
    mean = float(values.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sem": None, "low": None, "high": None}
    sem = float(values.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.975, n - 1)) * sem
    return {"n": n, "mean": mean, "sem": sem, "low": mean - half, "high": mean + half}


def _selection_entry(entry_grid: Mapping, scenario: str,
                     selection: tuple[str, Mapping[str, Any]] | None, metric: str) -> dict | None:
    """What a row says of its validation selection: the run, and every grid point's validation
    score (mean over the selection's seeds, %)."""
    if not entry_grid:
        return None
    if selection is None:
        return {"run": None, "grid": {k: list(v) for k, v in entry_grid.items()}, "points": []}
    name, results = selection
    sc = results["scenarios"][scenario]
    points = [{"hparams": p["hparams"],
               "validation": _percent(p["metrics"][metric]["mean"]),
               "diverged": len(p.get("diverged") or [])}
              for p in sc.get("sweep") or [sc]]
    return {"run": name, "grid": {k: list(v) for k, v in entry_grid.items()}, "points": points}


def _sittings_seconds(timings: Mapping[str, Any]) -> float | None:
    """A scenario's train + eval seconds over every sitting: its ``run_seconds`` (the last
    sitting's: a resumed run starts the clock again) or, when larger, the sum of its
    ``task_seconds`` (each task's, kept in the checkpoints across sittings)."""
    run = timings.get("run_seconds")
    return None if run is None else max(float(run), float(sum(timings.get("task_seconds") or [])))


def _row(protocol: Protocol, runs: Sequence[EntryRun], scenario: str,
         results: Sequence[dict | None], provenance: Sequence[Mapping[str, Any]],
         selection: tuple[str, Mapping[str, Any]] | None) -> dict:
    """One row: the runs pooled under one name (one run, or a run per seed when the class order
    is drawn per seed), finished only when every one of them has the scenario."""
    run = runs[0]
    entry = protocol.entry(run.entry)
    published = entry.published.get(scenario)
    row: dict[str, Any] = {
        "entry": entry.key, "method": entry.method, "scenario": scenario, "run": run.pooled,
        "hparams": None if run.config is None else run.config["hparams"],
        "selection": entry.selection, "note": entry.note,
        "validation": _selection_entry(entry.grid, scenario, selection, protocol.metric),
        "published": None if published is None else {
            "value": published.value, "pm": published.pm, "spread": published.spread,
            "runs": published.runs, "source": published.source},
        "finished": False}
    if len(runs) > 1:
        row["runs"] = [r.name for r in runs]
    found = [None if r is None else r.get("scenarios", {}).get(scenario) for r in results]
    scs: list[dict] = [sc for sc in found if sc is not None]
    per_run = [_percent(v) for sc in scs for v in sc["metrics"][protocol.metric]["per_run"]]
    if len(scs) < len(found):
        if scs:     # some of the pooled runs (seeds) finished: shown, never compared
            known = [v for v in per_run if v is not None]
            row["partial"] = {"runs_finished": len(scs), "runs": len(found), "per_run": per_run,
                              "mean": float(sum(known) / len(known)) if known else None}
        return row
    ours = interval95(per_run)
    ours["per_run"] = per_run
    diff = None if ours["mean"] is None or published is None else ours["mean"] - published.value
    within = None if ours["low"] is None or published is None else \
        bool(ours["low"] <= published.value <= ours["high"])

    def total(seconds: Callable[[Mapping[str, Any]], float | None]) -> float | None:
        values = [seconds(sc.get("timings", {})) for sc in scs]
        known = [v for v in values if v is not None]
        return float(sum(known)) if len(known) == len(values) else None

    commits = sorted({str(p["commit"]) for p in provenance if p.get("commit")})
    row.update(finished=True, ours=ours, difference=diff, within_ci95=within,
               seeds=len(per_run),
               diverged=int(sum(len(sc.get("diverged") or []) for sc in scs)),
               wall_seconds=total(_sittings_seconds),
               compile_seconds=total(lambda timings: timings.get("compile_seconds")),
               commit=", ".join(commits) or None,
               cljax_version=provenance[0].get("cljax_version"),
               finished_at=max((p.get("finished_at") or "" for p in provenance), default="")
               or None)
    return row


def leaderboard(protocol: Protocol, runs: Sequence[EntryRun], finished: Mapping[str, dict], *,
                provenance: Mapping[str, Mapping[str, Any]] | None = None, seeds: int,
                deviations: Sequence[str] = (),
                selections: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None) -> dict:
    """The leaderboard of ``protocol`` over ``runs`` (from :func:`cljax.bench.entry_runs`),
    ``finished`` mapping a run's name to its ``results.json`` (possibly of some of its
    scenarios: a run whose every scenario is there is done, the others are to do),
    ``provenance`` a run's name to ``{"commit", "cljax_version", "finished_at"}``,
    ``selections`` an entry's key to ``(its selection run's name, its results)``.

    Schema (strict JSON; percentages; ``null`` where a value is missing)::

        schema        "cljax.leaderboard/1"
        produced_by   "cljax bench"
        protocol      {name, title, config, citation, metric, metric_definition, scenarios,
                       notes, device}
        seeds         the seeds each run was asked for
        deviations    the user's changes to the protocol (``--steps``, ``--set``): a
                      leaderboard with any is not the paper's protocol
        rows [{entry, method, scenario, run, runs (the runs pooled, when a per-seed class
               order gives each seed a run of its own), hparams (null: not chosen yet),
               selection, note, finished,
               validation {run, grid, points [{hparams, validation, diverged}]} | null
                          (an entry whose grid is chosen on the validation split),
               published {value, pm, spread, runs, source} | null,
               ours {n, mean, sem, low, high, per_run},      (finished rows only)
               difference (ours − published), within_ci95 (published in [low, high]),
               seeds, diverged, wall_seconds (train + eval over every sitting of a resumed
               run), compile_seconds (both summed over pooled runs),
               commit (the commits of the pooled runs, joined), cljax_version, finished_at,
               partial {runs_finished, runs, per_run, mean}   (an unfinished row some of
                       whose pooled runs finished: their values, shown but not compared)}]
        done, to_do   the runs finished and not yet
    """
    if not isinstance(protocol, Protocol):
        raise TypeError(f"protocol must be a cljax.bench.Protocol; got {type(protocol).__name__}")
    provenance = provenance or {}
    rows = []
    pooled: dict[str, list[EntryRun]] = {}
    for run in runs:
        pooled.setdefault(run.pooled, []).append(run)
    for scenario in protocol.scenarios:
        for group in pooled.values():
            if scenario in group[0].scenarios:
                rows.append(_row(protocol, group, scenario, [finished.get(r.name) for r in group],
                                 [provenance.get(r.name, {}) for r in group],
                                 (selections or {}).get(group[0].entry)))
    return {
        "schema": SCHEMA, "produced_by": "cljax bench",
        "protocol": {"name": protocol.name, "title": protocol.title, "config": protocol.config,
                     "citation": protocol.citation, "metric": protocol.metric,
                     "metric_definition": protocol.metric_definition,
                     "scenarios": list(protocol.scenarios), "notes": list(protocol.notes),
                     "device": protocol.device},
        "seeds": seeds, "deviations": list(deviations), "rows": rows,
        "done": [r.name for r in runs if is_complete(r, finished.get(r.name))],
        "to_do": [r.name for r in runs if not is_complete(r, finished.get(r.name))]}



def _num(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def _published_cell(p: Mapping | None) -> str:
    if p is None:
        return "–"
    pm = "" if p["pm"] is None else f" ± {p['pm']:.2f}" + (
        "" if p["spread"] == "unstated" else f" ({p['spread']})")
    return f"{p['value']:.2f}{pm} ({p['source']})"


def _commit_cell(commit: str | None) -> str:
    """Each commit of a row (pooled runs may come from several, joined by ", ") shortened to
    10 characters, ``-dirty`` kept."""
    if not commit:
        return "–"
    cells = []
    for one in commit.split(", "):
        sha, _, dirty = one.partition("-")
        cells.append(sha[:10] + (f"-{dirty}" if dirty else ""))
    return ", ".join(cells)


def _hparams_cell(row: Mapping) -> str:
    v = row.get("validation")
    if row["hparams"] is None:
        grid = "; ".join(f"{k} ∈ {{{', '.join(f'{x:g}' for x in xs)}}}"
                         for k, xs in (v or {}).get("grid", {}).items())
        return f"to choose on validation: {grid}"
    hp = ", ".join(f"{k} {x:g}" for k, x in row["hparams"].items())
    if v and v["points"]:
        scores = ", ".join(
            ("/".join(f"{x:g}" for k, x in p["hparams"].items() if k in v["grid"]) + ": "
             + ("diverged" if p["validation"] is None else f"{p['validation']:.2f}"
                + (f" ({p['diverged']} diverged)" if p["diverged"] else "")))
            for p in v["points"])
        return f"{hp} (validation: {scores})"
    return f"{hp or '–'} ({row['selection'].replace('_', ' ')})"


def leaderboard_markdown(board: Mapping[str, Any]) -> str:
    """The leaderboard as Markdown: the protocol, its metric, any deviation in bold, then one
    row per method and scenario — ours (mean ± SEM over the seeds), the published value with its
    table, the difference, whether the published value is inside our 95 % interval, wall and
    compile time, the commit."""
    p = board["protocol"]
    lines = [f"**{p['title']}** — `cljax bench {p['name']}` (config `{p['config']}`, "
             f"{board['seeds']} seed(s) per run). {p['citation']}", "",
             f"Metric: {p['metric_definition']}", ""]
    if board["deviations"]:
        lines += ["**Not the paper's protocol: " + "; ".join(board["deviations"]) + ".**", ""]
    lines += ["| method | scenario | hyperparameters | seeds | ours | published | Δ | in our "
              "95 % CI | wall | compile | commit |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in board["rows"]:
        scenario = SCENARIO_NAMES[row["scenario"]]
        if not row["finished"]:
            part = row.get("partial")
            seeds, ours = ("–", "to do") if part is None else (
                f"{part['runs_finished']} of {part['runs']} runs",
                "to do; so far " + ("diverged" if part["mean"] is None else
                                    f"{part['mean']:.2f}") + " (" +
                ", ".join(_num(v) for v in part["per_run"]) + ")")
            lines.append(f"| {row['entry']} | {scenario} | {_hparams_cell(row)} | {seeds} | "
                         f"{ours} | {_published_cell(row['published'])} | – | – | – | – | – |")
            continue
        o = row["ours"]
        ours = "diverged" if o["mean"] is None else \
            f"{o['mean']:.2f}" + ("" if o["sem"] is None else f" ± {o['sem']:.2f}")
        within = {True: "yes", False: "**no**", None: "–"}[row["within_ci95"]]
        seeds = f"{row['seeds']}" + (f" ({row['diverged']} diverged)" if row["diverged"] else "")
        lines.append(
            f"| {row['entry']} | {scenario} | {_hparams_cell(row)} | {seeds} | {ours} | "
            f"{_published_cell(row['published'])} | {_num(row['difference'], '+.2f')} | "
            f"{within} | {_num(row['wall_seconds'], '.0f')} s | "
            f"{_num(row['compile_seconds'], '.0f')} s | {_commit_cell(row['commit'])} |")
    notes = [f"- {row['entry']}: {row['note']}" for row in board["rows"] if row["note"]]
    notes = list(dict.fromkeys(notes))
    if p["notes"] or notes:
        lines += ["", *[f"- {n}" for n in p["notes"]], *notes]
    if board["to_do"]:
        lines += ["", f"To do ({len(board['to_do'])} of {len(board['to_do']) + len(board['done'])}"
                      f" runs): {', '.join(board['to_do'])}."]
    return "\n".join(lines) + "\n"


def plot_leaderboard(board: Mapping[str, Any], path: str | os.PathLike) -> None:
    """One panel per scenario: ours (mean and 95 % interval) and the published value per
    method, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cljax.workdir import write_bytes_atomic

    scenarios = board["protocol"]["scenarios"]
    most = max([sum(r["scenario"] == s for r in board["rows"]) for s in scenarios] + [1])
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 1.6 + 0.4 * most),
                             squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        rows = [r for r in board["rows"] if r["scenario"] == scenario]
        shown: list[float] = []
        for y, row in enumerate(rows):
            o = row.get("ours") or {}
            if o.get("mean") is not None:
                err = None if o["low"] is None else [[o["mean"] - o["low"]], [o["high"] - o["mean"]]]
                ax.errorbar([o["mean"]], [y], xerr=err, fmt="o", color="C0", capsize=3,
                            label="ours (mean, 95 % CI)")
                shown += [o["mean"]] + ([] if o["low"] is None else [o["low"], o["high"]])
            if row["published"] is not None:
                ax.plot([row["published"]["value"]], [y], "x", color="C3", markersize=8,
                        label="published")
                shown.append(row["published"]["value"])
        if shown:   # accuracies: an interval reaching past 0 or 100 is cut at the axis
            span = max(max(shown) - min(shown), 1.0)
            ax.set_xlim(max(min(shown) - 0.08 * span, 0.0), min(max(shown) + 0.08 * span, 100.0))
        ax.set_yticks(range(len(rows)), [r["entry"] for r in rows])
        ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)    # a scenario with no row yet: one slot
        if not rows:
            ax.text(0.5, 0.5, "no run yet", transform=ax.transAxes, ha="center", va="center")
        ax.set_title(SCENARIO_NAMES[scenario])
        ax.set_xlabel(f"{board['protocol']['metric'].upper()} (%)")
        ax.grid(axis="x", alpha=0.3)
    labels: dict = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    if labels:
        fig.legend(list(labels.values()), list(labels), loc="lower center", ncol=2, fontsize=8,
                   frameon=False)
    fig.suptitle(board["protocol"]["title"], fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def block_markers(name: str) -> tuple[str, str]:
    """The two lines between which :func:`replace_block` puts protocol ``name``'s leaderboard."""
    return f"<!-- cljax bench {name}: generated, do not edit -->", f"<!-- /cljax bench {name} -->"


def replace_block(text: str, name: str, markdown: str) -> str:
    """``text`` with what lies between protocol ``name``'s markers (:func:`block_markers`)
    replaced by ``markdown``. A document without both markers, in order, is an error: the
    generated table goes only where its author put the markers."""
    start, end = block_markers(name)
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"the document has no block for protocol {name!r}: add the two lines "
                         f"{start!r} and {end!r} where its leaderboard belongs")
    if text.find(start, i + 1) >= 0:
        raise ValueError(f"the document has two blocks for protocol {name!r}")
    return text[:i + len(start)] + "\n" + markdown.rstrip("\n") + "\n" + text[j:]


__all__ = ["SCHEMA", "SCENARIO_NAMES", "interval95", "leaderboard", "leaderboard_markdown",
           "plot_leaderboard", "block_markers", "replace_block"]
