"""cljax.bench.runner and ``cljax bench``: resumable runs of a protocol, then its leaderboard."""
import fnmatch
import json
import pathlib
import shutil

import pytest
import tensorflow_datasets as tfds

from cljax import cli
from cljax.bench import (
    PROVENANCE_FILE,
    Entry,
    Protocol,
    Published,
    block_markers,
    run_bench,
    source_commit,
)
from cljax.workdir import MARKER_FILE, WorkdirError, lock_workdir, read_marker

TINY = {"model.widths": [8], "eval_chunk": 64, "steps": 3}


def _protocol():
    return Protocol(
        name="tiny", title="Tiny", config="split_mnist", citation="nobody",
        metric_definition="ACC", scenarios=("task", "class"), overrides=TINY, seeds=2,
        entries=(Entry("none", "none", {"task": Published(50.0, "Table 1")}),
                 Entry("ewc", "ewc", hparams={"strength": 1.0},
                       scenario_hparams={"class": {"strength": 2.0}})))


def test_the_commit_is_dirty_for_a_source_change_only(tmp_path):
    """A benchmark directory kept in the repository changes as its runs finish: that must not
    mark the next run's commit dirty; a changed or new file of the source must."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "cljax").mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "cljax" / "a.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "board.md").write_text("before\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    sha = source_commit(tmp_path)
    assert sha is not None and len(sha) == 40                   # clean
    (tmp_path / "benchmarks" / "board.md").write_text("after\n")
    (tmp_path / "benchmarks" / "new_run.json").write_text("{}\n")
    (tmp_path / "README.md").write_text("notes\n")
    assert source_commit(tmp_path) == sha                       # outputs and documents only
    (tmp_path / "cljax" / "b.py").write_text("y = 2\n")
    assert source_commit(tmp_path) == sha + "-dirty"            # a new source file
    (tmp_path / "cljax" / "b.py").unlink()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert source_commit(tmp_path) == sha + "-dirty"            # the package's metadata
    assert source_commit(tmp_path / "cljax") is None            # not the checkout's root


def test_a_benchmark_runs_resumes_and_writes_its_leaderboard(tmp_path):
    bench = tmp_path / "bench"
    logs: list[str] = []
    commit = source_commit()            # read before the runs: the checkout they ran from
    with tfds.testing.mock_data(num_examples=64):
        board = run_bench(_protocol(), bench, log=logs.append)
        assert board["done"] == ["none", "ewc_task", "ewc_class"] and board["to_do"] == []
        for name in ("leaderboard.json", "leaderboard.md", "leaderboard.png", PROVENANCE_FILE):
            assert (bench / name).stat().st_size > 0
        assert json.loads((bench / "leaderboard.json").read_text()) == json.loads(
            json.dumps(board))
        marker = read_marker(bench)
        assert {"none", "ewc_task", "ewc_class", "leaderboard.md"} <= set(marker["wrote"])
        for run in ("none", "ewc_task", "ewc_class"):      # each an ordinary run directory
            assert (bench / run / "results.json").is_file() and (bench / run / MARKER_FILE).is_file()
        ewc_class = json.loads((bench / "ewc_class" / "results.json").read_text())
        assert ewc_class["config"]["hparams"] == {"strength": 2.0}
        assert list(ewc_class["scenarios"]) == ["class"]
        provenance = json.loads((bench / PROVENANCE_FILE).read_text())
        assert set(provenance) == {"none", "ewc_task", "ewc_class"}
        assert provenance["none"]["commit"] == commit

        with pytest.raises(WorkdirError, match="not empty"):       # a second run needs --resume
            run_bench(_protocol(), bench, log=logs.append)
        before = (bench / "none" / "results.json").stat().st_mtime_ns
        logs.clear()
        again = run_bench(_protocol(), bench, resume=True, log=logs.append)
        assert logs == ["bench tiny: 0 run(s) to do"]                        # nothing re-ran
        assert (bench / "none" / "results.json").stat().st_mtime_ns == before
        assert again["rows"] == board["rows"]

        # a run whose results are gone (stopped before its end) runs again on resume, alone
        (bench / "ewc_class" / "results.json").unlink()
        logs.clear()
        third = run_bench(_protocol(), bench, resume=True, log=logs.append)
        assert logs[0] == "bench tiny: 1 run(s) to do: ewc_class" and third["to_do"] == []
        assert (bench / "none" / "results.json").stat().st_mtime_ns == before

        # other options are another benchmark: refused on resume
        with pytest.raises(WorkdirError, match="different config"):
            run_bench(_protocol(), bench, resume=True, seeds=3, log=logs.append)


def _as_committed(bench, root):
    """Delete from ``bench`` what ``benchmarks/results/.gitignore`` keeps out of the repository
    (its directory and file patterns, ``!`` exceptions honoured): the copy a fresh clone holds."""
    rules = [line.strip() for line in (root / "benchmarks" / "results" / ".gitignore")
             .read_text().splitlines() if line.strip() and not line.startswith("#")]
    keep = [r[1:] for r in rules if r.startswith("!")]
    dirs = [r.rstrip("/") for r in rules if r.endswith("/")]
    files = [r for r in rules if not r.startswith("!") and not r.endswith("/")]
    for path in sorted(bench.rglob("*"), key=lambda p: -len(p.parts)):
        if path.is_dir() and path.name in dirs:
            shutil.rmtree(path)
        elif (path.is_file() and any(fnmatch.fnmatch(path.name, f) for f in files)
              and not any(fnmatch.fnmatch(path.name, k) for k in keep)):
            path.unlink()


def test_a_benchmark_kept_without_checkpoints_plots_or_locks_resumes(tmp_path):
    """What the repository keeps of a benchmark directory (benchmarks/results/.gitignore)
    is enough for --resume on another machine: nothing finished runs again, and a method added
    later runs into the same directory."""
    bench = tmp_path / "bench"
    root = pathlib.Path(__file__).resolve().parents[1]
    with tfds.testing.mock_data(num_examples=64):
        board = run_bench(_protocol(), bench, methods="none")
        assert board["done"] == ["none"]
        assert (bench / "none" / "checkpoints").is_dir()
        _as_committed(bench, root)
        assert not (bench / "none" / "checkpoints").exists()
        assert not list(bench.rglob(".cljax-lock")) and (bench / "leaderboard.png").is_file()
        logs: list[str] = []
        again = run_bench(_protocol(), bench, resume=True, methods="none", log=logs.append)
        assert logs == ["bench tiny: 0 run(s) to do"] and again["rows"] == board["rows"]
        logs.clear()
        more = run_bench(_protocol(), bench, resume=True, methods="ewc", log=logs.append)
        assert logs[0] == "bench tiny: 2 run(s) to do: ewc_task, ewc_class"
        assert set(more["done"]) == {"none", "ewc_task", "ewc_class"}


def test_runs_finished_in_another_directory_of_the_benchmark_merge_in(tmp_path):
    """Two processes fill one benchmark in two directories; --merge-from copies the other's
    finished runs in (no checkpoints, no lock) with the provenance it recorded, and the board
    is the one a single directory would hold. A directory of another benchmark, a run the
    board holds unfinished, one its process still holds locked or one without provenance is
    refused before anything is copied."""
    main, other = tmp_path / "main", tmp_path / "other"
    logs: list[str] = []
    with tfds.testing.mock_data(num_examples=64):
        run_bench(_protocol(), main, methods="none", log=lambda _: None)
        run_bench(_protocol(), other, methods="ewc", log=lambda _: None)
        theirs = json.loads((other / PROVENANCE_FILE).read_text())
        theirs["ewc_task"]["commit"] = "f" * 40          # recorded there, kept as recorded
        (other / PROVENANCE_FILE).write_text(json.dumps(theirs))

        with pytest.raises(WorkdirError, match="holds another benchmark"):  # seeds differ
            run_bench(_protocol(), main, seeds=3, resume=True, merge_from=[other],
                      log=lambda _: None)
        with pytest.raises(WorkdirError, match="not a cljax benchmark directory"):
            run_bench(_protocol(), main, run=False, merge_from=[tmp_path / "nowhere"])
        with pytest.raises(TypeError, match="wrap it in a list"):
            run_bench(_protocol(), main, run=False, merge_from=str(other))
        (main / "ewc_class").mkdir()                     # an interrupted run of the board
        with pytest.raises(WorkdirError, match="already holds run 'ewc_class', unfinished"):
            run_bench(_protocol(), main, run=False, merge_from=[other], log=lambda _: None)
        (main / "ewc_class").rmdir()
        assert not (main / "ewc_task").exists()          # nothing was copied
        with lock_workdir(other / "ewc_class"):          # still being written by its process
            with pytest.raises(WorkdirError, match="in use by another cljax run"):
                run_bench(_protocol(), main, run=False, merge_from=[other], log=lambda _: None)
        assert not (main / "ewc_task").exists()          # refused before any copy
        (other / PROVENANCE_FILE).write_text(json.dumps({"ewc_task": theirs["ewc_task"]}))
        with pytest.raises(WorkdirError, match="run 'ewc_class' has no entry"):
            run_bench(_protocol(), main, run=False, merge_from=[other], log=lambda _: None)
        assert not (main / "ewc_task").exists()
        (other / PROVENANCE_FILE).write_text(json.dumps(theirs))

        board = run_bench(_protocol(), main, run=False, merge_from=[other], log=logs.append)
    assert logs[0].startswith("bench tiny: merged") and "ewc_class" in logs[0]
    assert board["done"] == ["none", "ewc_task", "ewc_class"] and board["to_do"] == []
    provenance = json.loads((main / PROVENANCE_FILE).read_text())
    assert provenance["ewc_task"] == theirs["ewc_task"]
    assert provenance["ewc_class"] == theirs["ewc_class"]
    assert {"ewc_task", "ewc_class"} <= set(read_marker(main)["wrote"])
    for run in ("ewc_task", "ewc_class"):
        assert (main / run / "results.json").read_bytes() == \
            (other / run / "results.json").read_bytes()
        assert not (main / run / "checkpoints").exists()
        assert not (main / run / ".cljax-lock").exists()
        assert (other / run / "checkpoints").is_dir()    # the source is left as it was
    row = {(r["entry"], r["scenario"]): r for r in board["rows"]}[("ewc", "task")]
    assert row["commit"] == "f" * 40
    logs.clear()
    again = run_bench(_protocol(), main, run=False, merge_from=[other], log=logs.append)
    assert logs[0] == f"bench tiny: merged 0 finished run(s) from {other}"
    assert again["rows"] == board["rows"]


def test_a_grid_is_chosen_on_validation_data_without_reading_the_test_split(tmp_path,
                                                                            monkeypatch):
    import cljax.data.streams as streams

    reads: list[str] = []
    real = streams.load_split

    def instrumented(name, split, **kw):
        reads.append(split)
        return real(name, split, **kw)

    monkeypatch.setattr(streams, "load_split", instrumented)
    protocol = Protocol(**{**_protocol().__dict__, "selection_seeds": 2, "entries": (
        Entry("ewc", "ewc", {"task": Published(50.0, "Table 1")}, selection="validation",
              grid={"strength": (0.0, 1e6)}),)})
    with tfds.testing.mock_data(num_examples=64):
        board = run_bench(protocol, tmp_path / "b", log=lambda _: None)
    assert reads[0] == "train" and reads[1] == "train"   # the selection read no test split
    select = json.loads((tmp_path / "b" / "ewc_select" / "results.json").read_text())
    assert select["config"]["evaluate_on"] == "validation" and select["config"]["seeds"] == 2
    assert select["stream"]["evaluated_on"] == "validation"
    assert select["config"]["sweep"] == {"strength": [0.0, 1e6]}
    chosen = {sc: select["scenarios"][sc]["best_hparams"] for sc in ("task", "class")}
    runs = {r["scenario"]: r for r in board["rows"]}
    for sc in ("task", "class"):
        assert runs[sc]["hparams"] == chosen[sc] and runs[sc]["finished"]
        points = runs[sc]["validation"]["points"]
        assert [p["hparams"]["strength"] for p in points] == [0.0, 1e6]
        best = max(points, key=lambda p: p["validation"])
        assert best["hparams"] == chosen[sc]
    final = json.loads((tmp_path / "b" / runs["task"]["run"] / "results.json").read_text())
    assert final["config"]["evaluate_on"] == "test" and final["config"]["seeds"] == 2
    assert "validation: 0: " in (tmp_path / "b" / "leaderboard.md").read_text()


def test_a_per_seed_task_draw_pools_one_run_per_seed(tmp_path):
    protocol = Protocol(**{**_protocol().__dict__, "scenarios": ("task",),
                           "task_draw": "per_seed", "entries": (Entry("none", "none"),)})
    with tfds.testing.mock_data(num_examples=64):
        board = run_bench(protocol, tmp_path / "b", seeds=2, log=lambda _: None)
    (row,) = board["rows"]
    assert row["finished"] and row["seeds"] == 2 and row["runs"] == ["none_seed0", "none_seed1"]
    classes = [json.loads((tmp_path / "b" / name / "results.json").read_text())["stream"]
               ["classes"] for name in row["runs"]]
    assert classes[0] != classes[1]                      # each seed its own class order
    per_run = [100 * json.loads((tmp_path / "b" / name / "results.json").read_text())
               ["scenarios"]["task"]["metrics"]["acc"]["per_run"][0] for name in row["runs"]]
    assert row["ours"]["per_run"] == pytest.approx(per_run)
    assert board["done"] == ["none_seed0", "none_seed1"]


def test_separate_seed_runs_dealt_to_two_directories_pool_into_one_row(tmp_path):
    """A fixed-draw protocol's seeds as runs of one seed (--seed-runs separate), each process
    running the ones --runs names; merged, they pool into one row of both seeds. The layout is
    part of the benchmark's identity (a vmapped benchmark does not merge in), and a run name
    that is not among the selected entries' runs is refused before anything is written."""
    protocol = Protocol(**{**_protocol().__dict__, "scenarios": ("task",)})
    first, second = tmp_path / "first", tmp_path / "second"
    with tfds.testing.mock_data(num_examples=64):
        board = run_bench(protocol, first, methods="none", seed_runs="separate",
                          only_runs=["none_seed0"], log=lambda _: None)
        assert board["done"] == ["none_seed0"] and board["to_do"] == ["none_seed1"]
        run_bench(protocol, second, methods="none", seed_runs="separate",
                  only_runs=["none_seed1"], log=lambda _: None)
        assert not (second / "none_seed0").exists()
        board = run_bench(protocol, first, methods="none", seed_runs="separate", run=False,
                          merge_from=[second], log=lambda _: None)
        run_bench(protocol, tmp_path / "together", methods="none", log=lambda _: None)
        with pytest.raises(WorkdirError, match="holds another benchmark"):
            run_bench(protocol, first, methods="none", seed_runs="separate", run=False,
                      merge_from=[tmp_path / "together"], log=lambda _: None)
    (row,) = board["rows"]
    assert row["finished"] and row["seeds"] == 2 and row["runs"] == ["none_seed0", "none_seed1"]
    configs = [json.loads((first / n / "results.json").read_text())["config"]
               for n in row["runs"]]
    assert [(c["seed"], c["seeds"]) for c in configs] == [(0, 1), (1, 1)]
    assert configs[0]["stream_options"] == configs[1]["stream_options"]   # the same tasks
    assert read_marker(first)["identity"]["seed_runs"] == "separate"
    assert "seed_runs" not in read_marker(tmp_path / "together")["identity"]
    with pytest.raises(ValueError, match="no run 'none_seed2' among the selected entries"):
        run_bench(protocol, tmp_path / "bad", seed_runs="separate", only_runs=["none_seed2"])
    with pytest.raises(TypeError, match="only_runs must be a list of run names"):
        run_bench(protocol, tmp_path / "bad", seed_runs="separate", only_runs="none_seed0")
    grid = Protocol(**{**protocol.__dict__, "entries": (
        Entry("ewc", "ewc", selection="validation", grid={"strength": (0.0, 1.0)}),)})
    with pytest.raises(ValueError, match="waits for its entry's selection run"):
        run_bench(grid, tmp_path / "bad", only_runs=["ewc"])
    assert not (tmp_path / "bad").exists()


