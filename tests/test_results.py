"""RESULTS.md against the benchmark directories kept in ``benchmarks/results``: every leaderboard
there is what ``cljax bench`` makes of the runs committed beside it, and RESULTS.md's block for
the protocol is that leaderboard, so no table of RESULTS.md is typed or left stale."""
import json
import pathlib
import shutil

import pytest

from cljax.bench import replace_block, run_bench

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KEPT_OUT = [line for line in (RESULTS / ".gitignore").read_text().splitlines()    # not committed
            if line and not line.startswith(("#", "!"))]
BENCHMARKS = sorted(p.name for p in RESULTS.iterdir() if (p / "leaderboard.md").is_file())
REGENERATE = ("cljax bench {name} --no-run --resume --workdir benchmarks/results/{name} "
              "--results-md RESULTS.md")


def test_some_benchmark_directories_are_kept():
    assert len(BENCHMARKS) >= 10, BENCHMARKS


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_kept_leaderboard_is_made_from_the_kept_runs_and_is_results_md_s_block(name, tmp_path):
    kept = RESULTS / name
    copy = tmp_path / name
    shutil.copytree(kept, copy, ignore=shutil.ignore_patterns(*KEPT_OUT))
    layout = json.loads((kept / "config.json").read_text()).get("seed_runs")  # when chosen
    run_bench(name, copy, resume=True, run=False, seed_runs=layout, log=lambda line: None)
    made = (copy / "leaderboard.md").read_text()
    hint = f"regenerate it: {REGENERATE.format(name=name)}" + (
        f" --seed-runs {layout}" if layout else "")
    assert (kept / "leaderboard.md").read_text() == made, f"{kept}/leaderboard.md is stale; {hint}"

    doc = (ROOT / "RESULTS.md").read_text()        # --results-md would leave it as it is
    assert replace_block(doc, name, made) == doc, f"RESULTS.md's block for {name} is stale; {hint}"
