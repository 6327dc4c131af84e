"""Benchmarks: a paper's table as data, run with one command, compared in a leaderboard.

``cljax bench <protocol>`` runs a registered :class:`Protocol` (:data:`PROTOCOLS`; ``cljax bench
--list``) with every method of its table, resumably, and writes its leaderboard (ours mean ± SEM
beside the published values with their tables, the difference, whether the published value lies
in our 95 % interval, wall and compile time, the commit) as JSON, Markdown and a plot.
"""
from cljax.bench.leaderboard import (
    SCHEMA,
    block_markers,
    interval95,
    leaderboard,
    leaderboard_markdown,
    plot_leaderboard,
    replace_block,
)
from cljax.bench.protocol import (
    SELECTIONS,
    SPREADS,
    Entry,
    EntryRun,
    Protocol,
    Published,
    chosen_hparams,
    entry_runs,
    is_complete,
    pending_run,
    selection_run,
)
from cljax.bench.registry import PROTOCOLS, get_protocol, list_protocols
from cljax.bench.runner import (
    PROVENANCE_FILE,
    bench_runs,
    read_finished,
    run_bench,
    select_entries,
    source_commit,
)

__all__ = ["Protocol", "Entry", "Published", "EntryRun", "SPREADS", "SELECTIONS", "entry_runs",
           "selection_run", "chosen_hparams", "pending_run", "is_complete",
           "PROTOCOLS", "get_protocol", "list_protocols", "SCHEMA", "interval95", "leaderboard",
           "leaderboard_markdown", "plot_leaderboard", "block_markers", "replace_block",
           "PROVENANCE_FILE", "source_commit", "select_entries", "bench_runs", "read_finished",
           "run_bench"]