def test_selection_and_no_run(tmp_path):
    bench = tmp_path / "bench"
    with tfds.testing.mock_data(num_examples=64):
        board = run_bench(_protocol(), bench, methods="ewc", log=lambda _: None)
        assert board["done"] == ["ewc_task", "ewc_class"]
        assert [r["entry"] for r in board["rows"]] == ["ewc", "ewc"]
        lookup = run_bench(_protocol(), bench, run=False, log=lambda _: None)
    assert lookup["done"] == ["ewc_task", "ewc_class"] and lookup["to_do"] == ["none"]
    assert not (bench / "none").exists()
    with pytest.raises(ValueError, match="no entry or method 'si'"):
        run_bench(_protocol(), tmp_path / "other", methods="si")
    assert not (tmp_path / "other").exists()           # refused before anything is written


def test_a_config_error_names_the_run_before_anything_runs(tmp_path):
    bad = Protocol(**{**_protocol().__dict__,
                      "entries": (Entry("ewc", "ewc", hparams={"strength": -1.0}),)})
    with pytest.raises(ValueError, match=r"protocol 'tiny', run 'ewc': .*strength.* must be >= 0"):
        run_bench(bad, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_bench(tmp_path, capsys):
    assert cli.main(["bench", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "hsu2018_split_mnist" in listing and "vandeven2019_split_mnist" in listing
    assert cli.main(["bench", "nope"]) == 2
    assert "cljax: error: bench: unknown protocol 'nope'" in capsys.readouterr().err
    assert cli.main(["bench"]) == 2
    assert "name a protocol" in capsys.readouterr().err

    start, end = block_markers("hsu2018_split_mnist")
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# R\n{start}\nold\n{end}\ntail\n")
    workdir = tmp_path / "hsu"
    with tfds.testing.mock_data(num_examples=64):
        code = cli.main(["bench", "hsu2018_split_mnist", "--methods", "none", "--seeds", "1",
                         "--steps", "2", "--set", "model.widths=[8]", "--set", "eval_chunk=64",
                         "--workdir", str(workdir), "--results-md", str(doc), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "**Not the paper's protocol: --steps 2; --set model.widths=[8]; --set eval_chunk=64.**" \
        in out
    text = doc.read_text()
    assert text.startswith(f"# R\n{start}\n**Split MNIST, Hsu et al. 2018") and "old" not in text
    assert text.endswith(f"{end}\ntail\n") and "93.46 ± 2.01 (Table 2)" in text
    assert "To do (10 of 11 runs)" not in text    # only the selected entries are shown
    copy = tmp_path / "copy"                       # --merge-from: the same runs, nothing run
    assert cli.main(["bench", "hsu2018_split_mnist", "--methods", "none", "--seeds", "1",
                     "--steps", "2", "--set", "model.widths=[8]", "--set", "eval_chunk=64",
                     "--workdir", str(copy), "--no-run", "--merge-from", str(workdir)]) == 0
    assert (json.loads((copy / "leaderboard.json").read_text())["rows"]
            == json.loads((workdir / "leaderboard.json").read_text())["rows"])
    capsys.readouterr()
    split = tmp_path / "split"                     # --seed-runs separate, --runs one of them
    with tfds.testing.mock_data(num_examples=64):
        assert cli.main(["bench", "hsu2018_split_mnist", "--methods", "none", "--seeds", "2",
                         "--steps", "2", "--set", "model.widths=[8]", "--set", "eval_chunk=64",
                         "--seed-runs", "separate", "--runs", "none_seed1", "--workdir",
                         str(split), "--no-progress"]) == 0
    board = json.loads((split / "leaderboard.json").read_text())
    assert board["done"] == ["none_seed1"]
    assert "none_seed0" in board["to_do"] and "none_seed1" not in board["to_do"]
    capsys.readouterr()
    with tfds.testing.mock_data(num_examples=64):
        assert cli.main(["bench", "hsu2018_split_mnist", "--methods", "none", "--workdir",
                         str(workdir), "--set", "stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err
