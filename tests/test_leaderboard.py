"""cljax.bench.leaderboard: ours beside the published values, as JSON, Markdown and a plot."""
import json
import math
import warnings

import numpy as np
import pytest

from cljax.bench import (
    SCHEMA,
    Entry,
    Protocol,
    Published,
    block_markers,
    entry_runs,
    interval95,
    leaderboard,
    leaderboard_markdown,
    plot_leaderboard,
    replace_block,
)


def test_interval95_against_hand_computed_values():
    r = interval95([0.90, 0.92, 0.97, 0.95])
    mean = (0.90 + 0.92 + 0.97 + 0.95) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in (0.90, 0.92, 0.97, 0.95)) / 3)
    half = 3.182446305284263 * sd / 2          # t(0.975, 3) × sd / √4
    assert r["n"] == 4 and r["mean"] == pytest.approx(mean)
    assert r["sem"] == pytest.approx(sd / 2)
    assert (r["low"], r["high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert interval95([0.5, None, float("nan")]) == {"n": 1, "mean": 0.5, "sem": None,
                                                      "low": None, "high": None}
    assert interval95([None])["mean"] is None


def _protocol():
    return Protocol(
        name="toy", title="Toy table", config="split_mnist", citation="Someone 2020",
        metric_definition="ACC over all tasks", scenarios=("task", "class"),
        entries=(Entry("ewc", "ewc", {"task": Published(95.0, "Table 2", pm=0.5, spread="sem",
                                                        runs=10),
                                      "class": Published(20.0, "Table 2")},
                       hparams={"strength": 1.0}, scenario_hparams={"class": {"strength": 9.0}},
                       selection="test_sweep", note="λ per scenario"),
                 Entry("none", "none")),
        notes=("class order natural",))


def _results(scenario_accs):
    """A results.json with per-run ACC (fractions) for the given scenarios."""
    return {"scenarios": {sc: {"metrics": {"acc": {"per_run": accs}}, "diverged": [],
                               "timings": {"run_seconds": 12.5, "compile_seconds": 3.0}}
                          for sc, accs in scenario_accs.items()}}


def _runs(p):
    return [r for e in p.entries for r in entry_runs(p, e, seeds=3)]


def test_rows_compare_ours_with_the_published_value():
    p = _protocol()
    runs = _runs(p)
    assert [r.name for r in runs] == ["ewc_task", "ewc_class", "none"]
    finished = {"ewc_task": _results({"task": [0.94, 0.95, 0.96]}),
                "ewc_class": _results({"class": [0.30, 0.31, 0.29]}),
                "none": _results({"task": [0.80, 0.82, 0.81]})}     # its class-IL unfinished
    board = leaderboard(p, runs, finished, seeds=3, deviations=["--steps 5"],
                        provenance={"ewc_task": {"commit": "abc123def4567-dirty"}})
    json.dumps(board, allow_nan=False)                               # strict JSON
    assert board["schema"] == SCHEMA and board["seeds"] == 3
    assert board["done"] == ["ewc_task", "ewc_class"] and board["to_do"] == ["none"]
    rows = {(r["entry"], r["scenario"]): r for r in board["rows"]}
    assert [(r["entry"], r["scenario"]) for r in board["rows"]] == [
        ("ewc", "task"), ("none", "task"), ("ewc", "class"), ("none", "class")]
    task = rows["ewc", "task"]
    assert task["ours"]["mean"] == pytest.approx(95.0)
    assert task["difference"] == pytest.approx(0.0, abs=1e-9) and task["within_ci95"] is True
    assert task["hparams"] == {"strength": 1.0} and task["commit"] == "abc123def4567-dirty"
    cls = rows["ewc", "class"]
    assert cls["hparams"] == {"strength": 9.0}
    assert cls["difference"] == pytest.approx(10.0) and cls["within_ci95"] is False
    assert rows["none", "task"]["published"] is None and rows["none", "task"]["within_ci95"] is None
    assert rows["none", "class"]["finished"] is False

    md = leaderboard_markdown(board)
    assert "**Not the paper's protocol: --steps 5.**" in md
    assert "| ewc | Class-IL | strength 9 (test sweep) | 3 | 30.00 ± 0.58 | 20.00 (Table 2) | " \
           "+10.00 | **no** |" in md
    assert "95.00 ± 0.50 (sem) (Table 2)" in md and "abc123def4-dirty" in md
    assert "| none | Class-IL |" in md and "to do" in md and "To do (1 of 3 runs): none." in md
    assert "- class order natural" in md and "- ewc: λ per scenario" in md


def test_the_wall_time_of_a_resumed_run_counts_every_sitting():
    """A resumed run's run_seconds is its last sitting's; its per-task seconds (carried by the
    checkpoints) count the earlier sittings too, so the wall column takes the larger sum. An
    uninterrupted run keeps run_seconds (its tasks' seconds leave out the loop's overhead)."""
    p = _protocol()
    resumed = _results({"task": [0.9, 0.9, 0.9]})
    resumed["scenarios"]["task"]["timings"]["task_seconds"] = [100.0, 110.0, 5.0]
    whole = _results({"task": [0.9, 0.9, 0.9]})
    whole["scenarios"]["task"]["timings"]["task_seconds"] = [4.0, 4.0, 4.0]
    walls = []
    for results in (resumed, whole, _results({"task": [0.9, 0.9, 0.9]})):
        (row,) = [r for r in leaderboard(p, _runs(p), {"ewc_task": results}, seeds=3)["rows"]
                  if r["finished"]]
        walls.append(row["wall_seconds"])
    assert walls == [pytest.approx(215.0), pytest.approx(12.5), pytest.approx(12.5)]


def test_a_row_pooled_from_runs_of_two_commits_shows_both():
    p = Protocol(**{**_protocol().__dict__, "scenarios": ("task",), "task_draw": "per_seed",
                    "entries": (Entry("none", "none"),)})
    runs = [r for e in p.entries for r in entry_runs(p, e, seeds=2)]
    assert [r.name for r in runs] == ["none_seed0", "none_seed1"]
    finished = {r.name: _results({"task": [0.9]}) for r in runs}
    board = leaderboard(p, runs, finished, seeds=2,
                        provenance={"none_seed0": {"commit": "fedcba9876543"},
                                    "none_seed1": {"commit": "0123456789abc-dirty"}})
    (row,) = board["rows"]
    assert row["commit"] == "0123456789abc-dirty, fedcba9876543"
    assert "| 0123456789-dirty, fedcba9876 |" in leaderboard_markdown(board)


def test_a_row_some_of_whose_seeds_finished_shows_them_and_stays_to_do():
    p = Protocol(**{**_protocol().__dict__, "scenarios": ("task",),
                    "entries": (Entry("ewc", "ewc", {"task": Published(95.0, "Table 2")},
                                      hparams={"strength": 1.0}),)})
    runs = entry_runs(p, p.entry("ewc"), seeds=3, seed_runs="separate")
    finished = {"ewc_seed0": _results({"task": [0.9]}), "ewc_seed2": _results({"task": [0.8]})}
    board = leaderboard(p, runs, finished, seeds=3)
    (row,) = board["rows"]
    assert not row["finished"] and "ours" not in row and "difference" not in row
    assert row["partial"]["runs_finished"] == 2 and row["partial"]["runs"] == 3
    assert row["partial"]["per_run"] == pytest.approx([90.0, 80.0])
    assert row["partial"]["mean"] == pytest.approx(85.0)
    assert board["to_do"] == ["ewc_seed1"]
    assert ("| 2 of 3 runs | to do; so far 85.00 (90.00, 80.00) | 95.00 (Table 2) | – | – |"
            in leaderboard_markdown(board))
    json.dumps(board, allow_nan=False)
    none = leaderboard(p, runs, {}, seeds=3)["rows"][0]
    assert "partial" not in none            # nothing finished: no partial entry


def test_a_diverged_run_is_dropped_from_the_mean_and_counted():
    p = _protocol()
    results = _results({"task": [0.9, None, 0.8]})
    results["scenarios"]["task"]["diverged"] = [{"seed": 1, "task": 2, "step": 7}]
    (row,) = [r for r in leaderboard(p, _runs(p), {"ewc_task": results}, seeds=3)["rows"]
              if r["finished"]]
    assert row["ours"]["n"] == 2 and row["ours"]["mean"] == pytest.approx(85.0)
    assert row["ours"]["per_run"][1] is None and row["diverged"] == 1
    assert "| 3 (1 diverged) |" in leaderboard_markdown(
        leaderboard(p, _runs(p), {"ewc_task": results}, seeds=3))


def test_a_validation_point_with_diverged_seeds_says_so():
    p = Protocol(name="toy", title="T", config="split_mnist", citation="c",
                 metric_definition="ACC", scenarios=("task",),
                 entries=(Entry("ewc", "ewc", selection="validation",
                                grid={"strength": (1.0, 100.0)}),))
    select = {"scenarios": {"task": {"best_hparams": {"strength": 1.0}, "sweep": [
        {"hparams": {"strength": 1.0}, "metrics": {"acc": {"mean": 0.9}}, "diverged": []},
        {"hparams": {"strength": 100.0}, "metrics": {"acc": {"mean": 0.8}},
         "diverged": [{"seed": 1, "task": 2, "step": 3}]}]}}}
    runs = entry_runs(p, p.entry("ewc"), seeds=2, chosen={"task": {"strength": 1.0}})
    board = leaderboard(p, runs, {}, seeds=2, selections={"ewc": ("ewc_select", select)})
    assert "strength 1 (validation: 1: 90.00, 100: 80.00 (1 diverged))" in \
        leaderboard_markdown(board)


def test_plot_writes_a_png(tmp_path):
    p = _protocol()
    board = leaderboard(p, _runs(p), {"ewc_task": _results({"task": [0.94, 0.95, 0.96]})},
                        seeds=3)
    plot_leaderboard(board, tmp_path / "board.png")
    assert (tmp_path / "board.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_a_scenario_with_no_row_yet_without_a_warning(tmp_path):
    """A benchmark whose first run has finished one scenario: the other panels have no row."""
    p = Protocol(name="toy", title="Toy table", config="split_mnist", citation="Someone 2020",
                 metric_definition="ACC over all tasks", scenarios=("task", "class"),
                 entries=(Entry("ewc", "ewc", scenarios=("task",)),))
    board = leaderboard(p, _runs(p), {}, seeds=3)
    assert not [r for r in board["rows"] if r["scenario"] == "class"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_leaderboard(board, tmp_path / "board.png")
    assert (tmp_path / "board.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replace_block_changes_only_the_protocols_block():
    start, end = block_markers("toy")
    other_start, other_end = block_markers("other")
    doc = f"# Results\n\nintro\n{start}\nold table\n{end}\nafter\n{other_start}\nkeep\n{other_end}\n"
    new = replace_block(doc, "toy", "| new |\n")
    assert new == (f"# Results\n\nintro\n{start}\n| new |\n{end}\nafter\n{other_start}\nkeep\n"
                   f"{other_end}\n")
    assert replace_block(new, "toy", "| new |") == new                 # idempotent
    with pytest.raises(ValueError, match="no block for protocol 'absent'"):
        replace_block(doc, "absent", "x")
    with pytest.raises(ValueError, match="no block"):
        replace_block(f"{end}\n{start}\n", "toy", "x")                  # markers out of order
    with pytest.raises(ValueError, match="two blocks"):
        replace_block(doc + f"{start}\n{end}\n", "toy", "x")


def test_leaderboard_refuses_what_is_not_a_protocol():
    with pytest.raises(TypeError, match="protocol must be a cljax.bench.Protocol"):
        leaderboard("toy", [], {}, seeds=1)
    assert np.isfinite(interval95([1.0, 2.0])["high"])
